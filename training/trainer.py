"""The training loop: a GPT-NeoX model on a corpus in its exact row order (under a plan), with evaluation,
checkpoints and a bit-identical resume.

Step k trains on stream positions [k*B, (k+1)*B) (see `training.plan`); a checkpoint `stepK` holds the
model after K updates (Pythia's convention: it has trained on batches 0..K-1). Evaluation at step K
reads that same model. AdamW (no decay on biases and norms), linear warm-up + cosine decay to
`min_lr_ratio * lr`, gradient clipping; the seed fixes the initialisation and the torch RNG; the loop
runs with `threads` CPU threads (1 by default, for determinism).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from curate.atomic import atomic_path, write_json
from curate.corpus import Corpus, check_token_ids, open_corpus
from curate.outputs import RUN, check_output_folder
from curate.errors import CurateError
from curate.training.checkpoints import latest_resumable, load_trainer_state, save_checkpoint, STATE_FILE
from curate.training.curves import CURVES_JSON, SUMMARY_JSON, best_head, summarize_curves, write_curves
from curate.attribution.fingerprint import model_fingerprint
from curate.training.models import CHECKPOINTS_DIR, RUN_FILE, build_model, config_from_dict, load_model, resolve_checkpoint_dir
from curate.paths import portable, resolve_stored
from curate.training.plan import (TrainingPlan, RowStream, corpus_key, epoch_steps, load_plan, plan_from_json, resolve_stream,
                                  with_epochs)
from curate.training.recipes import CHECKPOINT_RECIPE
from curate.training.schedule import DEFAULT_CHECKPOINTS, lr_at, parse_checkpoint_steps

PLAN_FILE = "plan.json"
STREAM_FILE = "stream.parquet"
BatchHook = Callable[[int, np.ndarray, np.ndarray, np.ndarray], None]
"""on_batch(step, source_ids, row_ids, tokens): called with every batch just before it is trained on."""


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


PATH_FIELDS = ("corpus", "heldout", "plan")  # spec fields that name files: stored relative to the run folder


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
    absolute = raw.get("absolute", {})
    changes = {name: resolve_stored(getattr(spec, name), run_dir, absolute.get(name))
               for name in PATH_FIELDS if isinstance(getattr(spec, name), str)}
    return replace(spec, **changes)


def _stored_json(run: TrainSpec, run_dir: Path) -> tuple[dict, dict]:
    """(the spec as run.json stores it: paths relative to the run folder, the absolute paths they came from)."""
    body = run.to_json()
    absolute = {}
    for name in PATH_FIELDS:
        if isinstance(body.get(name), str):
            absolute[name] = _abs(body[name])
            body[name] = portable(body[name], run_dir)
    return body, absolute


@dataclass
class TrainResult:
    out_dir: Path
    start_step: int
    final_step: int
    final_checkpoint: Path
    fingerprint: str
    summary: dict
    curves: list[dict] = field(default_factory=list)
    resumed_from: int | None = None


# ---- setup helpers --------------------------------------------------------------------------------
def _resolved_plan(spec: TrainSpec) -> TrainingPlan:
    """The spec's plan, with the spec's epochs (shuffled with its seed) when it gives them."""
    if spec.plan is None:
        plan = TrainingPlan()
    elif isinstance(spec.plan, dict):
        plan = plan_from_json(spec.plan, Path.cwd(), "plan")
    else:
        plan = load_plan(spec.plan)
    return with_epochs(plan, spec.epochs, spec.seed)


def steps_of_epochs(spec: TrainSpec) -> int:
    """The whole steps of the spec's epochs over its corpus (or its plan's), at its batch size."""
    plan = _resolved_plan(spec)
    path = plan.corpus or spec.corpus
    if path is None:
        raise CurateError("no corpus: give a training corpus (or a plan that names one)")
    base = open_corpus(path)
    steps = epoch_steps(plan, base, spec.batch_size or base.batch_size)
    if steps < 1:
        raise CurateError(f"{base.path}: {plan.epochs} epoch(s) of its rows do not fill one step")
    return steps


def _abs(path: str | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())


def spec_hash(spec: TrainSpec, plan: TrainingPlan, legacy: bool = False) -> str:
    """Short sha256 of the trajectory-defining spec: corpora by their content, the plan by its content, a
    checkpoint of a curate run by that run's spec hash (so equal runs hash equal wherever the workspace lies).
    `legacy`: the hash runs recorded before that (paths made absolute)."""
    body = spec.to_json()
    body["plan"] = plan.plan_hash(legacy=legacy)
    if legacy:
        body["corpus"] = _abs(spec.corpus)
        body["heldout"] = _abs(spec.heldout)
        if spec.init_from is not None and Path(spec.init_from).expanduser().exists():
            body["init_from"] = _abs(spec.init_from)
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
    return _abs(init_from)


def _default_config(vocab_size: int, architecture: dict | None = None):
    """The default model for this vocabulary, with `architecture`'s fields replacing its own."""
    try:
        from curate.training.default_model import default_model_config
    except ImportError as e:
        raise CurateError(f"the default model config is not available ({e}); give a model config") from None
    return default_model_config(vocab_size, **dict(architecture or {}))


