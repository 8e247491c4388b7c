"""Scoring at Pythia size, measured side by side (interleaved) in one run: curate's head-restricted scoring vs the
physical floor, every head vs one head, and vs the seed paper's per-row loop.

On a `training.presets` architecture with random weights (default Pythia-70m: 6 layers x 8 heads, hidden 512,
vocabulary 50,304) and random rows of 2,049 tokens, mode qkvo, one torch thread (unless --threads):
- floor: curate (`HeadInfluenceScorer.score_batch`) / a bare forward + backward of the same batch that stops at
  the lowest target layer's attention input (no weight gradients) — goal <= 1.15;
- all heads: every head of the model (48) in one pass / one head of the lowest layer (0.0) — goal <= 1.3x;
- per-row loop (batch 1, the gradient of one head's layer weights, the head's slice dotted with its preconditioned
  probe gradient, one run per head): the loop for head 1.0 / curate for head 1.0, and 48 runs of the loop / curate's
  one pass over every head. The 48 runs are extrapolated: the loop is timed for head L.0 of every layer L (its
  cost depends on the layer, not on the head) and counted once per head of that layer.
EK-FAC is fitted on the same rows (not timed). Prints min / median seconds per case (process CPU time on CPU, wall on CUDA) and the ratios of medians.

    PYTHONPATH=. python bench/pythia_scoring.py [--preset pythia-70m] [--rows 2] [--batch-rows 2] [--repeats 2]
        [--context N (shorter rows: a smoke run)] [--profile] [--device cpu|cuda]
"""
from __future__ import annotations

import argparse

import torch

from curate.attribution.heads import HeadGeometry, HeadRef
from pythia_common import (WALL, clock_for, fit_and_precondition, floor_pass, interleaved, loop_pass, med, n_params, scorer_for,
                           standin_arguments, standin_setup)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    standin_arguments(ap)
    ap.add_argument("--mode", default="qkvo")
    ap.add_argument("--profile", action="store_true", help="also print the top operators of one curate pass over every head")
    args = ap.parse_args(argv)
    model, data, dev, sync = standin_setup(args)
    geo = HeadGeometry.of(model)
    every = geo.all_heads()
    upper = geo.all_heads(min_layer=1)
    batches = [torch.from_numpy(data[a : a + args.batch_rows]).to(dev) for a in range(0, len(data), args.batch_rows)]
    rows = torch.from_numpy(data).to(dev)
    print(f"{args.preset} stand-in: {n_params(model):,} parameters, {geo.num_layers} layers x {geo.num_heads} heads; "
          f"{len(data)} rows of {data.shape[1]:,} tokens in batches of {args.batch_rows}; mode {args.mode}; "
          f"{args.threads} thread(s) on {dev}; {args.repeats} interleaved rounds after a warm-up")
    _, pre = fit_and_precondition(model, every, args.mode, data, args.batch_rows)
    scorers = {
        "curate every head": scorer_for(model, every, args.mode, pre),
        "curate layers>=1": scorer_for(model, upper, args.mode, pre),
        "curate head 0.0": scorer_for(model, [HeadRef(0, 0)], args.mode, pre),
        "curate head 1.0": scorer_for(model, [HeadRef(1, 0)], args.mode, pre),
    }
    cases = {
        "floor layer 0": lambda: [floor_pass(model, b, 0) for b in batches],
        "floor layer 1": lambda: [floor_pass(model, b, 1) for b in batches],
        **{name: (lambda s=s: [s.score_batch(b) for b in batches]) for name, s in scorers.items()},
        **{f"loop head {layer}.0": (lambda layer=layer: loop_pass(model, rows, HeadRef(layer, 0), args.mode, pre[HeadRef(layer, 0)]))
           for layer in range(geo.num_layers)},
    }
    clock, clock_name = clock_for(dev)
    times = interleaved(cases, args.repeats, sync, clock=clock)

    print(f"\n{clock_name}:")
    print(f"{'case':<22s} {'min s':>8s} {'median s':>9s} {'s/row':>8s} {'wall median s':>14s}")
    for name, v in times.items():
        print(f"{name:<22s} {min(v):8.2f} {med(v):9.2f} {med(v) / len(data):8.2f} {med(WALL[name]):14.2f}")
    m = {k: med(v) for k, v in times.items()}
    loop48 = sum(m[f"loop head {layer}.0"] * geo.num_heads for layer in range(geo.num_layers))
    print("\nratios of medians (same rows, same run):")
    print(f"  floor: curate every head / floor layer 0      {m['curate every head'] / m['floor layer 0']:.2f}  (goal <= 1.15)")
    print(f"         curate layers>=1 / floor layer 1       {m['curate layers>=1'] / m['floor layer 1']:.2f}")
    print(f"         curate head 0.0 / floor layer 0        {m['curate head 0.0'] / m['floor layer 0']:.2f}")
    print(f"         curate head 1.0 / floor layer 1        {m['curate head 1.0'] / m['floor layer 1']:.2f}")
    print(f"  all heads: every head ({len(every)}) / head 0.0      {m['curate every head'] / m['curate head 0.0']:.2f}x (goal <= 1.3x)")
    print(f"             every head / head 1.0              {m['curate every head'] / m['curate head 1.0']:.2f}x (adds the backward through layer 0)")
    print(f"  loop: loop head 1.0 / curate head 1.0         {m['loop head 1.0'] / m['curate head 1.0']:.2f}x (curate ahead when > 1)")
    print(f"        {len(every)} loop runs (extrapolated: head L.0 of each layer x {geo.num_heads}) = {loop48:.1f} s "
          f"/ curate every head {m['curate every head']:.2f} s = {loop48 / m['curate every head']:.1f}x (goal >= 10x)")
    print(f"  contraction cost: curate every head - floor layer 0 = {m['curate every head'] - m['floor layer 0']:.2f} s "
          f"of {m['curate every head']:.2f} s")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
        with profile(activities=acts) as prof:
            scorers["curate every head"].score_batch(batches[0])
            sync()
        print("\none curate pass over every head, top operators by self time:")
        print(prof.key_averages().table(sort_by="self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total", row_limit=14))
        with profile(activities=acts) as prof:
            floor_pass(model, batches[0], 0)
            sync()
        print("the floor (layer 0) on the same batch:")
        print(prof.key_averages().table(sort_by="self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total", row_limit=14))


if __name__ == "__main__":
    main()
