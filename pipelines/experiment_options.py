"""The `curate experiment` options (flags and help in the field metadata) and their checks (no file is read).

Kept free of torch and the model code so that the command line can be built from it quickly."""
from __future__ import annotations

import math
import shlex
from dataclasses import dataclass
from pathlib import Path

from curate.amounts import check_amount
from curate.errors import CurateError
from curate.training.recipes import autocast_of
from curate.options import check_positive, cli_fields, flag as flag_of, named, opt, option_error, workspace_opt
from curate.pipelines.methods import PRIMARY, compared_methods, method_names
from curate.attribution.token_aggregation import TOKEN_AGGREGATES
from curate.pipelines.score_request import AGGREGATES, parse_checkpoints, parse_ensemble, parse_window
from curate.training.schedule import parse_checkpoint_steps

DEFAULT_ARM_CHECKPOINTS = "every:1000"
DEFAULT_SEEDS = 3
QUICK_BASELINE_STEPS = 300
QUICK_EVAL_EVERY = 25
DEFAULT_SCORE_CHECKPOINTS = "auto"
"""The MDA scores of an experiment on a curate run: trajectory scores summed over up to 4 checkpoints of the window,
the variant the development-seed study (seeds 100-102, bench/RESULTS.md) chose over one checkpoint, segment and qk."""


@dataclass
class ExperimentOptions:
    """The command's flags (None = the default, resolved in `resolve_setting`)."""

    circuit: str = opt("induction", "--circuit", help="Circuit to validate: induction or previous-token.")
    quick: bool = opt(False, "--quick", help="Reduced run for smoke tests: one seed, a short own baseline, all arms.")
    k: str = opt("10%", "--remove", deprecated=("--k",), help="Rows removed: a share of the window (10%), a fraction (0.1) or a count.")
    augment: str = opt("2%", "--augment", help="Rows added: a share of the window (2%), a fraction or a count.")
    seeds: int | None = opt(None, "--seeds", help=f"Seeds per arm (default {DEFAULT_SEEDS}; --quick: 1).", show_default=False)
    first_seed: int = opt(0, "--first-seed", help="The seeds are FIRST..FIRST+N-1 (e.g. 100 with --seeds 3 for development seeds 100-102, kept apart from the reported seeds 0-5). Seed 0 is the scored run's own initialisation.")
    arms: str | None = opt(None, "--arms", help="Comma-separated arms to run (default: all; the baseline always runs).", show_default=False)
    rerun: str | None = opt(None, "--rerun", help="Discard these arms' runs and mixes and train them again.", show_default=False)
    window: str | None = opt(None, "--window", help="Attribution window START:END in steps (default: 0 to the first checkpoint after formation).", show_default=False)
    steps: int | None = opt(None, "--steps", help="Arms train until this step (default: window end + the window's length, at most the baseline's length).", show_default=False)
    threshold: float | None = opt(None, "--threshold", help="Emergence threshold of the circuit score (default: the circuit's, 0.3).", show_default=False)
    heads: str = opt("auto", "--heads", help="Heads to attribute: auto (localize) or L.H,L.H.")
    corpus: str | None = opt(None, "--corpus", help="Training corpus (default: the embedded default corpus).", show_default=False)
    model: str | None = opt(None, "--model", help="A finished curate run folder, or an external model (hub name / folder of stepK/) with --corpus and --window.", show_default=False)
    revision: str | None = opt(None, "--revision", help="Checkpoint stepK to score at (default: the window's end).", show_default=False)
    config: str | None = opt(None, "--config", help="GPT-NeoX config JSON of an own baseline model (default: the embedded default model).", show_default=False)
    baseline_steps: int | None = opt(None, "--baseline-steps", help=f"Length of an own baseline run (default 3000; --quick: {QUICK_BASELINE_STEPS}).", show_default=False)
    batch_size: int | None = opt(None, "--batch-size", help="Rows per step (default: the corpus's; --quick: half of it).", show_default=False)
    eval_every: int | None = opt(None, "--eval-every", help=f"Evaluate every K steps (default 100; --quick: {QUICK_EVAL_EVERY}).", show_default=False)
    lr: float | None = opt(None, "--lr", help="Peak learning rate (default 1e-3; an external Pythia model: its published one, training/presets.py).", show_default=False)
    warmup_steps: int | None = opt(None, "--warmup-steps", help="Warm-up steps (default 100; an external Pythia model: its published 1,430).", show_default=False)
    schedule_steps: int | None = opt(None, "--schedule-steps", help="Cosine horizon (default: the baseline's; an external Pythia model: its published 143,000 steps; another external model: the arms' length).", show_default=False)
    arm_checkpoints: str = opt(DEFAULT_ARM_CHECKPOINTS, "--arm-checkpoints", help="Checkpoints the arm runs keep (resume points); the final one always.")
    methods: str | None = opt(None, "--methods", help=f"Scoring methods compared by remove-top / augment-top arms: {PRIMARY} plus any of {', '.join(method_names()[1:])} (default: {','.join(compared_methods())}; --quick: {PRIMARY}). Every method scores the same window and heads.", show_default=False)
    score_mode: str | None = opt(None, "--mode", help="Head subspace of the MDA scores: qk or qkvo (default: the circuit's).", show_default=False)
    checkpoints: str | None = opt(None, "--checkpoints", help="MDA trajectory scores: auto, transition[:N] or stepK,stepK (curate score --checkpoints; default: auto on a curate run, one checkpoint for an external model; one checkpoint: --checkpoints stepEND).", show_default=False)
    aggregate: str = opt("sum", "--aggregate", help="How --checkpoints combine: sum, lr-sum or segment (curate score --aggregate).")
    token_aggregate: str = opt("sum", "--token-aggregate", help="How a row's per-position contributions form its MDA score: sum or positive (curate score --token-aggregate).")
    ensemble: str | None = opt(None, "--ensemble", help="MDA scores of an ensemble (curate score --ensemble): K (the reference run and reference runs of seeds 1..K-1, trained if missing; the reference baseline only) or the other members' run folders RUN,RUN (the baseline run is the first member); each member's scores divided by their sd over the window, averaged.", show_default=False)
    motif_rows: int = opt(2000, "--motif-rows", help="Top rows mined for motifs (synthetic) and queried for neighbours.")
    fit_rows: int | None = opt(None, "--fit-rows", help="Rows for the EK-FAC fit (default: curate score's, 8192).", show_default=False)
    workers: int | None = opt(None, "--workers", help="Parallel runs (Ray workers, one torch thread each; default: one per CPU).", show_default=False)
    device: str = opt("cpu", "--device", help="cpu or cuda.")
    micro_batch: int | None = opt(None, "--micro-batch", help="Rows per forward/backward in every run the experiment trains (the arms, an own baseline); gradients are accumulated over the step, so a step still sees the whole batch (default: the whole batch at once).", show_default=False)
    precision: str | None = opt(None, "--precision", help="Forward precision of every run the experiment trains: bf16 (autocast, fp32 master weights) or fp32 (default: bf16 on cuda, fp32 on cpu).", show_default=False)
    out: Path | None = opt(None, "--out", help="Experiment folder (default: WORKSPACE/experiments/CIRCUIT[-quick][-scales]).", show_default=False)
    workspace: Path | None = workspace_opt()
    progress: bool = True
    scales: bool = opt(False, "--scales", help="Baseline + augmentation arms on several model sizes (--sizes), acceleration per size.")
    sizes: str = opt("64x2,96x2,128x3", "--sizes", help="Model sizes for --scales: HIDDENxLAYERS list (at least three).")


    def validate(self) -> None:
        check_options(self)

    def flags(self) -> list[str]:
        """The `curate experiment` flags that reproduce these options (defaults left out, --out always)."""
        defaults = ExperimentOptions()
        out: list[str] = []
        for f in cli_fields(ExperimentOptions):
            name, value = f.name, getattr(self, f.name)
            if name == "rerun" or value == getattr(defaults, name):
                continue
            flag = flag_of(self, name)
            if isinstance(value, bool):
                out.append(flag)
            else:
                if name in ("out", "workspace", "config") or (name in ("corpus", "model") and Path(str(value)).exists()):
                    value = str(Path(value).expanduser().resolve())
                out += [flag, str(value)]
        if not self.progress:
            out.append("--quiet")
        return out


