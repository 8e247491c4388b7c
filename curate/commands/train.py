"""`curate train`: train a GPT-NeoX model on a corpus in its exact row order (optionally under a plan)."""
from __future__ import annotations

import json
from pathlib import Path
import dataclasses
from dataclasses import dataclass

import typer
from rich.console import Console
from rich.table import Table

from curate.errors import CurateError
from curate.locks import hold
from curate.training.presets import preset_for
from curate.options import flag, named, opt, workspace_opt
from curate.progress import DEFAULT_HEARTBEAT_S, HEARTBEAT_ENV
from curate.commands.options import command, save_config
from curate.training.recipes import autocast_of
from curate.workspace import resolve_workspace


@dataclass
class TrainOptions:
    """`curate train` options; the ones named like TrainSpec fields pass to it unchanged when given."""

    default: bool = opt(False, "--default", help="The reference run: default corpus (built if missing) and model, into the workspace.")
    corpus: str | None = opt(None, "--corpus", help="Training corpus (Megatron prefix/.idx, .npy, .parquet or corpus folder).")
    config: Path | None = opt(None, "--config", help="GPT-NeoX config JSON for a fresh model (default: the embedded default model).")
    init_from: str | None = opt(None, "--model", deprecated=("--from",), help="Start from these weights: HF folder, run folder, checkpoint, or hub name.")
    revision: str | None = opt(None, "--revision", help="Checkpoint of --model (stepK), as on the hub.")
    plan: str | None = opt(None, "--plan", help="Training plan JSON (drops/insertions) or a corpus whose row order is the stream.")
    steps: int | None = opt(None, "--steps", help="Train until this step (default 1000, or the whole steps of --epochs; --default: the reference length).")
    epochs: int | None = opt(None, "--epochs", help="Passes over the corpus's rows (or the plan's); the first in the corpus's order, each later one in a fresh permutation seeded by --seed, recorded in the run's plan.json. Without --steps the run trains every whole step of them.")
    batch_size: int | None = opt(None, "--batch-size", help="Rows per step (default: the corpus's).")
    eval_every: int | None = opt(None, "--eval-every", help="Evaluate every K steps (default 100).")
    checkpoints: str | None = opt(None, "--checkpoints", help="Checkpoint steps: log, log:K, every:N, step numbers, none (comma-separated; default log,every:1000; --default: log,every:100). The final step is always saved.")
    seed: int | None = opt(None, "--seed", help="Seed for the initialisation and the RNG (default 0).")
    lr: float | None = opt(None, "--lr", help="Peak learning rate (default 1e-3); linear warm-up, then constant for a fresh model (the default recipe), cosine decay to 10% from --model weights.")
    warmup_steps: int | None = opt(None, "--warmup-steps", help="Linear warm-up steps (default 100).")
    start_step: int | None = opt(None, "--start-step", help="Data/schedule position of the first update (default: from --model).")
    heldout: str | None = opt(None, "--heldout", help="Held-out corpus for held-out loss and ICL.")
    threads: int | None = opt(None, "--threads", help="CPU threads (1 keeps runs bit-reproducible).")
    device: str | None = opt(None, "--device", help="cpu or cuda.")
    preset: str | None = opt(None, "--preset", help="A published architecture and its training settings for a fresh model: pythia-14m, pythia-31m, pythia-70m, pythia-160m, pythia-410m.")
    layers: int | None = opt(None, "--layers", help="Layers of a fresh default model (default 2).")
    hidden: int | None = opt(None, "--hidden", help="Hidden width of a fresh default model (default 64; the MLP is 4x).")
    heads: int | None = opt(None, "--attention-heads", deprecated=("--heads",), help="Attention heads of a fresh default model (default 4; must divide --hidden).")
    context: int | None = opt(None, "--context", help="Context of a fresh default model in tokens (default 64; corpus rows hold one more).")
    micro_batch: int | None = opt(None, "--micro-batch", help="Rows per forward/backward; gradients are accumulated over the step (default: the whole batch).")
    precision: str | None = opt(None, "--precision", help="Forward precision: bf16 (autocast, fp32 master weights) or fp32 (default: bf16 on cuda, fp32 on cpu).")
    out: Path | None = opt(None, "--out", help="Run folder (checkpoints, curves, summary).")
    resume: bool = opt(False, "--resume", help="Continue the run in --out from its latest checkpoint; with --model, continue that checkpoint's state into --out.")
    as_json: bool = opt(False, "--json", help="Print the run summary as JSON.")
    quiet: bool = opt(False, "--quiet", help=f"No progress: neither the bar (on a terminal) nor, off a terminal (a log, nohup, a scheduler), the heartbeat line on stderr every {DEFAULT_HEARTBEAT_S:g} s (step, loss, induction score, steps/s, ETA; the environment variable {HEARTBEAT_ENV} sets the seconds).")
    workspace: Path | None = workspace_opt()

    def validate(self) -> None:
        """The option combinations (the values themselves are checked by TrainSpec)."""
        if self.default and (self.config is not None or self.init_from is not None):
            raise CurateError(f"--default trains the default model from scratch; drop {flag(self, 'config')}/{flag(self, 'init_from')}")
        if not self.default and self.out is None:
            raise CurateError(f"{flag(self, 'out')} is required (or use --default for the reference run)")
        shape = [name for name in ARCHITECTURE_OPTIONS if getattr(self, name) is not None]
        for name in [*shape, "micro_batch", "epochs"]:
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise CurateError(f"{flag(self, name)} must be at least 1 (got {getattr(self, name)})")
        if (shape or self.preset) and (self.default or self.config is not None or self.init_from is not None):
            given = ", ".join(flag(self, n) for n in (*shape, *(["preset"] if self.preset else [])))
            raise CurateError(f"{given} shape a fresh model: drop --default/{flag(self, 'config')}/{flag(self, 'init_from')}")
        if shape and self.preset:
            raise CurateError(f"{flag(self, 'preset')} fixes the architecture: drop {', '.join(flag(self, n) for n in shape)}")
        if self.preset is not None:
            with named(self, "preset"):
                preset_for(self.preset)
        if self.hidden is not None and self.heads is not None and self.hidden % self.heads:
            raise CurateError(f"{flag(self, 'hidden')} {self.hidden} is not a multiple of {flag(self, 'heads')} {self.heads}")
        with named(self, "precision"):
            autocast_of(self.precision)

    def architecture(self) -> dict | None:
        """GPTNeoXConfig fields from --layers/--hidden/--heads/--context (None when none is given)."""
        fields = {ARCHITECTURE_OPTIONS[name]: getattr(self, name) for name in ARCHITECTURE_OPTIONS if getattr(self, name) is not None}
        if "hidden_size" in fields:
            fields["intermediate_size"] = 4 * fields["hidden_size"]
        return fields or None

    def shape_fields(self) -> dict:
        """TrainSpec fields for the model's shape and numerics: a preset, the architecture flags, precision."""
        out: dict = {}
        if self.preset is not None:
            preset = preset_for(self.preset)
            out.update(preset.training.spec_fields())
            out["model_config"] = preset.architecture.config_fields()
        if self.architecture():
            out["architecture"] = self.architecture()
        if self.precision is not None:
            out["autocast"] = autocast_of(self.precision)
        return out

    def spec_fields(self) -> dict:
        """The given options that are TrainSpec fields of the same name."""
        from curate.training.spec import TrainSpec

        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name in TrainSpec.__dataclass_fields__ and getattr(self, f.name) is not None}