def corpus_vocab_size(corpus: Corpus) -> int:
    """The corpus's recorded vocabulary size, else (max token id + 1) by streaming it."""
    if corpus.meta is not None and corpus.meta.vocab_size:
        return int(corpus.meta.vocab_size)
    return corpus.vocab_range()[1] + 1


def _heldout_rows(spec: TrainSpec, train_corpus: Corpus | None, base: Corpus, stream: RowStream,
                  vocab_size: int) -> tuple[np.ndarray | None, str]:
    """Held-out rows for the held-out loss and the ICL score (checked against the vocabulary), and where they came from."""
    if spec.heldout_rows <= 0:
        return None, "disabled (heldout_rows = 0)"
    src = open_corpus(spec.heldout) if spec.heldout else (train_corpus or base)
    n = src.num_rows
    start = None
    if src.meta is not None and src.meta.extra.get("heldout_start") is not None:
        start = int(src.meta.extra["heldout_start"])
        if not 0 <= start < n:
            raise CurateError(f"{src.path}: heldout_start {start} is outside the corpus ({n} rows)")
        if Path(src.path).resolve() == Path(base.path).resolve():
            used = stream.row[stream.source == 0]
            if len(used) and int(used.max()) >= start:
                raise CurateError(
                    f"{base.path}: training would read held-out rows (the stream reaches row {int(used.max())}, "
                    f"held-out rows start at {start}); train fewer steps or use a smaller batch"
                )
        rows = np.arange(start, min(n, start + spec.heldout_rows))
        where = f"{src.path} rows [{rows[0]}, {rows[-1] + 1}) (heldout_start)"
    elif spec.heldout:
        rows = np.arange(0, min(n, spec.heldout_rows))
        where = f"{src.path} rows [0, {len(rows)})"
    else:
        if Path(src.path).resolve() == Path(base.path).resolve():
            used = stream.row[stream.source == 0]
            first_free = int(used.max()) + 1 if len(used) else 0
        else:
            first_free = 0
        available = n - first_free
        if available <= 0:
            return None, f"none: {src.path} has no rows beyond those trained on (give a held-out corpus)"
        rows = np.arange(n - min(available, spec.heldout_rows), n)
        where = f"{src.path} rows [{rows[0]}, {n}) (unused tail)"
    check_token_ids(src, (int(rows[0]), int(rows[-1]) + 1), vocab_size)
    return np.asarray(src.take(rows), dtype=np.int64), where


def check_stream_vocab(stream: RowStream, start_step: int, steps: int, vocab_size: int) -> None:
    """Every row the run will train on (steps start_step..steps-1) holds ids inside the vocabulary."""
    a, b = start_step * stream.batch_size, steps * stream.batch_size
    for i, source in enumerate(stream.sources):
        rows = np.unique(stream.row[a:b][stream.source[a:b] == i])
        if len(rows) == 0:
            continue
        for run in np.split(rows, np.flatnonzero(np.diff(rows) != 1) + 1):  # contiguous row ranges
            check_token_ids(source, (int(run[0]), int(run[-1]) + 1), vocab_size)