def command_line(opts: ExperimentOptions, extra: list[str] | None = None) -> str:
    return shlex.join(["curate", "experiment", *opts.flags(), *(extra or [])])


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """`64x2,96x2,128x3` -> [(hidden, layers), ...]; at least three distinct sizes."""
    sizes: list[tuple[int, int]] = []
    for part in str(text).split(","):
        item = part.strip().lower()
        h, sep, l = item.partition("x")
        if not (sep and h.isdigit() and l.isdigit() and int(h) > 0 and int(l) > 0):
            raise CurateError(f"{text!r}: {part.strip()!r} is not HIDDENxLAYERS (e.g. 64x2)")
        if (int(h), int(l)) in sizes:
            raise CurateError(f"{text!r}: {item} is listed twice")
        sizes.append((int(h), int(l)))
    if len(sizes) < 3:
        raise CurateError(f"{text!r}: the model sizes comparison needs at least three model sizes")
    return sizes


def parse_methods(text: str) -> list[str]:
    """`mda,gradient-dot` -> the methods in canonical order, the primary (MDA) always first (its scores choose the
    window's heads); any method of the registry (`pipelines.methods`), the default being its compared ones."""
    names = [t.strip() for t in str(text).split(",") if t.strip()]
    known = method_names()
    for n in names:
        if n not in known:
            raise CurateError(f"{text!r}: unknown method {n!r} (known: {', '.join(known)})")
    return [m for m in known if m in names or m == PRIMARY]


