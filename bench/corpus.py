"""Read throughput of `open_corpus` against a plain `numpy.memmap` of the same bytes (ratio target >= 0.8).

Generates a Pythia-format corpus (uint16 rows of 2,049 tokens, 1,024 rows per step) in a temp
folder, once as one `.bin` and once as Pythia-named shards whose boundaries cut through rows and
steps, then measures, side by side in one run:
  - random step batches: `corpus.step_batch(step)` vs `memmap[1024*step : 1024*(step+1)]`
  - a sequential scan: `corpus.iter_chunks()` vs memmap slices of the same size
Both sides copy the rows into the same preallocated buffer, so both really read the bytes.
Pages are warmed first; each case keeps the best of several interleaved repeats.

Run: python bench/corpus.py [--mb 256] [--shard-mb 48] [--repeats 3]
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from curate.corpus import open_corpus
from curate.megatron import MegatronWriter, shard_name

ROW_LEN = 2049
BATCH = 1024


def build(folder: Path, megabytes: int, shard_megabytes: int, seed: int) -> tuple[Path, Path, int]:
    """One `.bin` + `.idx`, and the same bytes as shards beside a copy of the index."""
    steps = max(4, megabytes * 2**20 // (ROW_LEN * 2 * BATCH))
    rng = np.random.default_rng(seed)
    single = folder / "single"
    with MegatronWriter(single / "document", np.uint16) as w:
        for _ in range(steps):
            w.add_rows(rng.integers(0, 50277, size=(BATCH, ROW_LEN), dtype=np.uint16))
    sharded = folder / "sharded"
    sharded.mkdir()
    shutil.copyfile(single / "document.idx", sharded / "document.idx")
    shard_bytes = shard_megabytes * 2**20
    total = (single / "document.bin").stat().st_size
    last = (total - 1) // shard_bytes
    with open(single / "document.bin", "rb") as src:
        for i in range(last + 1):
            with open(sharded / shard_name("document", i, last), "wb") as dst:
                dst.write(src.read(shard_bytes))
    return single, sharded, steps


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=256, help="corpus size in MiB")
    ap.add_argument("--shard-mb", type=int, default=48, help="shard size in MiB (cuts through rows and steps)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--random-steps", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="curate-bench-") as tmp:
        t0 = time.perf_counter()
        single, sharded, steps = build(Path(tmp), args.mb, args.shard_mb, args.seed)
        n_rows = steps * BATCH
        step_mb = BATCH * ROW_LEN * 2 / 2**20
        print(f"corpus: {steps} steps x {BATCH} rows x {ROW_LEN} uint16 tokens = {steps * step_mb:.0f} MiB "
              f"(built in {time.perf_counter() - t0:.1f} s); shards of {args.shard_mb} MiB: "
              f"{len(list(sharded.glob('*.bin')))}")
        raw = np.memmap(single / "document.bin", dtype=np.uint16, mode="r", shape=(n_rows, ROW_LEN))
        buf = np.empty((BATCH, ROW_LEN), dtype=np.uint16)
        picks = np.random.default_rng(args.seed + 1).integers(0, steps, args.random_steps)
        chunk = 4 * BATCH
        scan_buf = np.empty((chunk, ROW_LEN), dtype=np.uint16)

        def memmap_random() -> None:
            for s in picks:
                np.copyto(buf, raw[s * BATCH : (s + 1) * BATCH])

        def memmap_scan() -> None:
            for a in range(0, n_rows, chunk):
                block = raw[a : a + chunk]
                np.copyto(scan_buf[: len(block)], block)

        print(f"{'layout':8s} {'access':16s} {'curate MiB/s':>13s} {'memmap MiB/s':>13s} {'ratio':>6s}")
        for name, folder in (("single", single), ("sharded", sharded)):
            corpus = open_corpus(folder)
            assert corpus.num_rows == n_rows and corpus.batch_size == BATCH

            def curate_random() -> None:
                for s in picks:
                    np.copyto(buf, corpus.step_batch(int(s)))

            def curate_scan() -> None:
                for a, block in corpus.iter_chunks(chunk_rows=chunk):
                    np.copyto(scan_buf[: len(block)], block)

            assert np.array_equal(corpus.step_batch(int(picks[0])), raw[picks[0] * BATCH : (picks[0] + 1) * BATCH])
            for label, ours, base, megabytes in (
                ("random steps", curate_random, memmap_random, len(picks) * step_mb),
                ("sequential scan", curate_scan, memmap_scan, steps * step_mb),
            ):
                ours(), base()  # warm the page cache and the code paths
                t_ours, t_base = [], []
                for _ in range(args.repeats):  # interleave so drift hits both sides
                    t_ours.append(best_of(ours, 1))
                    t_base.append(best_of(base, 1))
                ours_rate, base_rate = megabytes / min(t_ours), megabytes / min(t_base)
                print(f"{name:8s} {label:16s} {ours_rate:13.0f} {base_rate:13.0f} {ours_rate / base_rate:6.2f}")
        del raw


if __name__ == "__main__":
    main()
