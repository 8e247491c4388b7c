"""`curate build-mix`, `curate synth`, `curate verify`: intervention mixes of the attribution window,
synthetic motif rows, and the checksum check of either."""
from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import typer

from curate.augment.checksums import verify_folder
from curate.augment.mix_spec import DEFAULT_TOP, MixSpec, default_slug
from curate.commands.feedback import heartbeat
from curate.commands.options import command, save_config
from curate.commands.train import TrainOptions
from curate.corpus import open_corpus
from curate.errors import CurateError
from curate.locks import hold
from curate.options import arg, check_positive, composed, flag, opt, spec_flag, workspace_opt
from curate.training.plan import epoch_steps, load_plan, with_epochs
from curate.training.train_request import ARCHITECTURE_OPTIONS
from curate.workspace import mixes_dir, resolve_workspace

MOTIF_ROWS_HELP = "Top rows mined for motifs (synthetic) or queried for neighbours."
# Imported inside the functions that use them: curate.attribution.scores_folder, curate.augment.mix/.synth and
# curate.pipelines.arm_plan load torch and faiss (measured 3-6 s on the 2-core machine), which every `curate`
# start would otherwise pay for, `curate --help` included.


@dataclass
class BuildMixOptions:
    """`curate build-mix`: the scores folder, the library's MixSpec (composed, its CLI flags below) and where to write."""

    scores: Path = arg(help="Scores folder (summary.json + shards/*.parquet).")
    mix: MixSpec = composed(
        MixSpec,
        remove=spec_flag("--remove", help="Drop the top rows of the window: 10%, 0.1 or a row count."),
        augment=spec_flag("--augment", help="Add rows: 2%, 0.02 or a row count (of the window)."),
        source=spec_flag("--source", help="Added rows: top (duplicates of the top rows), neighbors (structural neighbours from --pool) or synthetic (motif rows)."),
        pool=spec_flag("--pool", help="neighbors: a corpus or structure index folder (default: SCORES/index, else the scored corpus); synthetic: a `curate synth` corpus (default: generate)."),
        at_step=spec_flag("--at-step", help="Insert all added rows at this step (default: spread evenly over the window)."),
        control=spec_flag("--control", help="random: same sizes with random window rows (the control arm)."),
        top=spec_flag("--motif-rows", help=MOTIF_ROWS_HELP, deprecated=("--top",)),
        seed=spec_flag("--seed", help="Seed of every random choice."),
    )
    out: Path | None = opt(None, "--out", help="Mix folder (default: WORKSPACE/mixes/CIRCUIT-<options>).")
    workspace: Path | None = workspace_opt()

    def validate(self) -> None:
        self.mix.validate()


def build_mix_command(o: BuildMixOptions) -> None:
    """Write the window's rows in a new order (top rows removed and/or rows added) as .bin/.idx + provenance + plan.

    Prints the `curate train` command that trains the arm as `curate experiment` trains its arms: the scored run's
    shape, seed and evaluation interval, until the window's end plus the window's length (at most the scored run's
    length; on the default: window 0-1,700, step 3,400, past the step where the head forms), and `curate verify`."""
    from curate.attribution.scores_folder import open_scores
    from curate.augment.mix import build_mix

    out = o.out
    if out is None:
        circuit = open_scores(o.scores).summary.get("circuit") or "scores"
        out = mixes_dir(resolve_workspace(o.workspace)) / f"{circuit}-{default_slug(o.mix)}"
    # command.json is written into the folder before its manifest, so the manifest lists it and `curate verify` checks it
    with hold(out, what="mix"), heartbeat("build-mix: writing the mix"):
        result = build_mix(o.scores, out, o.mix,
                           before_manifest=lambda folder: save_config(folder, "build-mix", o, resolved={"out": folder}))
    c = result.counts
    reasons = ", ".join(f"{k} {v:,}" for k, v in c["by_reason"].items())
    typer.echo(
        f"mix of {c['window_rows']:,} window rows: removed {c['removed']:,}, added {c['added']:,} -> {c['rows']:,} rows "
        f"({reasons}) -> {result.out}"
    )
    typer.echo(f"train on it: {retrain_command(o.scores, result)}")
    typer.echo(f"check it: curate verify {result.out}")


