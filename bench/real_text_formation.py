"""The induction-head formation sweep on real text: one `curate train` run per setting, the formation step of each.

Ingests a raw-text folder (e.g. the mix of `bench/real_text_mix.py`) once per (vocabulary, context) and trains a
fresh model per setting with curate commands only (`curate corpus ingest --vocab`, `curate train --layers --hidden
--heads --context --batch-size --lr --epochs`), on CPU or CUDA. Every run folder is kept under --out, so a killed
sweep resumes (`curate train --resume`) and a finished run is only read. Prints, per setting: tokens per step,
the first step at which the best induction head reaches the threshold (0.3) and the tokens seen by then, the
previous-token step, the best induction score, the tokens trained and the wall time; and writes sweep.json.

`--extend STEPS` then continues each finished run to STEPS in a new folder (the branch path of the experiment's arms,
trainer state included): the same run as one trained to STEPS from the start (constant learning rate after warm-up).

A setting is LAYERSxHIDDEN/hHEADS/cCONTEXT/bBATCH/vVOCAB[/lrLR], e.g. `3x64/h4/c128/b16/v512/lr1e-3`.

    PYTHONPATH=. python bench/real_text_formation.py --text real_mix --out sweep \\
        --settings 2x64/h4/c128/b8/v512,3x64/h4/c128/b16/v512,3x128/h4/c256/b32/v2048 --steps 50000 [--device cuda]
"""
from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

SETTING = re.compile(r"^(\d+)x(\d+)/h(\d+)/c(\d+)/b(\d+)/v(\d+)(?:/lr([0-9.eE+-]+))?$")


@dataclass(frozen=True)
class Setting:
    layers: int
    hidden: int
    heads: int
    context: int
    batch: int
    vocab: int
    lr: float = 1e-3

    @staticmethod
    def parse(text: str) -> "Setting":
        m = SETTING.match(text.strip())
        if not m:
            raise SystemExit(f"error: setting {text!r}: expected LAYERSxHIDDEN/hHEADS/cCONTEXT/bBATCH/vVOCAB[/lrLR]")
        lay, hid, hd, ctx, b, v, lr = m.groups()
        return Setting(int(lay), int(hid), int(hd), int(ctx), int(b), int(v), float(lr) if lr else 1e-3)

    @property
    def name(self) -> str:
        return f"{self.layers}x{self.hidden}-h{self.heads}-c{self.context}-b{self.batch}-v{self.vocab}-lr{self.lr:g}"