class _Evaluator:
    """Per-head scores on fixed repeat probes, held-out loss and ICL score, for one model."""

    def __init__(self, probes: torch.Tensor, heldout: np.ndarray | None, device: str):
        self.probes = probes
        self.heldout = None if heldout is None else torch.from_numpy(heldout)
        self.device = device
        self.batch = 32

    def key(self) -> str:
        """Identifies what this evaluator measures (probe tokens, held-out rows): equal keys, comparable curves."""
        h = hashlib.sha256(self.probes.numpy().tobytes())
        if self.heldout is not None:
            h.update(self.heldout.numpy().tobytes())
        return h.hexdigest()[:16]

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module) -> dict:
        from curate.attribution.metrics import head_scores, icl_score

        scores = head_scores(model, self.probes)
        out: dict = {"induction": scores.induction.tolist(), "previous_token": scores.previous_token.tolist(),
                     "heldout_loss": None, "icl": None}
        if self.heldout is not None:
            was_training = model.training
            model.eval()
            total, count = 0.0, 0
            for a in range(0, self.heldout.shape[0], self.batch):
                rows = self.heldout[a : a + self.batch].to(self.device)
                logits = model(input_ids=rows[:, :-1], use_cache=False).logits
                total += float(F.cross_entropy(logits.float().flatten(0, 1), rows[:, 1:].flatten(), reduction="sum"))
                count += rows[:, 1:].numel()
            model.train(was_training)
            out["heldout_loss"] = total / count
            if self.heldout.shape[1] - 1 >= 8:
                out["icl"] = icl_score(model, self.heldout)
        return out


