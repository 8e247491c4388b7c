"""What decides a training run (`TrainSpec`): its checks, how `run.json` stores it (paths relative to the run
folder) and reads it back, its plan, and its hash (`spec_hash`, with the legacy hash of runs recorded before
content keys)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from curate.corpus import open_corpus
from curate.errors import CurateError
from curate.paths import portable, resolve_stored
from curate.training.models import RUN_FILE
from curate.training.plan import TrainingPlan, corpus_key, epoch_steps, load_plan, plan_from_json, with_epochs
from curate.training.recipes import CHECKPOINT_RECIPE
from curate.training.schedule import DEFAULT_CHECKPOINTS, lr_at


@dataclass
class TrainSpec:
    """Everything that decides a training trajectory (and its evaluation)."""

    corpus: str | None = None  # training corpus; a plan that names a corpus replaces it as the row stream
    model_config: dict | None = None  # GPTNeoXConfig fields (or a GPTNeoXConfig); None and no init_from = the default model
    init_from: str | None = None  # HF folder, run folder (+ revision stepK), checkpoint folder or hub name
    revision: str | None = None
    init_state: bool = False  # also take optimizer, RNG and step from init_from's trainer_state.pt (branch a run)
    plan: str | dict | None = None  # plan JSON path, a corpus path, or a plan's JSON object (paths relative to the cwd); None = baseline
    steps: int = 1000  # train until this step (a checkpoint stepK has seen batches 0..K-1)
    start_step: int | None = None  # data/schedule position of the first update (None: from init_from, else 0)
    batch_size: int | None = None  # None = the corpus's batch size
    # the optimizer and schedule default to `recipes.CHECKPOINT_RECIPE` (`recipes.recipe_fields` gives each case's)
    lr: float = CHECKPOINT_RECIPE.lr
    min_lr_ratio: float = CHECKPOINT_RECIPE.min_lr_ratio
    warmup_steps: int = CHECKPOINT_RECIPE.warmup_steps
    schedule_steps: int | None = None  # cosine horizon (None = steps)
    weight_decay: float = CHECKPOINT_RECIPE.weight_decay
    beta1: float = CHECKPOINT_RECIPE.beta1
    beta2: float = CHECKPOINT_RECIPE.beta2
    eps: float = CHECKPOINT_RECIPE.eps
    grad_clip: float = CHECKPOINT_RECIPE.grad_clip
    seed: int = 0
    eval_every: int = 100
    eval_probes: int = 32
    probe_half_len: int | None = None  # None = min(32, context // 2)
    probe_seed: int = 0
    heldout: str | None = None  # held-out corpus (None: the training corpus's heldout_start rows, else its unused tail)
    heldout_rows: int = 64
    induction_threshold: float = 0.3
    prev_token_threshold: float = 0.3
    checkpoints: str = DEFAULT_CHECKPOINTS
    threads: int = 1
    device: str = "cpu"
    architecture: dict | None = None  # GPTNeoXConfig fields that replace the default model's (layers, width, heads, context)
    micro_batch: int | None = None  # rows per forward/backward, gradients accumulated over the step (None: the whole batch)
    autocast: bool | None = None  # bf16 autocast of the forward on CUDA, fp32 master weights (None: on for cuda, off for cpu)
    epochs: int | None = None  # passes over the rows, each after the first reshuffled with `seed` (None: the plan's, else 1)

    # fields added after runs were first recorded: left out of to_json (and so of spec hashes) while unset
    OPTIONAL_FIELDS = ("architecture", "micro_batch", "autocast", "epochs")

    def to_json(self) -> dict:
        body = asdict(self)
        for name in self.OPTIONAL_FIELDS:
            if body[name] is None:
                del body[name]
        return body

    @classmethod
    def from_json(cls, raw: dict) -> "TrainSpec":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise CurateError(f"run spec: unknown field {unknown[0]!r}")
        return cls(**raw)

    def use_autocast(self) -> bool:
        """bf16 autocast of the forward: as set, else on for cuda and off for cpu."""
        return self.autocast if self.autocast is not None else str(self.device).startswith("cuda")


def check_spec(spec: TrainSpec) -> None:
    """Each field in range and the fields that exclude each other not given together (one CurateError line)."""
    checks = [
        (spec.steps >= 1, f"steps must be at least 1 (got {spec.steps})"),
        (spec.batch_size is None or spec.batch_size >= 1, f"batch_size must be at least 1 (got {spec.batch_size})"),
        (spec.lr > 0, f"lr must be positive (got {spec.lr})"),
        (0 <= spec.min_lr_ratio <= 1, f"min_lr_ratio must be in [0, 1] (got {spec.min_lr_ratio})"),
        (spec.warmup_steps >= 0, f"warmup_steps must be >= 0 (got {spec.warmup_steps})"),
        (spec.eval_every >= 1, f"eval_every must be at least 1 (got {spec.eval_every})"),
        (spec.grad_clip >= 0, f"grad_clip must be >= 0 (got {spec.grad_clip})"),
        (spec.micro_batch is None or spec.micro_batch >= 1, f"micro_batch must be at least 1 (got {spec.micro_batch})"),
        (spec.threads >= 1, f"threads must be at least 1 (got {spec.threads})"),
        (spec.heldout_rows >= 0, f"heldout_rows must be >= 0 (got {spec.heldout_rows})"),
        (spec.epochs is None or spec.epochs >= 1, f"epochs must be at least 1 (got {spec.epochs})"),
        (not (spec.model_config is not None and spec.init_from is not None), "give a model config or a checkpoint to start from, not both"),
        (not (spec.architecture and (spec.model_config is not None or spec.init_from is not None)),
         "architecture fields shape a fresh default model: give them without a model config or a checkpoint"),
        (not (spec.init_state and spec.init_from is None), "init_state (continue a checkpoint's trainer state) needs a checkpoint to start from"),
    ]
    for ok, message in checks:
        if not ok:
            raise CurateError(message)


def run_lr(spec: TrainSpec, step: int) -> float:
    """The learning rate of update `step` (0-based) of a run with this spec: its warm-up and cosine schedule, over its
    horizon (`schedule_steps`, else `steps`). The one place a run's schedule is read; the trainer sets it, TracIn-style
    trajectory scores weight by it (`pipelines.score_trajectory`)."""
    return lr_at(step, spec.lr, spec.warmup_steps, spec.schedule_steps or spec.steps, spec.min_lr_ratio)


def checkpoint_lr(spec: TrainSpec, checkpoint: int) -> float:
    """The learning rate of the update that produced checkpoint stepK (update K - 1: the curves' `lr` at step K;
    step0, before any update: the first update's), i.e. the step size between the previous checkpoint and this one."""
    return run_lr(spec, max(int(checkpoint) - 1, 0))


# ---- the plan -------------------------------------------------------------------------------------
def resolved_plan(spec: TrainSpec) -> TrainingPlan:
    """The spec's plan, with the spec's epochs (shuffled with its seed) when it gives them."""
    if spec.plan is None:
        plan = TrainingPlan()
    elif isinstance(spec.plan, dict):
        plan = plan_from_json(spec.plan, Path.cwd(), "plan")
    else:
        plan = load_plan(spec.plan)
    return with_epochs(plan, spec.epochs, spec.seed)


def normalized(spec: TrainSpec, plan: TrainingPlan) -> TrainSpec:
    """The spec in plain JSON form: an in-memory plan becomes its resolved JSON, a config object a dict."""
    changes: dict = {}
    if isinstance(spec.plan, dict):
        changes["plan"] = plan.to_json()
    if spec.model_config is not None and not isinstance(spec.model_config, dict):
        if not hasattr(spec.model_config, "to_dict"):
            raise CurateError(f"model_config must be a dict or a GPTNeoXConfig, got {type(spec.model_config).__name__}")
        changes["model_config"] = spec.model_config.to_dict()
    return replace(spec, **changes) if changes else spec


def steps_of_epochs(spec: TrainSpec) -> int:
    """The whole steps of the spec's epochs over its corpus (or its plan's), at its batch size."""
    plan = resolved_plan(spec)
    path = plan.corpus or spec.corpus
    if path is None:
        raise CurateError("no corpus: give a training corpus (or a plan that names one)")
    base = open_corpus(path)
    steps = epoch_steps(plan, base, spec.batch_size or base.batch_size)
    if steps < 1:
        raise CurateError(f"{base.path}: {plan.epochs} epoch(s) of its rows do not fill one step")
    return steps


# ---- run.json: the spec stored with its paths relative to the run folder ---------------------------
PATH_FIELDS = ("corpus", "heldout", "plan")  # spec fields that name files: stored relative to the run folder


def absolute(path: str | None) -> str | None:
    """`path` expanded and resolved (None stays None)."""
    return None if path is None else str(Path(path).expanduser().resolve())


def saved_spec(out_dir: Path, fields: dict) -> TrainSpec | None:
    """The spec of the run already in `out_dir` (None when it holds none), checked against `fields`: a resumed
    run continues as it was, so each field given must equal the saved one (corpus, held-out and plan paths
    compared resolved; the saved ones are relative to the run folder, so a moved workspace resumes)."""
    run_file = Path(out_dir) / RUN_FILE
    if not run_file.is_file():
        return None
    raw = json.loads(run_file.read_text())
    saved = stored_spec(raw, Path(out_dir))
    for name, value in fields.items():
        current = getattr(saved, name)
        if name in PATH_FIELDS and isinstance(current, str) and isinstance(value, str):
            same = Path(current).expanduser().resolve() == Path(value).expanduser().resolve()
        else:
            same = current == value
        if not same:
            raise CurateError(f"{out_dir}: the run there has {name} = {current!r}, not {value!r}; resuming continues a run as it was")
    return saved


def stored_spec(raw: dict, run_dir: Path) -> TrainSpec:
    """The spec a run.json records, its paths read back from the run folder."""
    spec = TrainSpec.from_json(raw["spec"])
    recorded = raw.get("absolute", {})
    changes = {name: resolve_stored(getattr(spec, name), run_dir, recorded.get(name))
               for name in PATH_FIELDS if isinstance(getattr(spec, name), str)}
    return replace(spec, **changes)


def stored_json(spec: TrainSpec, run_dir: Path) -> tuple[dict, dict]:
    """(the spec as run.json stores it: paths relative to the run folder, the absolute paths they came from)."""
    body = spec.to_json()
    paths = {}
    for name in PATH_FIELDS:
        if isinstance(body.get(name), str):
            paths[name] = absolute(body[name])
            body[name] = portable(body[name], run_dir)
    return body, paths


# ---- the hash -------------------------------------------------------------------------------------
def spec_hash(spec: TrainSpec, plan: TrainingPlan, legacy: bool = False) -> str:
    """Short sha256 of the trajectory-defining spec: corpora by their content, the plan by its content, a
    checkpoint of a curate run by that run's spec hash (so equal runs hash equal wherever the workspace lies).
    `legacy`: the hash runs recorded before that (paths made absolute)."""
    body = spec.to_json()
    body["plan"] = plan.plan_hash(legacy=legacy)
    if legacy:
        body["corpus"] = absolute(spec.corpus)
        body["heldout"] = absolute(spec.heldout)
        if spec.init_from is not None and Path(spec.init_from).expanduser().exists():
            body["init_from"] = absolute(spec.init_from)
    else:
        body["corpus"] = corpus_key(spec.corpus)
        body["heldout"] = corpus_key(spec.heldout)
        if spec.init_from is not None:
            body["init_from"] = _init_identity(spec.init_from)
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _init_identity(init_from: str) -> object:
    """What a start checkpoint is: a curate run's checkpoint by the run's spec hash, other folders by path, hub names as given."""
    p = Path(init_from).expanduser()
    if not p.exists():
        return init_from
    run_dir = p if (p / RUN_FILE).is_file() else p.parent.parent
    if (run_dir / RUN_FILE).is_file():
        try:
            parent = json.loads((run_dir / RUN_FILE).read_text()).get("spec_hash")
        except (OSError, json.JSONDecodeError):
            parent = None
        if parent:
            return {"run": parent, "checkpoint": None if run_dir == p else p.name}
    return absolute(init_from)
