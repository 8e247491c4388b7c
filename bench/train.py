"""Training-loop overhead: tokens/s of `training.trainer.train` (evaluation every 50 steps, plan stream,
clipping, schedule) vs. a bare torch loop (forward, backward, AdamW step) on the same model and batches,
measured side by side (interleaved) in one run on one thread. Target ratio >= 0.9.

    python bench/train.py [--steps 200] [--repeats 2] [--batch-size 32] [--context 128]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from curate.atomic import write_json
from curate.corpus import CorpusMeta, open_corpus
from curate.megatron import write_megatron
from curate.training.models import build_model
from curate.training.spec import TrainSpec
from curate.training.trainer import train

VOCAB = 512


def model_config(context: int) -> tuple[dict, str]:
    """The default model config when `training.default_model` is present, else a similar explicit one."""
    try:
        from curate.training.default_model import default_model_config

        return default_model_config(VOCAB).to_dict(), "curate.training.default_model.default_model_config"
    except ImportError:
        return dict(vocab_size=VOCAB, hidden_size=128, num_hidden_layers=3, num_attention_heads=4, intermediate_size=512,
                    max_position_embeddings=context, rotary_pct=1.0, tie_word_embeddings=False), "fallback config (no training.default_model)"


def make_corpus(folder: Path, rows: int, row_len: int, batch: int, heldout: int) -> Path:
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, VOCAB, (rows + heldout, row_len))
    for r in tokens:  # one long exact repeat per row, at a varying distance
        n = int(rng.integers(row_len // 6, row_len // 2))
        a = int(rng.integers(0, row_len - 2 * n))
        b = int(rng.integers(a + n, row_len - n + 1))
        r[b : b + n] = r[a : a + n]
    write_megatron(folder / "corpus", tokens, np.uint16)
    write_json(folder / "corpus.json", CorpusMeta(data="corpus.idx", batch_size=batch, vocab_size=VOCAB,
                                                  extra={"heldout_start": rows}).to_json())
    return folder


class Clock:
    """Wall and process-CPU seconds of a block (CPU time is steadier when other jobs share the cores)."""

    def __enter__(self) -> "Clock":
        self.wall0, self.cpu0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.wall0
        self.cpu = time.process_time() - self.cpu0


def bare_loop(config: dict, batches: list[torch.Tensor], lr: float) -> Clock:
    """Model build + forward, loss, backward, AdamW step over `batches` (pre-loaded tensors)."""
    from curate.training.models import config_from_dict

    with Clock() as clock:
        model = build_model(config_from_dict(config), 0)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
        run_batches(model, opt, batches)
    return clock


def run_batches(model: torch.nn.Module, opt: torch.optim.Optimizer, batches: list[torch.Tensor]) -> None:
    for batch in batches:
        logits = model(input_ids=batch[:, :-1], use_cache=False).logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def full_loop(config: dict, corpus: Path, steps: int, batch: int, out: Path, progress: bool) -> Clock:
    """The whole `train()` call: setup, reading batches, schedule, clipping, evaluation every 50 steps
    (probes, held-out loss, ICL), the final checkpoint and the curves files."""
    spec = TrainSpec(corpus=str(corpus), model_config=config, steps=steps, batch_size=batch, eval_every=50,
                     checkpoints="none", warmup_steps=20, threads=1)
    with Clock() as clock:
        train(spec, out, progress=progress)
    return clock


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=500)  # fixed costs (setup, curves PNG ~1 s) amortized as in a real run
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--context", type=int, default=128)
    args = ap.parse_args()
    torch.set_num_threads(1)
    config, origin = model_config(args.context)
    context = min(args.context, int(config.get("max_position_embeddings", args.context)))
    tokens_per_run = args.steps * args.batch_size * context
    print(f"model: {origin}; {config['num_hidden_layers']} layers x {config['num_attention_heads']} heads, "
          f"hidden {config['hidden_size']}, vocab {VOCAB}; batch {args.batch_size} x {context} tokens, {args.steps} steps, 1 thread")
    with tempfile.TemporaryDirectory() as tmp:
        corpus = make_corpus(Path(tmp) / "corpus", args.steps * args.batch_size, context + 1, args.batch_size, 64)
        c = open_corpus(corpus)
        batches = [torch.from_numpy(np.asarray(c.rows(s * args.batch_size, (s + 1) * args.batch_size), dtype=np.int64))
                   for s in range(args.steps)]
        bare, full, prog = [], [], []
        for i in range(args.repeats):
            bare.append(bare_loop(config, batches, 1e-3))
            full.append(full_loop(config, corpus, args.steps, args.batch_size, Path(tmp) / f"run{i}", progress=False))
            prog.append(full_loop(config, corpus, args.steps, args.batch_size, Path(tmp) / f"prog{i}", progress=True))
            print(f"  round {i}: CPU-time tokens/s  bare {tokens_per_run / bare[-1].cpu:,.0f}  train() {tokens_per_run / full[-1].cpu:,.0f}"
                  f"  with progress {tokens_per_run / prog[-1].cpu:,.0f}   (wall: {tokens_per_run / bare[-1].wall:,.0f} / "
                  f"{tokens_per_run / full[-1].wall:,.0f} / {tokens_per_run / prog[-1].wall:,.0f})")
    for label, key in (("process CPU time", "cpu"), ("wall clock", "wall")):
        b = statistics.median(getattr(c, key) for c in bare)
        f = statistics.median(getattr(c, key) for c in full)
        p = statistics.median(getattr(c, key) for c in prog)
        print(f"{label:>16}: bare {tokens_per_run / b:,.0f} tok/s | train() {tokens_per_run / f:,.0f} tok/s, ratio {b / f:.3f}"
              f" | with rich progress {tokens_per_run / p:,.0f} tok/s, ratio {b / p:.3f}   (target >= 0.9)")


if __name__ == "__main__":
    main()
