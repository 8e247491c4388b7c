"""Shared by the Pythia-size benches (`bench/pythia_scoring.py`, `bench/pythia_peers.py`, `bench/gpu_bench.py`): the
stand-in model (a `training.presets` architecture with random weights), random 2,049-token rows, EK-FAC factors
and preconditioned induction-probe gradients for a set of heads, the reference passes timed against curate
(the floor: a bare forward + backward down to a layer; the per-row loop of the seed paper), and timing helpers.

Run the benches from the repository root as `PYTHONPATH=. python bench/<script>.py` (the script's folder is on
`sys.path`, so they import this module by name)."""
from __future__ import annotations

import statistics
import time
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from curate.attribution.ekfac import EKFACFactors, EKFACFitter
from curate.attribution.heads import HeadBlocks, HeadGeometry, HeadRef, attention_of, slice_head_grads
from curate.attribution.influence import HeadInfluenceScorer, probe_gradients
from curate.attribution.probes import build_probes, induction_probe
from curate.attribution.trace import frozen
from curate.training.models import build_model

TOKENIZER_VOCAB = 50277  # the GPT-NeoX-20B tokenizer's ids (Pythia pads the embedding table to 50,304)


def standin(preset: str, rows: int, seed: int = 0, context: int | None = None) -> tuple[nn.Module, np.ndarray]:
    """(the preset's architecture with random weights (seed), `rows` random rows of context + 1 tokens). `context`
    shortens the rows (a smoke run), not the model."""
    from transformers import GPTNeoXConfig

    from curate.training.presets import preset_for

    config = GPTNeoXConfig(**preset_for(preset).architecture.config_fields())
    model = build_model(config, seed).eval()
    row_len = int(context or config.max_position_embeddings) + 1
    data = np.random.default_rng(seed).integers(0, min(int(config.vocab_size), TOKENIZER_VOCAB), (rows, row_len))
    return model, data


def standin_arguments(ap) -> None:
    """The flags every stand-in bench takes (preset, rows, batch, repeats, threads, context, device)."""
    ap.add_argument("--preset", default="pythia-70m")
    ap.add_argument("--rows", type=int, default=2)
    ap.add_argument("--batch-rows", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--context", type=int, default=None, help="rows of CONTEXT + 1 tokens (default: the model's 2,048 + 1)")
    ap.add_argument("--device", default="cpu")


def standin_setup(args) -> tuple[nn.Module, np.ndarray, torch.device, Callable[[], None]]:
    """(the stand-in model on the device, its rows, the device, its synchronize) from `standin_arguments` flags; sets
    the torch threads."""
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    model, data = standin(args.preset, args.rows, context=args.context)
    return model.to(dev), data, dev, sync


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def fit_and_precondition(model: nn.Module, heads: list[HeadRef], mode: str, rows: np.ndarray,
                         batch_rows: int) -> tuple[EKFACFactors, dict[HeadRef, HeadBlocks]]:
    """EK-FAC factors of `heads` fitted on `rows` and the induction probe's gradients preconditioned with them."""
    batches = [(list(range(a, min(a + batch_rows, len(rows)))), rows[a : a + batch_rows]) for a in range(0, len(rows), batch_rows)]
    factors = EKFACFitter(model, heads, mode, seed=0).fit(batches)
    probes = build_probes(model.config, n=8, seed=0)
    grads = probe_gradients(model, lambda m, h: induction_probe(m, probes), heads, mode, shared=True)
    return factors, factors.precondition(grads)


def scorer_for(model: nn.Module, heads: Sequence[HeadRef], mode: str, preconditioned: dict[HeadRef, HeadBlocks]) -> HeadInfluenceScorer:
    return HeadInfluenceScorer(model, None, {h: preconditioned[h] for h in heads}, list(heads), mode)


def floor_pass(model: nn.Module, rows: torch.Tensor, layer: int) -> None:
    """A bare forward + backward of the summed token loss that stops at `layer`'s attention input (no weight
    gradients, no hooks but the one that starts the graph there): what any head-restricted gradient must pay."""
    leaf: list[torch.Tensor] = []

    def start(module: nn.Module, args: tuple) -> tuple:
        x = args[0].detach().requires_grad_(True)
        leaf.append(x)
        return (x, *args[1:])

    with frozen(model), torch.enable_grad():
        handle = attention_of(model, layer).query_key_value.register_forward_pre_hook(start)
        try:
            logits = model(input_ids=rows[:, :-1], use_cache=False).logits
        finally:
            handle.remove()
        n, t, v = logits.shape
        loss = F.cross_entropy(logits.float().reshape(n * t, v), rows[:, 1:].reshape(n * t), reduction="sum")
        torch.autograd.grad(loss, leaf)


def loop_pass(model: nn.Module, rows: torch.Tensor, head: HeadRef, mode: str, preconditioned: HeadBlocks) -> list[float]:
    """The seed paper's per-row loop for one head: batch 1, the gradient of the head's layer weights (only they
    require grad), the head's slice taken, dotted with its preconditioned probe gradient."""
    geo = HeadGeometry.of(model)
    attn = attention_of(model, head.layer)
    weights = [attn.query_key_value.weight, attn.dense.weight]
    scores = []
    with frozen(model), torch.enable_grad():
        for w in weights:
            w.requires_grad_(True)
        for i in range(len(rows)):
            row = rows[i : i + 1]
            logits = model(input_ids=row[:, :-1], use_cache=False).logits
            loss = F.cross_entropy(logits.float().flatten(0, 1), row[:, 1:].flatten(), reduction="sum")
            g_qkv, g_dense = torch.autograd.grad(loss, weights)
            blocks = slice_head_grads(geo, g_qkv, g_dense, head.head, mode)
            scores.append(-sum(float((blocks[k] * preconditioned[k]).sum()) for k in blocks))
    return scores


def clock_for(device: torch.device) -> tuple[Callable[[], float], str]:
    """Process CPU time on CPU (the machine is shared: it counts this process's work only; one thread, so it is
    close to wall time on an idle machine), wall time on CUDA."""
    if device.type == "cuda":
        return time.perf_counter, "wall seconds"
    return time.process_time, "process CPU seconds"


def timed(fn: Callable[[], object], sync: Callable[[], None] = lambda: None, clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds of one call on `clock` (after `sync`)."""
    sync()
    t0 = clock()
    fn()
    sync()
    return clock() - t0


WALL: dict[str, list[float]] = {}
"""Wall seconds of the last `interleaved` run's cases (beside the clock it was asked for)."""


def interleaved(cases: dict[str, Callable[[], object]], repeats: int, sync: Callable[[], None] = lambda: None,
                log: Callable[[str], None] = print, clock: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:
    """Every case once (warm-up, not timed), then `repeats` rounds, the order reversed every other round."""
    for name, fn in cases.items():
        fn()
    sync()
    times: dict[str, list[float]] = {k: [] for k in cases}
    WALL.clear()
    names = list(cases)
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            w0 = time.perf_counter()
            times[name].append(timed(cases[name], sync, clock))
            WALL.setdefault(name, []).append(time.perf_counter() - w0)
        log(f"  round {r + 1}/{repeats}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()))
    return times


def med(values: list[float]) -> float:
    return statistics.median(values)
