"""`curate train`: train a GPT-NeoX model on a corpus in its exact row order (optionally under a plan)."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from curate.errors import CurateError
from curate.locks import hold
from curate.options import composed, flag, opt, workspace_opt
from curate.progress import DEFAULT_HEARTBEAT_S, HEARTBEAT_ENV
from curate.commands.options import command, save_config
from curate.training.train_request import TrainRequest
from curate.workspace import resolve_workspace


@dataclass
class TrainOptions:
    """`curate train`: the reference run or a run folder, the library's TrainRequest (composed: the flags that decide
    the TrainSpec) and how to print."""

    default: bool = opt(False, "--default", help="The reference run: default corpus (built if missing) and model, into the workspace.")
    request: TrainRequest = composed(TrainRequest, flat=True)
    out: Path | None = opt(None, "--out", help="Run folder (checkpoints, curves, summary).")
    resume: bool = opt(False, "--resume", help="Continue the run in --out from its latest checkpoint; with --model, continue that checkpoint's state into --out.")
    as_json: bool = opt(False, "--json", help="Print the run summary as JSON.")
    quiet: bool = opt(False, "--quiet", help=f"No progress: neither the bar (on a terminal) nor, off a terminal (a log, nohup, a scheduler), the heartbeat line on stderr every {DEFAULT_HEARTBEAT_S:g} s (step, loss, induction score, steps/s, ETA; the environment variable {HEARTBEAT_ENV} sets the seconds).")
    workspace: Path | None = workspace_opt()

    def validate(self) -> None:
        """The option combinations (the flags' own checks are the request's, the values themselves TrainSpec's)."""
        r = self.request
        if self.default and (r.config is not None or r.init_from is not None):
            raise CurateError(f"--default trains the default model from scratch; drop {flag(self, 'config')}/{flag(self, 'init_from')}")
        if not self.default and self.out is None:
            raise CurateError(f"{flag(self, 'out')} is required (or use --default for the reference run)")
        r.validate()
        if (r.shape() or r.preset) and (self.default or r.config is not None or r.init_from is not None):
            given = ", ".join(flag(self, n) for n in (*r.shape(), *(["preset"] if r.preset else [])))
            raise CurateError(f"{given} shape a fresh model: drop --default/{flag(self, 'config')}/{flag(self, 'init_from')}")


def train_command(options: TrainOptions) -> None:
    """Train GPT-NeoX on a corpus in its exact row order, evaluating circuits and saving checkpoints."""
    o = options
    # the trainer imports torch and transformers (seconds, measured): only when a command trains
    from curate.training.presets import weights_training_fields
    from curate.training.recipes import recipe_fields
    from curate.training.reference import train_reference_run
    from curate.training.spec import TrainSpec, saved_spec, steps_of_epochs
    from curate.training.trainer import train

    r = o.request
    given = r.overrides()
    ws = resolve_workspace(o.workspace)
    if o.default:
        # `curate train --default` is idempotent: it continues or confirms the reference run (which it locks)
        result = train_reference_run(ws, progress=not o.quiet, overrides=given, out=o.out)
        with hold(result.out_dir, what="training run"):
            save_config(result.out_dir, "train", options, resolved={"out": result.out_dir})
    else:
        assert o.out is not None  # validate() requires it
        start = recipe_fields("fresh") if r.init_from is None else weights_training_fields(r.init_from)
        fields = {**start, **r.shape_fields(), **given}  # a Pythia checkpoint continues with Pythia's own settings
        if o.resume and r.init_from is not None:
            fields["init_state"] = True
        spec = saved_spec(o.out, fields) if o.resume and r.init_from is None else None
        if spec is None:
            if fields.get("corpus") is None and fields.get("plan") is None:
                raise CurateError(f"{flag(o, 'corpus')} is required (or a {flag(o, 'plan')} that names a corpus, or --default)")
            spec = TrainSpec(**fields)
            if r.epochs is not None and r.steps is None:
                spec = dataclasses.replace(spec, steps=steps_of_epochs(spec))
        with hold(o.out, what="training run"):
            result = train(spec, o.out, progress=not o.quiet, resume=o.resume)
            if result.resumed_from != result.final_step:  # a finished run resumed trains nothing: its folder stays as it was
                save_config(result.out_dir, "train", options)
    if o.as_json:
        print(json.dumps(result.summary, indent=2, sort_keys=True, default=str))
        return
    _print_summary(result)


def _print_summary(result) -> None:
    emergence = result.summary.get("emergence", {})
    table = Table(title=f"run {result.out_dir}", show_header=True)
    table.add_column("circuit")
    table.add_column("threshold", justify="right")
    table.add_column("emerges at step", justify="right")
    table.add_column("50% of final at", justify="right")
    table.add_column("final (head)", justify="right")
    for metric in ("induction", "previous_token"):
        info = emergence.get(metric)
        if not info:
            continue
        table.add_row(metric.replace("_", "-"), f"{info['threshold']:g}",
                      str(info["emergence_step"]) if info["emergence_step"] is not None else "not formed",
                      str(info["half_final_step"]) if info["emergence_step"] is not None else "never formed",
                      f"{info['final']:.3f} ({info['final_head']})")
    console = Console()
    console.print(table)
    timing = result.summary.get("timing", {})
    held = emergence.get("heldout_loss", {})
    icl = emergence.get("icl", {})
    line = f"final checkpoint: {result.final_checkpoint}"
    if held:
        line += f"   held-out loss {held['final']:.3f}"
    if icl:
        line += f"   ICL {icl['final']:+.3f}"
    if timing.get("tokens_per_s"):
        line += f"   {timing['tokens_per_s']:,.0f} tokens/s"
    console.print(line)


def register(app: typer.Typer) -> None:
    command(app, "train", TrainOptions, train_command,
            example="curate train --corpus my-corpus --steps 3000 --out runs/mine")
