"""Pythia-160m on CUDA: scoring tokens/s in bf16 (autocast, curate's default on CUDA) and fp32, and training tokens/s
of `curate train --precision bf16 --micro-batch M` for a few steps. `--device cpu --tiny` is a smoke run of the same
code (Pythia-14m, short rows) that checks the script, not the speed.

    PYTHONPATH=. python bench/gpu_bench.py [--device cuda] [--preset pythia-160m] [--batch-rows 8] [--batches 4]
        [--train-steps 3] [--train-batch 64] [--micro-batch 8] [--tiny]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from curate.attribution.heads import HeadGeometry
from pythia_common import fit_and_precondition, med, n_params, scorer_for, standin
from pythia_standin import make_standin

ROOT = Path(__file__).resolve().parent.parent


def scoring_rates(args, dev: torch.device) -> None:
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    rows = args.batch_rows * args.batches
    model, data = standin(args.preset, rows, context=args.context)
    model.to(dev)
    geo = HeadGeometry.of(model)
    heads = geo.all_heads()
    _, pre = fit_and_precondition(model, heads, "qkvo", data[: args.batch_rows], args.batch_rows)
    batches = [torch.from_numpy(data[a : a + args.batch_rows]).to(dev) for a in range(0, rows, args.batch_rows)]
    tokens = rows * (data.shape[1] - 1)
    print(f"{args.preset} stand-in on {dev}: {n_params(model):,} parameters; scoring every head ({len(heads)}), qkvo, "
          f"{args.batches} batches of {args.batch_rows} rows of {data.shape[1]:,} tokens; median of {args.repeats}")
    for name, autocast in (("bf16 autocast", None), ("fp32", False)):
        scorer = scorer_for(model, heads, "qkvo", pre)
        scorer.tracer.autocast = autocast
        if dev.type == "cpu" and autocast is None:
            name = "cpu (no autocast)"
        scorer.score_batch(batches[0])  # warm-up
        sync()
        times = []
        for _ in range(args.repeats):
            sync()
            t0 = time.perf_counter()
            for b in batches:
                scorer.score_batch(b)
            sync()
            times.append(time.perf_counter() - t0)
        peak = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else float("nan")
        print(f"  scoring {name:<18s} {tokens / med(times):12,.0f} tokens/s  ({med(times):.2f} s; peak GPU memory {peak:.1f} GiB)")
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()


def training_rate(args, dev: torch.device, work: Path) -> None:
    steps, batch = args.train_steps, args.train_batch
    corpus, ckpt = make_standin(work / "train", args.preset, steps + 1, batch, args.context, random_rows=(steps + 1) * batch)
    cmd = [sys.executable, "-m", "curate.cli", "train", "--model", str(ckpt), "--corpus", str(corpus), "--start-step", "0",
           "--steps", str(steps), "--micro-batch", str(args.micro_batch), "--precision", "bf16" if dev.type == "cuda" else "fp32",
           "--device", dev.type, "--checkpoints", "none", "--eval-every", str(steps + 1), "--out", str(work / "run"), "--json", "--quiet"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        print(f"  training failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ''}")
        return
    summary = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert summary.get("step") == steps, summary
    tokens = steps * batch * (args.context or 2048)
    print(f"  training {args.preset} ({'bf16' if dev.type == 'cuda' else 'fp32'}), {steps} steps of {batch} rows in micro-batches of "
          f"{args.micro_batch}: {tokens / wall:,.0f} tokens/s over the whole command ({wall:.1f} s, process start-up and "
          f"model load included: a lower bound)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--preset", default="pythia-160m")
    ap.add_argument("--batch-rows", type=int, default=8)
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--train-steps", type=int, default=3)
    ap.add_argument("--train-batch", type=int, default=64)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--context", type=int, default=None)
    ap.add_argument("--tiny", action="store_true", help="a smoke run: pythia-14m, rows of 33 tokens, small batches")
    args = ap.parse_args()
    if args.tiny:
        args.preset, args.context, args.batch_rows, args.batches, args.repeats = "pythia-14m", 32, 2, 2, 1
        args.train_steps, args.train_batch, args.micro_batch = 2, 4, 2
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here (use --device cpu --tiny for a smoke run)")
    if dev.type == "cpu":
        torch.set_num_threads(1)
    scoring_rates(args, dev)
    work = Path(tempfile.mkdtemp(prefix="gpu-bench-"))
    try:
        training_rate(args, dev, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
