"""Peak resident memory of `curate score` at Pythia size: a short window vs a window `--factor` times longer.

Builds a `training.presets` stand-in checkpoint (random weights, default Pythia-70m) and a corpus of random
2,049-token rows (steps of `--batch` rows) in a temporary folder, then runs `curate score --heads H --fit-rows F
--workers 1` in a child process for each window (the EK-FAC fit rows fixed, so only the scored rows grow) under
`/usr/bin/time -v` (or `resource.getrusage` when it is missing), and prints the peak resident set of each run: the
driver's process tree peak as `time -v` reports it, i.e. the largest single process (driver or Ray worker). Scoring
memory must be O(batch), not O(window): the longer window should peak within a few percent of the short one.

    PYTHONPATH=. python bench/pythia_memory.py [--preset pythia-70m] [--batch 2] [--steps 1] [--factor 4] [--heads 1.0]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER_VOCAB = 50277


def build_inputs(folder: Path, preset: str, rows: int, batch: int, context: int | None) -> tuple[Path, Path]:
    """(corpus folder of `rows` random rows, checkpoint folder of the preset with random weights)."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from curate.atomic import write_json
    from curate.corpus import CorpusMeta
    from curate.megatron import write_megatron
    from curate.training.presets import preset_for

    fields = preset_for(preset).architecture.config_fields()
    row_len = int(context or fields["max_position_embeddings"]) + 1
    corpus = folder / "corpus"
    data = np.random.default_rng(0).integers(0, TOKENIZER_VOCAB, (rows, row_len))
    write_megatron(corpus / "document", data, np.uint16)
    write_json(corpus / "corpus.json", CorpusMeta(data="document.idx", batch_size=batch, vocab_size=TOKENIZER_VOCAB).to_json())
    torch.manual_seed(0)
    ckpt = folder / "ckpt"
    GPTNeoXForCausalLM(GPTNeoXConfig(**fields)).save_pretrained(ckpt)
    return corpus, ckpt


def peak_of(args: list[str], env: dict) -> tuple[float, float, dict]:
    """(peak resident GiB, wall seconds, the command's JSON output) of `python -m curate.cli ARGS --json --quiet`."""
    cmd = [sys.executable, "-m", "curate.cli", *args, "--json", "--quiet"]
    timer = shutil.which("time") or ("/usr/bin/time" if Path("/usr/bin/time").exists() else None)
    t0 = time.perf_counter()
    if timer:
        proc = subprocess.run([timer, "-v", *cmd], cwd=ROOT, env=env, capture_output=True, text=True)
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
        peak = int(m.group(1)) / 2**20 if m else float("nan")
    else:
        import resource

        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        peak = max(before, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 2**20
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"curate score failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    out = proc.stdout
    return peak, wall, json.loads(out[out.index("{"):])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="pythia-70m")
    ap.add_argument("--batch", type=int, default=2, help="rows per training step of the corpus (and per scoring batch)")
    ap.add_argument("--steps", type=int, default=1, help="steps of the short window")
    ap.add_argument("--factor", type=int, default=4, help="the long window is this many times longer")
    ap.add_argument("--heads", default="1.0")
    ap.add_argument("--fit-rows", type=int, default=2)
    ap.add_argument("--context", type=int, default=None, help="rows of CONTEXT + 1 tokens (a smoke run)")
    args = ap.parse_args(argv)
    long_steps = args.steps * args.factor
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_ADDRESS": "local", "PYTHONPATH": str(ROOT)}
    work = Path(tempfile.mkdtemp(prefix="pythia-memory-"))
    try:
        corpus, ckpt = build_inputs(work, args.preset, long_steps * args.batch, args.batch, args.context)
        print(f"{args.preset} stand-in, random rows of {open_rows(corpus)} tokens, {args.batch} rows per step and per batch; "
              f"heads {args.heads}; EK-FAC fit on {args.fit_rows} rows; 1 worker; peak RSS of the largest process "
              f"({'/usr/bin/time -v' if shutil.which('time') or Path('/usr/bin/time').exists() else 'getrusage'})")
        print(f"{'window':>12s} {'rows':>6s} {'peak GiB':>9s} {'wall s':>8s} {'score s':>8s}")
        peaks = {}
        for steps in (args.steps, long_steps):
            out = work / f"scores-{steps}"
            peak, wall, summary = peak_of(
                ["score", "--model", str(ckpt), "--corpus", str(corpus), "--window", f"0:{steps}", "--heads", args.heads,
                 "--fit-rows", str(args.fit_rows), "--batch-rows", str(args.batch), "--shard-rows", str(args.batch),
                 "--workers", "1", "--out", str(out)], env)
            peaks[steps] = peak
            print(f"{f'0:{steps}':>12s} {summary['rows']:6d} {peak:9.2f} {wall:8.1f} {summary['seconds_score']:8.1f}")
        print(f"\nlong / short window peak: {peaks[long_steps] / peaks[args.steps]:.3f} for {args.factor}x the rows (O(batch): ~1.0)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def open_rows(corpus: Path) -> str:
    from curate.corpus import open_corpus

    return f"{open_corpus(corpus).row_len:,}"


if __name__ == "__main__":
    main()
