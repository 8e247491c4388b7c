"""Structure features, tags and the neighbour index, measured side by side in one run.

    python bench/structure.py [--docs 30000] [--queries 1000]

Prints: repetition-feature / structure-vector throughput (rows/s) at 129- and 2049-token rows,
tagging throughput and accuracy on mini-Pile rows, and exact (IndexFlatIP) vs. IVF index build
time, query time and recall@10 on the same corpus, with the speed ratios.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from curate.augment.features import repetition_features, structure_vectors  # noqa: E402
from curate.augment.index import IndexParams, build_index, recall_at_k  # noqa: E402
from curate.augment.tags import tag_rows  # noqa: E402
from structure_helpers import minipile_rows, write_corpus  # noqa: E402


def rate(fn, rows: np.ndarray, repeat: int = 3) -> float:
    """Best-of-`repeat` rows per second of fn(rows)."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn(rows)
        best = min(best, time.perf_counter() - t)
    return len(rows) / best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=30_000, help="mini-Pile documents for the index corpus")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import faiss

    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)

    print("== features (rows/s, best of 3)")
    for row_len, n in ((129, 8192), (2049, 1024)):
        rows = rng.integers(0, 50_000, size=(n, row_len))
        r_rep = rate(repetition_features, rows)
        r_vec = rate(structure_vectors, rows)
        print(f"row_len {row_len:5d}: repetition features {r_rep:10,.0f} rows/s ({r_rep * row_len / 1e6:5.1f} M tok/s); "
              f"structure vectors {r_vec:10,.0f} rows/s")

    print("== tags on mini-Pile rows (129 tokens)")
    data = minipile_rows(n_docs=args.docs, seed=1, row_len=129)
    sample = data.rows[:3000]
    t = time.perf_counter()
    tags = tag_rows(sample, data.tokenizer)
    dt = time.perf_counter() - t
    acc = np.mean([a == b for a, b in zip(tags, data.labels[:3000])])
    print(f"tag_rows: {len(sample) / dt:,.0f} rows/s, accuracy vs. generator labels {acc:.4f} on {len(sample)} rows")

    print(f"== index: {len(data.rows):,} rows")
    with tempfile.TemporaryDirectory() as tmp:
        corpus = write_corpus(Path(tmp) / "corpus", data)
        out = {}
        for kind in ("flat", "ivf"):
            t = time.perf_counter()
            idx = build_index(corpus, Path(tmp) / kind, params=IndexParams(kind=kind, seed=0))
            out[kind] = (idx, time.perf_counter() - t)
        flat, ivf = out["flat"][0], out["ivf"][0]
        qrows = data.rows[rng.choice(len(data.rows), size=min(args.queries, len(data.rows)), replace=False)]
        queries = flat.vectors(qrows)
        timings = {}
        for kind, (idx, _) in out.items():
            t = time.perf_counter()
            idx.search(queries, 10)
            timings[kind] = time.perf_counter() - t
        recall = recall_at_k(ivf.index, flat.index, queries, k=10)
        info = ivf.info
        print(f"flat: build {out['flat'][1]:6.1f} s, {len(queries)} queries in {timings['flat'] * 1e3:7.1f} ms, recall@10 1.000")
        print(f"ivf : build {out['ivf'][1]:6.1f} s, {len(queries)} queries in {timings['ivf'] * 1e3:7.1f} ms, "
              f"recall@10 {recall:.3f} (build-time estimate {info['recall']:.3f}; nlist {info['nlist']}, nprobe {info['nprobe']}, "
              f"curve {info['recall_curve']})")
        print(f"query speed-up ivf/flat: {timings['flat'] / timings['ivf']:.1f}x; build time ratio ivf/flat: "
              f"{out['ivf'][1] / out['flat'][1]:.1f}x")


if __name__ == "__main__":
    main()
