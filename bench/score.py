"""Influence-scoring throughput vs. a plain training step, measured side by side (interleaved) in one run.

On the default model config (`training.default_model.default_model_config`) with random token rows of the
default context, on one thread:
- scoring (`HeadInfluenceScorer.score_batch`, all heads of layers >= 1 at once, as for the induction
  circuit) in training tokens scored per second, as a ratio of a plain training step's throughput
  (forward, backward, AdamW) on the same model and batches. Target >= 1.0.
- the cost of scoring every head of the model vs. one head. Target <= 1.3x.
- the same induction scoring with each row's gradient norms (`score_batch_with_norms`, what the scoring pipeline
  runs since the norms were recorded), beside the plain one.

    python bench/score.py [--batches 12] [--batch-size 32] [--repeats 3] [--mode qk|qkvo|both]
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from curate.attribution.ekfac import EKFACFitter
from curate.attribution.heads import HeadGeometry, HeadRef
from curate.attribution.influence import HeadInfluenceScorer, probe_gradients
from curate.attribution.probes import build_probes, induction_probe
from curate.training.models import build_model

VOCAB = 512


def model_config():
    """The default model config when `training.default_model` is present, else a similar explicit one."""
    try:
        from curate.training.default_model import default_model_config

        return default_model_config(VOCAB), "curate.training.default_model.default_model_config"
    except ImportError:
        from transformers import GPTNeoXConfig

        cfg = GPTNeoXConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=256, max_position_embeddings=128, rotary_pct=1.0,
                            tie_word_embeddings=False, attn_implementation="eager")
        return cfg, "fallback config (no training.default_model)"


def cpu_seconds(fn: Callable[[], None]) -> tuple[float, float]:
    """(process CPU seconds, wall seconds) of one call."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.process_time() - c0, time.perf_counter() - w0


def make_scorer(model, heads: list[HeadRef], mode: str, fit_batches) -> HeadInfluenceScorer:
    """Fit EK-FAC on a few batches (not timed), precondition the induction probe gradient, build the scorer."""
    fitter = EKFACFitter(model, heads, mode, seed=0)
    factors = fitter.fit(fit_batches)
    probes = build_probes(model.config, n=16, seed=0)
    grads = probe_gradients(model, lambda m, h: induction_probe(m, probes), heads, mode, shared=True)
    return HeadInfluenceScorer(model, factors, factors.precondition(grads), heads, mode)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--mode", choices=["qk", "qkvo", "both"], default="both")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    config, origin = model_config()
    context = int(config.max_position_embeddings)
    model = build_model(config, 0)
    geo = HeadGeometry.of(model)
    rng = np.random.default_rng(0)
    batches = [torch.from_numpy(rng.integers(0, VOCAB, (args.batch_size, context + 1))) for _ in range(args.batches)]
    fit_batches = [(list(range(i * args.batch_size, (i + 1) * args.batch_size)), b) for i, b in enumerate(batches[:4])]
    tokens = args.batches * args.batch_size * context
    print(f"model: {origin}; {geo.num_layers} layers x {geo.num_heads} heads, hidden {geo.hidden}, vocab {VOCAB}; "
          f"{args.batches} batches of {args.batch_size} x {context} tokens; {args.threads} thread(s)")

    train_model = build_model(config, 0)
    train_model.train()
    opt = torch.optim.AdamW(train_model.parameters(), lr=1e-3, weight_decay=0.01)

    def train_pass() -> None:
        for b in batches:
            logits = train_model(input_ids=b[:, :-1], use_cache=False).logits
            loss = F.cross_entropy(logits.float().flatten(0, 1), b[:, 1:].flatten())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    modes = ["qk", "qkvo"] if args.mode == "both" else [args.mode]
    setups: dict[str, list[HeadRef]] = {
        "layers>=1 (induction)": geo.all_heads(min_layer=1),
        "one head 1.0": [HeadRef(1, 0)],
        "every head": geo.all_heads(),
        "one head 0.0": [HeadRef(0, 0)],
    }
    scorers = {(m, name): make_scorer(model, heads, m, fit_batches) for m in modes for name, heads in setups.items()}

    def score_pass(scorer: HeadInfluenceScorer, norms: bool = False) -> Callable[[], None]:
        if norms:  # what the scoring pipeline runs: the scores plus each row's gradient norms
            return lambda: [scorer.score_batch_with_norms(b) for b in batches]
        return lambda: [scorer.score_batch(b) for b in batches]

    induction = "layers>=1 (induction)"
    train_pass()  # warm-up
    for s in scorers.values():
        score_pass(s)()
    times: dict[str, list[tuple[float, float]]] = {"train": []}
    for key in scorers:
        times[f"{key[0]} | {key[1]}"] = []
    for m in modes:
        times[f"{m} | {induction} + norms"] = []
    for r in range(args.repeats):
        times["train"].append(cpu_seconds(train_pass))
        for key, s in scorers.items():
            times[f"{key[0]} | {key[1]}"].append(cpu_seconds(score_pass(s)))
            if key[1] == induction:
                times[f"{key[0]} | {induction} + norms"].append(cpu_seconds(score_pass(s, norms=True)))
        print(f"  round {r}: train {tokens / times['train'][-1][0]:,.0f} tok/s (CPU time)")

    def med(label: str, i: int) -> float:
        return statistics.median(t[i] for t in times[label])

    for i, clock in ((0, "process CPU time"), (1, "wall clock")):
        train_tps = tokens / med("train", i)
        print(f"\n[{clock}] training step (fwd + bwd + AdamW): {train_tps:,.0f} tokens/s")
        for m in modes:
            base = f"{m} | {induction}"
            tps = tokens / med(base, i)
            print(f"  {m:>4}: scoring all heads of layers >= 1: {tps:,.0f} tokens/s -> ratio to training {tps / train_tps:.2f} (target >= 1.0)")
            with_norms = med(f"{m} | {induction} + norms", i)
            print(f"        with each row's gradient norms (the pipeline's scoring): {tokens / with_norms:,.0f} tokens/s -> ratio to "
                  f"training {tokens / with_norms / train_tps:.2f}; the norms cost {with_norms / med(base, i) - 1:+.0%}")
            every, one1, one0 = med(f"{m} | every head", i), med(f"{m} | one head 1.0", i), med(f"{m} | one head 0.0", i)
            print(f"        every head ({geo.num_layers * geo.num_heads}) vs one head at the same lowest layer (0.0): {every / one0:.2f}x "
                  f"(target <= 1.3x); layers>=1 ({geo.num_heads}) vs head 1.0: {med(base, i) / one1:.2f}x; every head vs head 1.0 "
                  f"(adds the backward through layer 0): {every / one1:.2f}x")


if __name__ == "__main__":
    main()