def retrain_command(scores: Path, result) -> str:
    """A `curate train` command line that trains the mix's arm as `curate experiment` trains its arms: its plan, at
    the scored run's batch size, with the scored run's architecture flags, seed, evaluation interval and epochs when
    its run folder records them, until the experiment's arm length (`default_arm_steps`: the window's end plus the
    window's length, at most the scored run's length; fewer when the plan's rows run out first), into a folder
    beside the mix."""
    from curate.attribution.scores_folder import open_scores
    from curate.pipelines.arm_plan import default_arm_steps
    from curate.training.spec import TrainSpec

    folder = open_scores(scores)
    summary = folder.summary
    window = result.manifest.get("window", {}) if isinstance(result.manifest, dict) else {}
    batch = int(summary.get("batch_size") or window.get("batch_size") or 0)
    start = int(window.get("start_step", (summary.get("window") or [0])[0]))
    end = int(window.get("end_step", start + int(result.counts["rows"]) // max(batch, 1)))
    out = result.out.parent / f"{result.out.name}-run"
    plan_file = result.out / "plan.json"
    args = ["curate", "train", "--plan", str(plan_file)]
    spec: dict = {}
    checkpoint = folder.checkpoint
    if checkpoint:
        run_file = Path(checkpoint).parent.parent / "run.json"
        try:
            spec = json.loads(run_file.read_text()).get("spec", {}) if run_file.is_file() else {}
        except (OSError, ValueError):
            spec = {}
    for option, field in ARCHITECTURE_OPTIONS.items():
        value = (spec.get("architecture") or {}).get(field)
        if value is not None:
            args += [flag(TrainOptions, option), str(value)]
    if batch:
        args += ["--batch-size", str(batch)]
    epochs = int(spec.get("epochs") or 1)
    seed = int(spec.get("seed", 0))
    if epochs > 1:
        args += ["--epochs", str(epochs)]
    if spec.get("seed") is not None or epochs > 1:
        args += ["--seed", str(seed)]
    eval_every = int(spec.get("eval_every") or TrainSpec.eval_every)
    if spec.get("eval_every") is not None:
        args += ["--eval-every", str(eval_every)]
    if batch:
        steps = default_arm_steps(start, end, eval_every, int(spec["steps"]) if spec.get("steps") else None)
        plan = with_epochs(load_plan(plan_file), epochs, seed)
        available = epoch_steps(plan, open_corpus(plan.corpus), batch) if plan.corpus else steps
        args += ["--steps", str(min(steps, available))]
    args += ["--out", str(out)]
    return shlex.join(args)


@dataclass
class SynthOptions:
    """`curate synth`."""

    scores: Path = opt(..., "--scores", help="Scores folder whose top rows give the motifs.", show_default=False,
                       deprecated=("--from",))
    rows: int = opt(..., "--rows", help="Synthetic rows to write.", show_default=False)
    out: Path = opt(..., "--out", help="Output corpus folder.", show_default=False)
    top: int = opt(DEFAULT_TOP, "--motif-rows", help=MOTIF_ROWS_HELP, deprecated=("--top",))
    seed: int = opt(0, "--seed", help="Seed of the fresh content.")
    workspace: Path | None = workspace_opt()

    def validate(self) -> None:
        check_positive(self, "rows", "top")


def synth_command(o: SynthOptions) -> None:
    """Mine the top rows' structural motifs and write new rows that repeat them with fresh content (a corpus folder)."""
    from curate.augment.synth import synthesize_from_scores

    with hold(o.out, what="synthetic corpus"), heartbeat("synth: mining motifs and writing rows"):
        summary = synthesize_from_scores(o.scores, o.out, rows=o.rows, top=o.top, seed=o.seed)
    mined, gen = summary["mined"], summary["generated"]
    labels = ", ".join(f"{k} {v}" for k, v in mined["labels"].items())
    typer.echo(f"mined {mined['motifs']} motifs ({labels}); {mined['spans']} long repeats, mean length {mined['mean_span_length']:.1f}")
    typer.echo(
        f"wrote {gen['rows']:,} rows ({gen['rows_with_spans']:,} with long repeats, {gen['spans']:,} repeats, "
        f"mean fresh share {gen['mean_fresh_share']:.2f}) -> {o.out}"
    )


@dataclass
class VerifyOptions:
    """`curate verify`."""

    folder: Path = arg(help="A mix (build-mix) or synthetic corpus (synth) folder.")
    outputs_only: bool = opt(False, "--outputs-only", help="Check the folder's own files only, not its inputs.")
    workspace: Path | None = workspace_opt()


def verify_command(o: VerifyOptions) -> None:
    """Recheck every checksum in the folder's manifest.json (outputs, and inputs unless --outputs-only)."""
    problems, checks = verify_folder(o.folder, check_inputs=not o.outputs_only)
    if problems:
        for line in problems[:-1]:
            print(f"error: {line}", file=sys.stderr)
        raise CurateError(problems[-1])  # the CLI prints it as the last `error:` line and exits 2
    typer.echo(f"ok: {checks} checksums match ({o.folder})")


def register(app: typer.Typer) -> None:
    command(app, "build-mix", BuildMixOptions, build_mix_command,
            example="curate build-mix curate-workspace/default/scores/induction --remove 10% --out mixes/remove-top")
    command(app, "synth", SynthOptions, synth_command,
            example="curate synth --scores curate-workspace/default/scores/induction --rows 2000 --out synthetic")
    command(app, "verify", VerifyOptions, verify_command, example="curate verify mixes/remove-top")
