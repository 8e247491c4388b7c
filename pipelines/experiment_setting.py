"""The experiment's options (the command's flags), their checks, and the resolved setting: which baseline
the arms copy (the reference run, an own baseline, a run folder or an external model), seeds, arms,
threshold, and the identity a rerun into the same folder must match."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from curate.attribution.circuits import get_circuit
from curate.corpus import open_corpus
from curate.errors import CurateError
from curate.paths import resolve_stored
from curate.pipelines.arms import arm_defs, method_arm_names, parse_arms
from curate.pipelines.experiment_options import (DEFAULT_SCORE_CHECKPOINTS, DEFAULT_SEEDS, QUICK_BASELINE_STEPS, QUICK_EVAL_EVERY,
                                                ExperimentOptions, check_options, chosen_methods)
from curate.pipelines.methods import PRIMARY
from curate.pipelines.score_request import parse_window
from curate.training.curves import SUMMARY_JSON
from curate.training.models import CHECKPOINTS_DIR, HUB_NAME_RE, RUN_FILE, load_config_file
from curate.training.plan import corpus_key
from curate.training.recipes import autocast_of, recipe_fields
from curate.training.spec import TrainSpec
from curate.workspace import default_corpus_dir, experiments_dir, resolve_workspace

Log = Callable[[str], None]
EXPERIMENT_FILE = "experiment.json"
ARM_EVAL_EVERY = 25
"""The arms evaluate at least this often (the baseline's interval when finer), so the emergence step of every arm
is read at 25-step resolution inside the window where the baseline forms (the trainer has one interval per run)."""
QUICK_CANNOT_FORM = (
    "--quick checks that the pipeline runs end to end; it cannot test the effects: its 300-step baseline at half the "
    "batch is far short of where the default model's induction head forms (about step 1,700 at batch 32 in the "
    "reference run; measured: 800 steps at batch 16 and lr 3e-3 reach a best induction score of 0.07 < 0.3), and it "
    "has one seed. Its verdicts are 'not testable'. A short run in which the head does form: "
    "`curate experiment --window 1000: --seeds 1` (the reference run, arms retrained from its step 1,000); the effects need the full experiment (3 seeds)")


# --------------------------------------------------------------------------- the resolved setting


@dataclass
class Baseline:
    """Where the arms start from and what they copy."""
    mode: str  # reference / own / run / external
    corpus: str  # absolute path of the training corpus
    batch_size: int
    run_dir: Path | None = None  # curate run folder (reference / own / run)
    own_spec: object | None = None  # TrainSpec of an own baseline still to train
    model: str | None = None  # external model (hub name or HF folder)
    config_file: str | None = None  # model config JSON of an own baseline

    def checkpoint(self, revision: str) -> tuple[str, str | None]:
        """(model, revision) of an external model's checkpoint `stepK`: a local folder's `stepK/` subfolder
        (an HF folder, no revision), or the hub name with the revision."""
        assert self.model is not None
        local = Path(self.model)
        if local.is_dir():
            return str(local / revision), None
        return self.model, revision

    def run_json(self) -> dict:
        assert self.run_dir is not None
        return json.loads((self.run_dir / RUN_FILE).read_text())


@dataclass
class Setting:
    """Everything resolved from the options before the long work starts."""
    opts: ExperimentOptions
    circuit: object  # attribution.circuits.Circuit
    ws: Path
    out: Path
    baseline: Baseline
    seeds: list[int]
    arms: list[str]
    threshold: float
    eval_every: int
    identity: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    methods: list[str] = field(default_factory=lambda: ["mda"])  # scoring methods compared (MDA first)

    @property
    def arm_eval_every(self) -> int:
        """The arms' evaluation interval: the baseline's, at most `ARM_EVAL_EVERY`."""
        return min(self.eval_every, ARM_EVAL_EVERY) if self.eval_every > 0 else ARM_EVAL_EVERY

    @property
    def score_checkpoints(self) -> str | None:
        """The MDA scores' `--checkpoints`: as given, else `DEFAULT_SCORE_CHECKPOINTS` on a curate run (it has the
        saved checkpoints `auto` picks from), else one checkpoint (an external model: list them as stepK,stepK)."""
        if self.opts.checkpoints is not None:
            return self.opts.checkpoints
        return None if self.baseline.mode == "external" else DEFAULT_SCORE_CHECKPOINTS


def abs_path(path: str | Path) -> str:
    return str(Path(path).expanduser().resolve())


def run_numerics(opts: ExperimentOptions) -> dict:
    """The TrainSpec fields `--micro-batch` / `--precision` set in every run the experiment trains (only those given)."""
    out: dict = {}
    if opts.micro_batch is not None:
        out["micro_batch"] = opts.micro_batch
    if opts.precision is not None:
        out["autocast"] = autocast_of(opts.precision)
    return out


def _baseline_options(opts: ExperimentOptions) -> dict:
    """The options that shape a baseline trained here (meaningless with a finished run as the baseline), by field name."""
    names = ("baseline_steps", "batch_size", "eval_every", "lr", "warmup_steps", "schedule_steps")
    return {name: getattr(opts, name) for name in names}


def _own_mode(opts: ExperimentOptions) -> bool:
    given = (opts.corpus, opts.config, *_baseline_options(opts).values())
    return opts.quick or opts.scales or any(v is not None for v in given)


def _is_run_folder(spec: str) -> bool:
    p = Path(spec).expanduser()
    return p.is_dir() and ((p / RUN_FILE).is_file() or (p / CHECKPOINTS_DIR).is_dir())


def default_out(opts: ExperimentOptions, ws: Path) -> Path:
    name = get_circuit(opts.circuit).name + ("-quick" if opts.quick else "") + ("-scales" if opts.scales else "")
    return experiments_dir(ws) / name


def resolve_setting(opts: ExperimentOptions, log: Log) -> Setting:
    """Resolve the baseline, seeds, arms and thresholds; opens files but writes nothing."""
    check_options(opts)
    circuit = get_circuit(opts.circuit)
    ws = resolve_workspace(opts.workspace)
    out = Path(abs_path(opts.out if opts.out is not None else default_out(opts, ws)))
    if out.exists() and not out.is_dir():
        raise CurateError(f"{out}: exists and is not a folder")
    count = opts.seeds if opts.seeds is not None else (1 if opts.quick else DEFAULT_SEEDS)
    seeds = list(range(opts.first_seed, opts.first_seed + count))

    arms = parse_arms(opts.arms)
    methods = chosen_methods(opts)
    if opts.arms is None:
        arms = parse_arms(",".join(arms + method_arm_names(methods)))
    defs = arm_defs()
    methods = [m for m in methods if m == PRIMARY or any(defs[a].method == m for a in arms)]
    methods += [defs[a].method for a in arms if defs[a].method not in methods]  # an arm named in --arms brings its method
    threshold = float(opts.threshold if opts.threshold is not None else circuit.default_threshold)
    notes: list[str] = []
    if opts.quick and opts.baseline_steps is None:
        notes.append(QUICK_CANNOT_FORM)

    if opts.model is not None and _is_run_folder(opts.model):
        run_dir = Path(abs_path(opts.model))

        if not (run_dir / RUN_FILE).is_file() or not (run_dir / SUMMARY_JSON).is_file():
            raise CurateError(f"{run_dir}: not a finished training run (no {RUN_FILE} / {SUMMARY_JSON})")
        raw = json.loads((run_dir / RUN_FILE).read_text())
        if raw.get("spec", {}).get("plan") is not None:
            raise CurateError(f"{run_dir}: was trained under a plan; the baseline must train on the corpus in its own order")
        if opts.corpus is not None:
            raise CurateError(f"{run_dir}: the run records its corpus; give no other corpus")
        for name, value in _baseline_options(opts).items():
            if value is not None:
                raise CurateError(f"{run_dir}: the arms copy the settings of this run; give no {name.replace('_', ' ')}")
        corpus = abs_path(resolve_stored(raw["spec"].get("corpus") or raw["base_corpus"], run_dir,
                                         raw.get("absolute", {}).get("corpus") if raw["spec"].get("corpus") else None))
        baseline = Baseline("run", corpus, int(raw["batch_size"]), run_dir=run_dir)
        eval_every = int(raw["spec"].get("eval_every", 100))
    elif opts.model is not None:
        if opts.corpus is None:
            raise CurateError(f"{opts.model}: an external model needs a corpus (the rows it was trained on)")
        if opts.window is None:
            raise CurateError(f"{opts.model}: an external model needs a window START:END (training steps)")

        start, end = parse_window(opts.window)
        if end is None:
            raise CurateError(f"window {opts.window}: give the window's end step with an external model")
        if opts.baseline_steps is not None:
            raise CurateError(f"{opts.model}: an external model is its own baseline (nothing is trained before the arms): give no baseline steps")
        if opts.ensemble is not None:
            raise CurateError(f"{opts.model}: an external model has no seeds of its own to ensemble: --ensemble averages curate "
                              f"training runs (give --model a run folder)")

        local = Path(opts.model).expanduser()
        if not local.exists() and (opts.model.startswith((".", "/", "~")) or not HUB_NAME_RE.match(opts.model)):
            raise CurateError(f"{opts.model}: model folder not found (and not a hub name like EleutherAI/pythia-70m)")
        corpus_obj = open_corpus(opts.corpus)
        batch = opts.batch_size or corpus_obj.batch_size
        if local.exists():
            revision = opts.revision or f"step{end}"
            for step_name in (f"step{start or 0}", revision):
                if not (local / step_name / "config.json").is_file():
                    raise CurateError(f"{local}: no {step_name}/ checkpoint folder inside (an external model folder "
                                      "holds one stepK/ folder per checkpoint, like the hub's revisions)")
        baseline = Baseline("external", abs_path(opts.corpus), int(batch), model=opts.model if not local.exists() else abs_path(local))
        eval_every = opts.eval_every or 100
    elif _own_mode(opts):
        if opts.corpus is not None:
            corpus_path = abs_path(opts.corpus)
            corpus_obj = open_corpus(corpus_path)
        else:
            corpus_path = abs_path(default_corpus_dir(ws))
            corpus_obj = open_corpus(corpus_path) if (Path(corpus_path) / "corpus.json").is_file() else None
        fields_ = recipe_fields("reference")  # the arms' own baseline trains like the reference run
        batch = opts.batch_size or (corpus_obj.batch_size if corpus_obj is not None else int(fields_.get("batch_size", 32)))
        if opts.quick and opts.batch_size is None:
            batch = max(1, batch // 2)
        eval_every = opts.eval_every or (QUICK_EVAL_EVERY if opts.quick else int(fields_.get("eval_every", 100)))
        steps = opts.baseline_steps or (QUICK_BASELINE_STEPS if opts.quick else int(fields_.get("steps", 3000)))
        fields_.update(corpus=corpus_path, steps=steps, batch_size=batch, eval_every=eval_every,
                       checkpoints=f"log,every:{eval_every}", threads=1, device=opts.device, **run_numerics(opts))
        if opts.lr is not None:
            fields_["lr"] = opts.lr
        if opts.warmup_steps is not None:
            fields_["warmup_steps"] = opts.warmup_steps
        if opts.schedule_steps is not None:
            fields_["schedule_steps"] = opts.schedule_steps
        if opts.config is not None:
            fields_["model_config"] = load_config_file(opts.config)
        spec = TrainSpec(**fields_)
        baseline = Baseline("own", corpus_path, int(batch), run_dir=out / "baseline", own_spec=spec,
                            config_file=abs_path(opts.config) if opts.config else None)
    else:
        baseline = Baseline("reference", abs_path(default_corpus_dir(ws)), 0, run_dir=None)
        eval_every = 0  # known once the reference run is there
    setting = Setting(opts, circuit, ws, out, baseline, seeds, arms, threshold, eval_every, notes=notes, methods=methods)
    setting.identity = identity_of(setting)
    return setting


def identity_of(s: Setting) -> dict:
    """What decides the experiment's runs (not which arms/seeds run, nor how many workers)."""
    o = s.opts
    scoring = {}  # the MDA scores' trajectory options, recorded when scoring uses them (one-checkpoint folders keep their identity)
    if s.score_checkpoints is not None:
        scoring.update(score_checkpoints=s.score_checkpoints, score_aggregate=o.aggregate)
    if o.ensemble is not None:  # recorded when given (experiments without it keep their identity)
        scoring.update(score_ensemble=o.ensemble)
    if o.token_aggregate != "sum":  # recorded when not the plain sum (experiments run before keep their identity)
        scoring["score_token_aggregate"] = o.token_aggregate
    numerics = {name: getattr(o, name) for name in ("micro_batch", "precision") if getattr(o, name) is not None}  # recorded when given
    own = s.baseline.own_spec.to_json() if s.baseline.own_spec is not None else None  # type: ignore[attr-defined]
    if own is not None:
        own["corpus"] = corpus_key(own.get("corpus"))
    return {
        "circuit": s.circuit.name,  # type: ignore[attr-defined]
        "score_mode": o.score_mode or s.circuit.default_mode,  # type: ignore[attr-defined]  (the head subspace the scores use)
        "mode": s.baseline.mode,
        "corpus": corpus_key(s.baseline.corpus),
        "model": s.baseline.model,
        "baseline_run": _run_identity(s.baseline.run_dir, s.out) if s.baseline.run_dir is not None else None,
        "own_baseline": own,
        "revision": o.revision,
        "window": o.window,
        "steps": o.steps,
        "threshold": s.threshold,
        "heads": o.heads,
        "k": o.k,
        "augment": o.augment,
        "batch_size": o.batch_size,
        "eval_every": o.eval_every,
        "arm_eval_every": ARM_EVAL_EVERY,
        "lr": o.lr,
        "warmup_steps": o.warmup_steps,
        "schedule_steps": o.schedule_steps,
        "arm_checkpoints": o.arm_checkpoints,
        "motif_rows": o.motif_rows,
        "fit_rows": o.fit_rows,
        "device": o.device,
        **scoring,
        **numerics,
    }


def _run_identity(run_dir: Path, out: Path) -> str:
    """A baseline run named so a moved workspace keeps it: inside the experiment by its relative path, else by
    its recorded spec hash (by its path when it has none)."""
    run_dir = Path(run_dir)
    if run_dir.resolve().is_relative_to(Path(out).resolve()):
        return str(run_dir.resolve().relative_to(Path(out).resolve()))
    try:
        return "spec:" + str(json.loads((run_dir / RUN_FILE).read_text())["spec_hash"])
    except (OSError, KeyError, json.JSONDecodeError):
        return str(run_dir.resolve())


def check_identity(s: Setting) -> None:
    """An experiment folder holding an experiment of other settings is an error (nothing is mixed)."""
    path = s.out / EXPERIMENT_FILE
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text()).get("identity", {})
    except json.JSONDecodeError:
        raise CurateError(f"{path}: not valid JSON; remove it or use another output folder") from None
    new = json.loads(json.dumps(s.identity, default=str))
    if old != new:
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise CurateError(f"{s.out}: holds an experiment with other settings (changed: {', '.join(changed)}); "
                          "use another output folder")
