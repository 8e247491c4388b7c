"""Throughput of `build-mix` against a plain copy of the same window rows (numpy memmap read + file write).

Generates a Pythia-format corpus folder (uint16 rows of 2,049 tokens, 1,024 rows per step, a few hundred
MB) with a scores folder over its window, warms the page cache, then measures side by side, interleaved,
best of `--repeats`:
  - copy:    memmap slices of the window rows written to one file, chunk by chunk
  - mix:     `build_mix` --remove 10% --augment 2% --source top (streamed window, checksums, provenance,
             plan, manifest)
  - control: the same sizes with --control random
  - sha256:  one streamed sha256 of the window rows (build-mix computes two: input window and mix.bin,
             on background threads), to show what the checksums cost
Rows/s counts the rows written (window rows for the copy, mix rows for build-mix). Every case starts
after an `os.sync()` (untimed), so no side pays for flushing the other's writes.

Run: python bench/mix.py [--mb 256] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.augment.checksums import rows_sha256
from curate.augment.mix import MixSpec, build_mix
from curate.corpus import CorpusMeta, open_corpus
from curate.megatron import MegatronWriter

ROW_LEN = 2049
BATCH = 1024
CHUNK = 4096


def build(folder: Path, megabytes: int, seed: int) -> tuple[Path, Path, tuple[int, int]]:
    """A corpus folder and a scores folder over steps [1, steps - 1)."""
    steps = max(4, megabytes * 2**20 // (ROW_LEN * 2 * BATCH))
    rng = np.random.default_rng(seed)
    corpus = folder / "corpus"
    with MegatronWriter(corpus / "document", np.uint16) as w:
        for _ in range(steps):
            w.add_rows(rng.integers(0, 50277, size=(BATCH, ROW_LEN), dtype=np.uint16))
    meta = CorpusMeta(data="document.idx", batch_size=BATCH, vocab_size=50277)
    (corpus / "corpus.json").write_text(json.dumps(meta.to_json()))
    scores = folder / "scores"
    (scores / "shards").mkdir(parents=True)
    window = (1, steps - 1)
    ids = np.arange(window[0] * BATCH, window[1] * BATCH, dtype=np.int64)
    for a in range(0, len(ids), 16384):
        part = ids[a : a + 16384]
        table = pa.table({
            "row_id": part, "step": part // BATCH, "loss": np.full(len(part), 3.0, np.float32),
            "head_1_2": rng.standard_normal(len(part)), "score": rng.standard_normal(len(part)),
        })
        pq.write_table(table, scores / "shards" / f"rows-{a:09d}.parquet")
    summary = {"corpus": str(corpus), "circuit": "induction", "heads": ["1.2"], "window": list(window), "batch_size": BATCH}
    (scores / "summary.json").write_text(json.dumps(summary))
    return corpus, scores, window


def plain_copy(bin_path: Path, out: Path, window: tuple[int, int]) -> int:
    mm = np.memmap(bin_path, dtype=np.uint16, mode="r").reshape(-1, ROW_LEN)
    a, b = window[0] * BATCH, window[1] * BATCH
    with open(out, "wb") as f:
        for s in range(a, b, CHUNK):
            f.write(np.ascontiguousarray(mm[s : min(b, s + CHUNK)]).tobytes())
    return b - a


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=256, help="corpus size in MB")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-mix-") as tmp:
        root = Path(tmp)
        corpus, scores, window = build(root, args.mb, args.seed)
        bin_path = corpus / "document.bin"
        size_mb = bin_path.stat().st_size / 2**20
        plain_copy(bin_path, root / "warm.bin", window)  # warm the page cache
        specs = {
            "mix": MixSpec(remove="10%", augment="2%", source="top", seed=args.seed),
            "control": MixSpec(remove="10%", augment="2%", control="random", seed=args.seed),
        }
        best = {"copy": float("inf"), **{k: float("inf") for k in specs}, "sha256": float("inf")}
        rows = {}
        opened = open_corpus(corpus)
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            rows_sha256(opened, row_range=(window[0] * BATCH, window[1] * BATCH))
            best["sha256"] = min(best["sha256"], time.perf_counter() - t0)
            rows["sha256"] = (window[1] - window[0]) * BATCH
            os.sync()  # both sides start with no dirty pages to flush
            t0 = time.perf_counter()
            rows["copy"] = plain_copy(bin_path, root / "copy.bin", window)
            best["copy"] = min(best["copy"], time.perf_counter() - t0)
            (root / "copy.bin").unlink()
            for name, spec in specs.items():
                out = root / name
                os.sync()
                t0 = time.perf_counter()
                result = build_mix(scores, out, spec)
                best[name] = min(best[name], time.perf_counter() - t0)
                rows[name] = result.counts["rows"]
                shutil.rmtree(out)
        print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
        print(f"corpus {size_mb:.0f} MB, window steps {window[0]}-{window[1]} ({rows['copy']:,} rows of {ROW_LEN} uint16), best of {args.repeats}")
        copy_rate = rows["copy"] / best["copy"]
        for name in ("copy", *specs, "sha256"):
            rate = rows[name] / best[name]
            mbps = rate * ROW_LEN * 2 / 2**20
            print(f"  {name:8s} {rows[name]:>8,} rows in {best[name]:6.2f} s = {rate:>9,.0f} rows/s ({mbps:6.0f} MB/s)  ratio to copy {rate / copy_rate:.2f}")


if __name__ == "__main__":
    main()