ARCHITECTURE_OPTIONS = {"layers": "num_hidden_layers", "hidden": "hidden_size", "heads": "num_attention_heads",
                        "context": "max_position_embeddings"}
"""The architecture flags of `curate train` -> the GPTNeoXConfig field each sets."""


def train_command(options: TrainOptions) -> None:
    """Train GPT-NeoX on a corpus in its exact row order, evaluating circuits and saving checkpoints."""
    o = options
    # the trainer imports torch and transformers (seconds, measured): only when a command trains
    from curate.training.presets import weights_training_fields
    from curate.training.recipes import recipe_fields
    from curate.training.reference import train_reference_run
    from curate.training.spec import TrainSpec, saved_spec, steps_of_epochs
    from curate.training.trainer import train

    given = o.spec_fields()
    ws = resolve_workspace(o.workspace)
    if o.default:
        # `curate train --default` is idempotent: it continues or confirms the reference run (which it locks)
        result = train_reference_run(ws, progress=not o.quiet, overrides=given, out=o.out)
        with hold(result.out_dir, what="training run"):
            save_config(result.out_dir, "train", options, resolved={"out": result.out_dir})
    else:
        assert o.out is not None  # validate() requires it
        start = recipe_fields("fresh") if o.init_from is None else weights_training_fields(o.init_from)
        fields = {**start, **o.shape_fields(), **given}  # a Pythia checkpoint continues with Pythia's own settings
        if o.config is not None:
            from curate.training.models import load_config_file

            fields["model_config"] = load_config_file(o.config)
        if o.resume and o.init_from is not None:
            fields["init_state"] = True
        spec = saved_spec(o.out, fields) if o.resume and o.init_from is None else None
        if spec is None:
            if fields.get("corpus") is None and fields.get("plan") is None:
                raise CurateError(f"{flag(o, 'corpus')} is required (or a {flag(o, 'plan')} that names a corpus, or --default)")
            spec = TrainSpec(**fields)
            if o.epochs is not None and o.steps is None:
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