def _optimizer(model: torch.nn.Module, spec: TrainSpec) -> torch.optim.AdamW:
    decay = [p for _, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for _, p in model.named_parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": spec.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=spec.lr, betas=(spec.beta1, spec.beta2), eps=spec.eps)


def _check_spec(spec: TrainSpec) -> None:
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


def _start_step_from(spec: TrainSpec, folder: Path | None, state: dict | None) -> int:
    if state is not None:
        if spec.start_step is not None and spec.start_step != state["step"]:
            raise CurateError(f"{folder}: its trainer state is at step {state['step']}, but the start step asked for is {spec.start_step}")
        return int(state["step"])
    if spec.start_step is not None:
        return spec.start_step
    if folder is not None and (folder / STATE_FILE).is_file():
        return int(load_trainer_state(folder)["step"])
    if spec.revision and spec.revision.startswith("step") and spec.revision[4:].isdigit():
        return int(spec.revision[4:])
    return 0


def check_parent_prefix(checkpoint: Path, stream: RowStream, start_step: int) -> None:
    """A run started from a checkpoint of another curate run must keep that run's rows before its start step
    (what the checkpoint has already trained on); one CurateError line naming the first difference."""
    import pyarrow.parquet as pq

    run_dir = checkpoint.parent.parent
    if not ((run_dir / RUN_FILE).is_file() and (run_dir / STREAM_FILE).is_file()):
        return  # an HF folder or hub model: nothing recorded to compare with
    parent = json.loads((run_dir / RUN_FILE).read_text())
    if int(parent.get("batch_size", stream.batch_size)) != stream.batch_size:
        raise CurateError(f"{run_dir}: was trained at batch size {parent.get('batch_size')}, this run uses {stream.batch_size}; "
                          "the data position of its checkpoints would not match")
    table = pq.read_table(run_dir / STREAM_FILE)
    steps = table.column("step").to_numpy()
    keep = steps < start_step
    if not keep.any():
        return
    first = int(steps[keep][0]) * stream.batch_size
    theirs_src = table.column("source").to_numpy()[keep]
    theirs_row = table.column("row_id").to_numpy()[keep]
    absolute = parent.get("sources_absolute") or [None] * len(parent["sources"])
    paths = [str(Path(resolve_stored(p, run_dir, a)).resolve()) for p, a in zip(parent["sources"], absolute)]
    ours_paths = [str(Path(c.path).resolve()) for c in stream.sources]
    a, b = first, first + len(theirs_row)
    ours_row = stream.row[a:b]
    ours_src = stream.source[a:b]
    same_src = np.array([paths[int(i)] for i in theirs_src]) == np.array([ours_paths[int(i)] for i in ours_src])
    differ = np.flatnonzero(~same_src | (ours_row != theirs_row))
    if len(differ):
        i = int(differ[0])
        raise CurateError(
            f"{run_dir}: this plan changes the rows before the start step {start_step} (step {(a + i) // stream.batch_size} "
            f"trains on row {int(ours_row[i])} of {ours_paths[int(ours_src[i])]} here, row {int(theirs_row[i])} of "
            f"{paths[int(theirs_src[i])]} there); drops and insertions must lie at or after the start step"
        )


def _write_stream(path: Path, stream: RowStream, start_step: int) -> None:
    """stream.parquet: the (step, source, row_id) of every row the run trains on; sources are listed in run.json."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    a = start_step * stream.batch_size
    positions = np.arange(a, len(stream.row), dtype=np.int64)
    table = pa.table({
        "step": pa.array(positions // stream.batch_size),
        "source": pa.array(stream.source[a:]),
        "row_id": pa.array(stream.row[a:]),
    })
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


# ---- the loop -------------------------------------------------------------------------------------
def train(run: TrainSpec, out_dir: Path, progress: bool = True, resume: bool = False,
          on_batch: BatchHook | None = None) -> TrainResult:
    """Train as `run` says into `out_dir` (checkpoints/, curves, summary); `resume` continues the latest
    checkpoint of a run already in `out_dir` (same spec required) and is bit-identical to not stopping.
    """
    _check_spec(run)
    out_dir = Path(out_dir)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(run.threads)
    try:
        with torch.random.fork_rng(devices=[]):
            return _train(run, out_dir, progress, resume, on_batch)
    finally:
        torch.set_num_threads(old_threads)


def _normalized(run: TrainSpec, plan: TrainingPlan) -> TrainSpec:
    """The spec in plain JSON form: an in-memory plan becomes its resolved JSON, a config object a dict."""
    changes: dict = {}
    if isinstance(run.plan, dict):
        changes["plan"] = plan.to_json()
    if run.model_config is not None and not isinstance(run.model_config, dict):
        if not hasattr(run.model_config, "to_dict"):
            raise CurateError(f"model_config must be a dict or a GPTNeoXConfig, got {type(run.model_config).__name__}")
        changes["model_config"] = run.model_config.to_dict()
    return replace(run, **changes) if changes else run


def _train(run: TrainSpec, out_dir: Path, progress: bool, resume: bool, on_batch: BatchHook | None) -> TrainResult:
    plan = _resolved_plan(run)
    run = _normalized(run, plan)
    if plan.corpus is None and run.corpus is None:
        raise CurateError("no corpus: give a training corpus (or a plan that names one)")
    train_corpus = open_corpus(run.corpus) if run.corpus else None
    base = open_corpus(plan.corpus) if plan.corpus else train_corpus
    assert base is not None
    batch_size = run.batch_size or base.batch_size
    this_hash = spec_hash(run, plan)
    plan_hash = plan.plan_hash()

    # -- where to start: a run in out_dir (resume), a checkpoint (branch / warm start), or fresh weights
    resume_dir: Path | None = None
    run_file = out_dir / RUN_FILE
    check_output_folder(out_dir, RUN, [*base.files, *(train_corpus.files if train_corpus else [])])
    if run_file.is_file():
        if not resume:
            raise CurateError(f"{out_dir}: already holds a run; resume it or choose another output folder")
        saved = json.loads(run_file.read_text())
        if saved.get("spec_hash") == spec_hash(run, plan, legacy=True):
            this_hash, plan_hash = saved["spec_hash"], plan.plan_hash(legacy=True)  # a run recorded before content keys
        if saved.get("spec_hash") != this_hash:
            raise CurateError(f"{out_dir}: the run there was started with different settings (spec {saved.get('spec_hash')}, now {this_hash}); resuming continues a run as it was")
        resume_dir = latest_resumable(out_dir)
    elif out_dir.exists() and any(out_dir.iterdir()):
        raise CurateError(f"{out_dir}: exists and is not empty (and holds no run); choose another output folder")

    init_folder: Path | None = None
    init_state: dict | None = None
    if run.init_from is not None:
        init_folder = resolve_checkpoint_dir(run.init_from, run.revision)
        if run.init_state:
            if init_folder is None:
                raise CurateError(f"{run.init_from}: continuing a checkpoint's trainer state needs a local run checkpoint (hub models carry no trainer state)")
            init_state = load_trainer_state(init_folder)
    start_step = _start_step_from(run, init_folder, init_state)
    if start_step >= run.steps:
        raise CurateError(f"nothing to train: the start step {start_step} is not before the final step {run.steps}")
    schedule_steps = run.schedule_steps or run.steps

    stream = resolve_stream(plan, base, batch_size, run.steps, start_step)
    if init_folder is not None and start_step > 0:
        check_parent_prefix(init_folder, stream, start_step)
    if resume_dir is not None:
        state = load_trainer_state(resume_dir)
        if int(state["step"]) == run.steps and (out_dir / SUMMARY_JSON).is_file():
            done = json.loads((out_dir / SUMMARY_JSON).read_text())
            if done.get("complete"):
                return _finished(run, out_dir, start_step, done)
        model = load_model(resume_dir, device=run.device)
    elif run.init_from is not None:
        state = init_state
        model = load_model(init_folder if init_folder is not None else run.init_from, revision=None if init_folder else run.revision, device=run.device)
    else:
        state = None
        vocab = corpus_vocab_size(train_corpus or base)
        config = config_from_dict(run.model_config) if run.model_config is not None else _default_config(vocab, run.architecture)
        model = build_model(config, run.seed).to(run.device)
    vocab_size = int(model.config.vocab_size)
    context = base.row_len - 1
    model_context = int(getattr(model.config, "max_position_embeddings", context))
    if context > model_context:  # before anything is written
        raise CurateError(f"{base.path}: rows of {base.row_len} tokens exceed the model's context ({model_context} + 1)")
    if state is not None and state["plan_hash"] != plan_hash and resume_dir is not None:
        raise CurateError(f"{resume_dir}: checkpoint was trained under another plan")

    check_stream_vocab(stream, start_step, run.steps, vocab_size)  # before anything is written
    heldout, heldout_where = _heldout_rows(run, train_corpus, base, stream, vocab_size)
    from curate.attribution.probes import corpus_probes

    probes = corpus_probes(model.config, base, n=run.eval_probes, half_len=run.probe_half_len or None, seed=run.probe_seed)
    evaluator = _Evaluator(probes, heldout, run.device)
    eval_key = evaluator.key()
    tokenizer_spec = (train_corpus or base).tokenizer_spec()
    tokenizer_file = Path(tokenizer_spec) if tokenizer_spec and Path(tokenizer_spec).is_file() else None
    optimizer = _optimizer(model, run)
    ckpt_steps = set(parse_checkpoint_steps(run.checkpoints, run.steps, start_step + (1 if start_step > 0 else 0)))

    curves: list[dict] = []
    loss_sum, loss_count = 0.0, 0
    first_step = start_step
    skip_eval_at: int | None = None
    first_eval: int | None = start_step  # a fresh curve starts with a point at its first step
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        inherit = resume_dir is not None or state.get("eval_key") == eval_key
        if resume_dir is not None:
            first_step = int(state["step"])
        if inherit:
            # the evaluation history so far (a branch inherits its parent's when it evaluates the same way)
            curves = [p for p in state.get("curves", []) if p["step"] <= first_step]
            loss_sum, loss_count = float(state.get("loss_sum", 0.0)), int(state.get("loss_count", 0))
            first_eval = None if curves else first_step
            if curves and curves[-1]["step"] == first_step:
                skip_eval_at = first_step
    else:
        torch.manual_seed(run.seed)
    init_fingerprint = model_fingerprint(model)

    sources = [str(c.path) for c in stream.sources]
    if resume_dir is None:
        # run.json first: it names the folder a training run (`curate.outputs`), so a run killed while it writes the
        # rest is resumed (and rewritten from the start), never refused as a foreign folder
        out_dir.mkdir(parents=True, exist_ok=True)
        spec_json, absolute = _stored_json(run, out_dir)
        write_json(run_file, {
            "spec": spec_json, "absolute": absolute, "spec_hash": this_hash, "plan_hash": plan_hash, "start_step": start_step,
            "batch_size": batch_size, "row_len": base.row_len, "schedule_steps": schedule_steps,
            "base_corpus": portable(base.path, out_dir), "sources": [portable(p, out_dir) for p in sources],
            "sources_absolute": [_abs(p) for p in sources], "heldout": heldout_where,
            "init_fingerprint": init_fingerprint, "model_config": model.config.to_dict(),
            "checkpoint_steps": sorted(ckpt_steps), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        })
        write_json(out_dir / PLAN_FILE, plan.to_json())
        _write_stream(out_dir / STREAM_FILE, stream, start_step)

    def evaluate(step: int) -> dict:
        nonlocal loss_sum, loss_count
        point = {"step": step, "tokens": step * batch_size * context,
                 "loss": loss_sum / loss_count if loss_count else None,
                 "lr": lr_at(step - 1, run.lr, run.warmup_steps, schedule_steps, run.min_lr_ratio) if step > 0 else None,
                 **evaluator(model)}
        loss_sum, loss_count = 0.0, 0
        curves.append(point)
        return point

    def checkpoint(step: int) -> None:
        save_checkpoint(out_dir, step, model, optimizer, {
            "plan_hash": plan_hash, "spec_hash": this_hash, "curves": curves,
            "loss_sum": loss_sum, "loss_count": loss_count, "start_step": start_step, "eval_key": eval_key,
        }, tokenizer_file=tokenizer_file)
        write_curves(out_dir, curves, _summary(run, curves, start_step, step, out_dir, None, heldout_where, fingerprint=None), plot=False)

    display = _Display(progress, first_step, run.steps, batch_size * context)
    model.train()
    t0 = time.perf_counter()
    last_loss = float("nan")
    with display:
        for step in range(first_step, run.steps + 1):
            if step != skip_eval_at:
                if step % run.eval_every == 0 or step == first_eval or step == run.steps:
                    point = evaluate(step)
                    display.metrics(best_head(point, "induction")[1], point["heldout_loss"])
                if step in ckpt_steps:
                    checkpoint(step)
            if step == run.steps:
                break
            src, rows = stream.batch_ids(step)
            tokens = stream.read_batch(step)
            if on_batch is not None:
                on_batch(step, src, rows, tokens)
            lr = lr_at(step, run.lr, run.warmup_steps, schedule_steps, run.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = torch.from_numpy(tokens).to(run.device)
            optimizer.zero_grad(set_to_none=True)
            loss = backward_batch(model, batch, run.micro_batch, _use_autocast(run))
            if run.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), run.grad_clip)
            optimizer.step()
            last_loss = float(loss.detach())
            if not math.isfinite(last_loss):
                raise CurateError(f"training diverged at step {step} (loss {last_loss}); lower the learning rate")
            loss_sum += last_loss
            loss_count += 1
            display.step(last_loss)
    wall = time.perf_counter() - t0
    fingerprint = model_fingerprint(model)
    final_ckpt = out_dir / CHECKPOINTS_DIR / f"step{run.steps}"
    trained = run.steps - first_step
    summary = _summary(run, curves, start_step, run.steps, out_dir, final_ckpt, heldout_where, fingerprint)
    summary["timing"] = {"wall_s": wall, "steps": trained,
                         "tokens_per_s": trained * batch_size * context / wall if wall > 0 else None}
    write_curves(out_dir, curves, summary, plot=True)
    return TrainResult(out_dir=out_dir, start_step=start_step, final_step=run.steps, final_checkpoint=final_ckpt,
                       fingerprint=fingerprint, summary=summary, curves=curves,
                       resumed_from=int(state["step"]) if resume_dir is not None and state is not None else None)


def _use_autocast(run: TrainSpec) -> bool:
    return run.autocast if run.autocast is not None else str(run.device).startswith("cuda")


def backward_batch(model: torch.nn.Module, batch: torch.Tensor, micro_batch: int | None, autocast: bool = False) -> torch.Tensor:
    """Backward of one step's mean next-token loss; returns the loss (detached).

    With `micro_batch` below the batch, the rows are run `micro_batch` at a time and each part's
    summed token loss, divided by the whole batch's token count, is backpropagated: the accumulated
    gradient equals the full batch's up to float rounding, in the memory of one micro-batch.
    `autocast`: the forward in bf16 on CUDA; weights, gradients and the optimizer stay fp32.
    """
    device_type = batch.device.type
    cast = torch.autocast(device_type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    rows = batch.shape[0]
    if not micro_batch or micro_batch >= rows:
        with cast:
            logits = model(input_ids=batch[:, :-1], use_cache=False).logits
        loss = F.cross_entropy(_at_least_fp32(logits).flatten(0, 1), batch[:, 1:].flatten())
        loss.backward()
        return loss.detach()
    tokens = rows * (batch.shape[1] - 1)
    total: torch.Tensor | None = None
    for a in range(0, rows, micro_batch):
        part = batch[a : a + micro_batch]
        with cast:
            logits = model(input_ids=part[:, :-1], use_cache=False).logits
        loss = F.cross_entropy(_at_least_fp32(logits).flatten(0, 1), part[:, 1:].flatten(), reduction="sum") / tokens
        loss.backward()
        total = loss.detach() if total is None else total + loss.detach()
    assert total is not None
    return total


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _finished(run: TrainSpec, out_dir: Path, start_step: int, summary: dict) -> TrainResult:
    """The result of a run that is already complete (nothing to train)."""
    curves = json.loads((out_dir / CURVES_JSON).read_text())["points"]
    final = out_dir / CHECKPOINTS_DIR / f"step{run.steps}"
    return TrainResult(out_dir=out_dir, start_step=start_step, final_step=run.steps, final_checkpoint=final,
                       fingerprint=summary.get("fingerprint") or "", summary=summary, curves=curves, resumed_from=run.steps)


def _summary(run: TrainSpec, curves: list[dict], start_step: int, step: int, out_dir: Path,
             final_ckpt: Path | None, heldout_where: str, fingerprint: str | None) -> dict:
    return {
        "step": step,
        "start_step": start_step,
        "steps": run.steps,
        "complete": final_ckpt is not None,
        "final_checkpoint": str(final_ckpt) if final_ckpt is not None else None,
        "fingerprint": fingerprint,
        "heldout": heldout_where,
        "emergence": summarize_curves(curves, {"induction": run.induction_threshold, "previous_token": run.prev_token_threshold}),
        "eval_every": run.eval_every,
    }


class _Display:
    """Rich progress: step, loss, best induction score, it/s, ETA (a no-op when disabled)."""

    def __init__(self, enabled: bool, first: int, total: int, tokens_per_step: int) -> None:
        self.enabled = enabled
        self.first, self.total = first, total
        self.induction: float | None = None
        self.heldout: float | None = None
        self._n = 0

    def __enter__(self) -> "_Display":
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"), TextColumn("ind {task.fields[ind]}"),
                TextColumn("{task.fields[rate]} it/s"),
                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), transient=False,
            )
            self.progress.__enter__()
            self.task = self.progress.add_task("train", total=self.total, completed=self.first, loss="-", ind="-", rate="-")
            self.t0 = time.perf_counter()
        return self

    def metrics(self, induction: float, heldout: float | None) -> None:
        self.induction = induction
        if self.enabled:
            self.progress.update(self.task, ind=f"{induction:.3f}")

    def step(self, loss: float) -> None:
        if not self.enabled:
            return
        self._n += 1
        elapsed = time.perf_counter() - self.t0
        rate = f"{self._n / elapsed:.1f}" if elapsed > 0 else "-"
        self.progress.update(self.task, advance=1, loss=f"{loss:.3f}", rate=rate)

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.progress.__exit__(*exc)