def curate(*args: object) -> str:
    proc = subprocess.run([sys.executable, "-m", "curate.cli", *map(str, args)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"error: curate {' '.join(map(str, args[:2]))} failed:\n{proc.stderr[-2000:]}")
    return proc.stdout


def corpus_for(text: Path, out: Path, vocab: int, context: int, heldout: int) -> Path:
    folder = out / "corpora" / f"v{vocab}-c{context}"
    if not (folder / "corpus.json").is_file():
        print(f"ingest {text} -> {folder} (BPE {vocab}, context {context})", flush=True)
        curate("corpus", "ingest", text, "--vocab", vocab, "--seq-len", context, "--heldout-rows", heldout, "--out", folder)
    return folder


def train(s: Setting, corpus: Path, run: Path, steps: int, eval_every: int, device: str) -> dict:
    rows = json.loads((corpus / "corpus.json").read_text())["heldout_start"]
    epochs = max(1, math.ceil(steps * s.batch / rows))
    summary = run / "summary.json"
    if summary.is_file() and json.loads(summary.read_text()).get("complete"):
        return json.loads(summary.read_text())
    args = ["train", "--corpus", corpus, "--layers", s.layers, "--hidden", s.hidden, "--heads", s.heads,
            "--context", s.context, "--batch-size", s.batch, "--lr", s.lr, "--warmup-steps", 200, "--steps", steps,
            "--epochs", epochs, "--eval-every", eval_every, "--checkpoints", f"every:{max(eval_every, steps // 10)}",
            "--device", device, "--threads", 1, "--quiet", "--json", "--out", run]
    if (run / "run.json").is_file():
        args.append("--resume")
    print(f"train {s.name}: {steps:,} steps ({epochs} epoch(s) of {rows:,} rows) -> {run}", flush=True)
    return json.loads(curate(*args))


def extend(run: Path, steps: int, out: Path) -> dict:
    """Continue a finished run to `steps` in a new folder, from its last checkpoint with its trainer state (optimizer,
    RNG, curve history: the path an experiment's arms branch by), the same rows in the same order after it. Under the
    fresh recipe's constant learning rate after warm-up this is the run it would have been with `steps` from the
    start; a schedule that decays refuses, since the longer run would differ before the branch point."""
    from dataclasses import replace

    from curate.pipelines.arm_plan import stored_spec
    from curate.training.trainer import train as train_run

    run_json = json.loads((run / "run.json").read_text())
    base = stored_spec(run_json, run)
    last = int(run_json["spec"]["steps"])
    if base.min_lr_ratio != 1.0:
        raise SystemExit(f"error: {run}: its learning rate decays over its {last:,} steps; a longer run would differ before it")
    if steps <= last:
        raise SystemExit(f"error: --extend {steps:,} is not past the run's {last:,} steps")
    spec = replace(base, corpus=str((run / run_json["spec"]["corpus"]).resolve()), steps=steps, init_from=str(run.resolve()),
                   revision=f"step{last}", init_state=True, architecture=None, model_config=None, start_step=None)
    print(f"extend {run.name}: steps {last:,} -> {steps:,} -> {out}", flush=True)
    return train_run(spec, out, progress=False, resume=(out / "run.json").is_file()).summary  # a finished one is only read


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--text", type=Path, required=True, help="raw-text folder (one subfolder per domain)")
    ap.add_argument("--out", type=Path, required=True, help="sweep folder (corpora, runs, sweep.json)")
    ap.add_argument("--settings", required=True, help="comma-separated LAYERSxHIDDEN/hHEADS/cCONTEXT/bBATCH/vVOCAB[/lrLR]")
    ap.add_argument("--steps", type=int, default=20_000)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--heldout-rows", type=int, default=1024)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--extend", type=int, default=None,
                    help="then continue each finished run to this step in runs/NAME-to{STEP} (constant learning rate only)")
    args = ap.parse_args()
    settings = [Setting.parse(t) for t in args.settings.split(",") if t.strip()]
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for s in settings:
        corpus = corpus_for(args.text, args.out, s.vocab, s.context, args.heldout_rows)
        t0 = time.perf_counter()
        summary = train(s, corpus, args.out / "runs" / s.name, args.steps, args.eval_every, args.device)
        if args.extend is not None:
            summary = extend(args.out / "runs" / s.name, args.extend, args.out / "runs" / f"{s.name}-to{args.extend}")
        em = summary["emergence"]
        tokens_per_step = s.batch * (s.context + 1)
        ind = em["induction"]["emergence_step"]
        name = s.name if args.extend is None else f"{s.name}-to{args.extend}"
        results.append({**asdict(s), "name": name, "tokens_per_step": tokens_per_step, "steps": summary["step"],
                        "induction_step": ind, "tokens_to_induction": None if ind is None else ind * tokens_per_step,
                        "previous_token_step": em["previous_token"]["emergence_step"],
                        "induction_max": em["induction"]["max"], "previous_token_max": em["previous_token"]["max"],
                        "tokens_trained": summary["step"] * tokens_per_step,
                        "wall_s": summary.get("timing", {}).get("wall_s", time.perf_counter() - t0)})
        (args.out / "sweep.json").write_text(json.dumps(results, indent=2))
    print(f"\n{'setting':<34s} {'tok/step':>9s} {'induction at':>13s} {'tokens then':>12s} {'prev-token at':>14s} "
          f"{'best ind':>9s} {'tokens':>12s} {'wall s':>8s}")
    for r in results:
        at = "never" if r["induction_step"] is None else f"{r['induction_step']:,}"
        tok = "-" if r["tokens_to_induction"] is None else f"{r['tokens_to_induction'] / 1e6:.1f}M"
        prev = "never" if r["previous_token_step"] is None else f"{r['previous_token_step']:,}"
        print(f"{r['name']:<34s} {r['tokens_per_step']:9,d} {at:>13s} {tok:>12s} {prev:>14s} {r['induction_max']:9.3f} "
              f"{r['tokens_trained'] / 1e6:11.1f}M {r['wall_s']:8.0f}")


if __name__ == "__main__":
    main()
