"""Ray scoring throughput: rows/s of the scoring phase with 1 and 2 actors (one torch thread each), and the
overhead of the Ray path vs. the in-process path (`attribution.scoring.score_corpus`, one thread), measured
side by side in one run on the same model, corpus, heads, factors and probes. Targets: 2 actors / 1 actor
>= 1.7; Ray 1 actor vs. in-process <= 10% slower.

The EK-FAC factors are fitted once (in-process) and copied into each Ray job's cache, so the Ray numbers time
the scoring phase (actors already up); end-to-end times (Ray start, actor start, top-k, summary) are printed too.
The machine may be shared: the load average is printed before and after.

    python bench/ray_scaling.py [--rows 8192] [--batch-rows 8] [--shard-rows 512] [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from curate.attribution.heads import HeadRef
from curate.attribution.scoring import score_corpus
from curate.atomic import write_json
from curate.corpus import CorpusMeta, open_corpus
from curate.pipelines.ray_pool import ray_session
from curate.pipelines.score_job import resolve_job
from curate.pipelines.score_request import ScoreRequest
from curate.pipelines.score_run import run_job
from curate.training.models import build_model

VOCAB = 512
BATCH = 32  # rows per training step


def make_model(folder: Path, context: int) -> Path:
    from curate.training.default_model import default_model_config

    build_model(default_model_config(VOCAB, max_position_embeddings=context), seed=0).save_pretrained(folder)
    return folder


def make_corpus(folder: Path, rows: int, row_len: int) -> Path:
    """Random rows with an exact repeat in each (npy + corpus.json)."""
    rng = np.random.default_rng(0)
    data = rng.integers(1, VOCAB, size=(rows, row_len), dtype=np.int64)
    half = row_len // 2
    data[:, half : half + 24] = data[:, 8:32]
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "rows.npy", data.astype(np.uint16))
    write_json(folder / "corpus.json", CorpusMeta(data="rows.npy", batch_size=BATCH, vocab_size=VOCAB).to_json())
    return folder


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=8192, help="window rows scored per measurement")
    ap.add_argument("--batch-rows", type=int, default=8)
    ap.add_argument("--shard-rows", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    steps = args.rows // BATCH
    heads = "1.0,1.1,1.2,1.3"
    print(f"load average before: {load()} ({os.cpu_count()} CPUs)")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        from curate.training.default_model import DEFAULT_CONTEXT

        model_dir = make_model(tmp / "model", DEFAULT_CONTEXT)
        corpus_dir = make_corpus(tmp / "corpus", steps * BATCH, DEFAULT_CONTEXT + 1)

        def request(out: Path, workers: int) -> ScoreRequest:
            return ScoreRequest(corpus=str(corpus_dir), model=str(model_dir), heads=heads, window=f"0:{steps}", out=out,
                                workers=workers, batch_rows=args.batch_rows, shard_rows=args.shard_rows, fit_rows=1024,
                                progress=False, force=True)

        job = resolve_job(request(tmp / "probe", 1))
        cache = tmp / "factors"
        t0 = time.perf_counter()
        score_corpus(job.model, job.corpus, job.rows, "induction", job.heads, job.request.mode, args.batch_rows, fit_rows=1024, seed=0,
                     probes=job.probes, factor_cache=cache, threads=1)
        print(f"model {sum(p.numel() for p in job.model.parameters()):,} params, rows of {job.corpus.row_len} tokens, "
              f"{len(job.heads)} heads, window {job.num_rows} rows, shards of {args.shard_rows}; first in-process run "
              f"(fit + score) {time.perf_counter() - t0:.1f} s")

        results: dict[str, list[float]] = {"in-process": [], "ray 1 actor": [], "ray 2 actors": []}
        cpu_ms: dict[str, list[float]] = {k: [] for k in results}  # CPU milliseconds per row (contention-free cost)
        end_to_end: dict[str, list[float]] = {"ray 1 actor": [], "ray 2 actors": []}
        with ray_session(None, num_cpus=2):
            for rep in range(args.repeats):
                c0 = time.process_time()
                table = score_corpus(job.model, job.corpus, job.rows, "induction", job.heads, job.request.mode, args.batch_rows, fit_rows=1024,
                                     seed=0, probes=job.probes, factor_cache=cache, threads=1)
                cpu_ms["in-process"].append(1e3 * (time.process_time() - c0) / job.num_rows)
                results["in-process"].append(job.num_rows / table.meta["seconds_score"])
                for workers, name in ((1, "ray 1 actor"), (2, "ray 2 actors")):
                    out = tmp / f"out{workers}"
                    shutil.rmtree(out, ignore_errors=True)
                    shutil.copytree(cache, out / "factors")
                    t0 = time.perf_counter()
                    s = run_job(resolve_job(request(out, workers)))
                    end_to_end[name].append(time.perf_counter() - t0)
                    assert s["factors"] == "loaded from the cache" and s["rows_scored"] == job.num_rows
                    results[name].append(s["rows_scored"] / s["seconds_score"])
                    cpu_ms[name].append(1e3 * s["cpu_seconds_score"] / s["rows_scored"])
                print(f"  repeat {rep + 1}: " + ", ".join(f"{k} {v[-1]:,.0f} rows/s" for k, v in results.items())
                      + f"   (load {load()})")

    # best of N (the least disturbed run on a shared machine) and the median
    best = {k: max(v) for k, v in results.items()}
    med = {k: statistics.median(v) for k, v in results.items()}
    cpu = {k: min(v) for k, v in cpu_ms.items()}
    print()
    for k in results:
        extra = f"; end to end {min(end_to_end[k]):.1f} s" if k in end_to_end else ""
        print(f"{k:>14}: best {best[k]:8,.0f} rows/s, median {med[k]:8,.0f} rows/s, {cpu[k]:.3f} CPU ms/row (of {args.repeats}){extra}")
    for name, v in (("best", best), ("median", med)):
        print(f"scaling 2 actors / 1 actor, wall clock ({name}): {v['ray 2 actors'] / v['ray 1 actor']:.2f}x (target >= 1.7)")
    print(f"  on free cores (2 x CPU ms/row of 1 actor / CPU ms/row of 2 actors): {2 * cpu['ray 1 actor'] / cpu['ray 2 actors']:.2f}x")
    for name, v in (("best", best), ("median", med)):
        print(f"Ray 1 actor vs in-process (1 thread), wall time per row ({name}): {(v['in-process'] / v['ray 1 actor'] - 1) * 100:+.1f}% (target <= 10%)")
    print(f"  CPU time per row: {(cpu['ray 1 actor'] / cpu['in-process'] - 1) * 100:+.1f}%")
    print(f"load average after: {load()}")


if __name__ == "__main__":
    main()