def chosen_methods(opts: ExperimentOptions) -> list[str]:
    """The `--methods` given, else every compared method (--quick: the primary one alone)."""
    if opts.methods is not None:
        return parse_methods(opts.methods)
    return parse_methods(PRIMARY if opts.quick else ",".join(compared_methods()))


def check_options(opts: ExperimentOptions) -> None:
    """Every check that needs no file: one CurateError line naming the flag, before anything is read or written."""
    # torch-heavy modules (circuits, heads, arms: about 4 s) are imported here, off the command line's start
    from curate.attribution.circuits import get_circuit
    from curate.attribution.heads import HeadRef, check_mode
    from curate.pipelines.arms import method_arm_names, parse_arms

    f = lambda name: flag_of(opts, name)  # noqa: E731
    get_circuit(opts.circuit)
    check_amount(opts.k, f("k"))
    check_amount(opts.augment, f("augment"))
    with named(opts, "methods"):
        methods = chosen_methods(opts)
    with named(opts, "arms"):
        arms = parse_arms(opts.arms)
    if opts.arms is None:
        arms += method_arm_names(methods)
    if opts.score_mode is not None:
        with named(opts, "score_mode"):
            check_mode(opts.score_mode)
    if opts.checkpoints is not None:
        with named(opts, "checkpoints"):
            parse_checkpoints(opts.checkpoints)
    if opts.aggregate not in AGGREGATES:
        raise option_error(opts, "aggregate", f"{opts.aggregate!r}: expected one of {', '.join(AGGREGATES)}")
    if opts.ensemble is not None:  # K, or the members besides the baseline run (the whole list is checked with it)
        if opts.ensemble.strip().isdigit():
            with named(opts, "ensemble"):
                parse_ensemble(opts.ensemble)
            if opts.model is not None or opts.corpus is not None:
                raise option_error(opts, "ensemble", f"{opts.ensemble} takes the seeded reference runs: it needs the reference "
                                   f"baseline (no {f('model')} or {f('corpus')}); give the other members' run folders RUN,RUN")
        elif any(not part.strip() for part in opts.ensemble.split(",")):
            raise option_error(opts, "ensemble", f"{opts.ensemble!r}: expected K or the other members' run folders RUN,RUN")
    if opts.token_aggregate not in TOKEN_AGGREGATES:
        raise option_error(opts, "token_aggregate", f"{opts.token_aggregate!r}: expected one of {', '.join(TOKEN_AGGREGATES)}")
    if opts.rerun is not None:
        with named(opts, "rerun"):
            rerun = parse_arms(opts.rerun, include_baseline=False)
        for arm in rerun:
            if arm not in arms:
                raise option_error(opts, "rerun", f"{arm}: not one of the arms run ({', '.join(arms)})")
    check_positive(opts, "seeds", "steps", "baseline_steps", "batch_size", "eval_every", "workers", "fit_rows",
                   "schedule_steps", "motif_rows", "micro_batch")
    with named(opts, "precision"):
        autocast_of(opts.precision)
    if opts.first_seed < 0:
        raise option_error(opts, "first_seed", f"must be >= 0 (got {opts.first_seed})")
    if opts.warmup_steps is not None and opts.warmup_steps < 0:
        raise option_error(opts, "warmup_steps", f"must be >= 0 (got {opts.warmup_steps})")
    if opts.lr is not None and not (opts.lr > 0 and math.isfinite(opts.lr)):
        raise option_error(opts, "lr", f"must be positive (got {opts.lr})")
    if opts.threshold is not None and not 0.0 < opts.threshold <= 1.0:
        raise option_error(opts, "threshold", f"must be in (0, 1] (got {opts.threshold})")
    if opts.window is not None:
        with named(opts, "window"):
            parse_window(opts.window)
    if str(opts.heads).strip().lower() != "auto":
        with named(opts, "heads"):
            HeadRef.parse_list(opts.heads)
    if opts.device not in ("cpu", "cuda"):
        raise option_error(opts, "device", f"{opts.device!r}: expected cpu or cuda")
    parse_checkpoint_steps(opts.arm_checkpoints, 10, 0)
    if opts.revision is not None and opts.model is None:
        raise CurateError(f"{f('revision')} names a checkpoint of {f('model')}: give {f('model')} too")
    if opts.config is not None and opts.model is not None:
        raise CurateError(f"{f('config')} builds a fresh baseline model; {f('model')} starts from existing weights: give one of them")
    if opts.scales:
        with named(opts, "sizes"):
            parse_sizes(opts.sizes)
        if opts.model is not None:
            raise CurateError(f"{f('scales')} trains its own baseline per model size: drop {f('model')}")
        if opts.window is not None:
            raise CurateError(f"{f('scales')} finds each size's window from its own baseline: drop {f('window')}")
