"""Scoring throughput by batch size (rows per forward/backward), measured side by side (interleaved) in one run.

Picks the `--batch-rows` default of `curate score`: the scorer (`HeadInfluenceScorer.score_batch`, the induction
job's heads and mode) on random rows, one thread, process CPU time per row for each batch size, repeated
`--repeats` times in interleaved order; prints min / median rows per second and the ratio to the best.

    PYTHONPATH=. python bench/score_batch.py [--model default|pythia-14m|pythia-70m] [--rows 256] [--sizes 4,8,16,32,64] [--repeats 3]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from curate.attribution.heads import HeadGeometry
from curate.pipelines.score_request import auto_batch_rows
from curate.training.models import build_model
from pythia_common import fit_and_precondition, scorer_for, standin


def model_and_rows(name: str, rows: int, seed: int = 0):
    """(model, random rows of the model's context + 1 tokens): the default model or a Pythia stand-in."""
    if name != "default":
        return standin(name, rows, seed)
    from curate.training.default_model import default_model_config

    model = build_model(default_model_config(512), seed).eval()
    data = np.random.default_rng(seed).integers(0, 512, (rows, int(model.config.max_position_embeddings) + 1))
    return model, data


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--sizes", default="4,8,16,32,64")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--mode", default="qkvo")
    args = ap.parse_args()
    torch.set_num_threads(1)
    sizes = [int(s) for s in args.sizes.split(",")]
    model, data = model_and_rows(args.model, args.rows)
    geo = HeadGeometry.of(model)
    heads = geo.all_heads(min_layer=1)
    # EK-FAC on the first 16 rows in batches of curate's default size (bounded memory at 2,049-token rows)
    _, pre = fit_and_precondition(model, heads, args.mode, data[:16], auto_batch_rows(data.shape[1]))
    scorer = scorer_for(model, heads, args.mode, pre)
    print(f"model {args.model}: {sum(p.numel() for p in model.parameters()):,} parameters, rows of {data.shape[1]} tokens, "
          f"{len(heads)} heads, mode {args.mode}, {args.rows} rows per measurement, 1 thread")
    rates: dict[int, list[float]] = {b: [] for b in sizes}
    for r in range(args.repeats):
        for b in (sizes if r % 2 == 0 else sizes[::-1]):
            c0 = time.process_time()
            for a in range(0, len(data), b):
                scorer.score_batch(data[a : a + b])
            rates[b].append(len(data) / (time.process_time() - c0))
    best = max(statistics.median(v) for v in rates.values())
    print(f"{'batch':>6s} {'rows/s min':>11s} {'rows/s median':>14s} {'median / best':>14s}")
    for b in sizes:
        print(f"{b:6d} {min(rates[b]):11.4g} {statistics.median(rates[b]):14.4g} {statistics.median(rates[b]) / best:14.3f}")


if __name__ == "__main__":
    main()
