"""The training loop: a GPT-NeoX model on a corpus in its exact row order (under a plan), with evaluation,
checkpoints and a bit-identical resume.

Step k trains on stream positions [k*B, (k+1)*B) (see `training.plan`); a checkpoint `stepK` holds the
model after K updates (Pythia's convention: it has trained on batches 0..K-1). Evaluation at step K
reads that same model. AdamW (no decay on biases and norms), linear warm-up + cosine decay to
`min_lr_ratio * lr`, gradient clipping; the seed fixes the initialisation and the torch RNG; the loop
runs with `threads` CPU threads (1 by default, for determinism).

`train` resolves the run in named steps (`_resume_decision`, `_init_source`, `_start_model`, `_restore`,
`_write_run_files`), then runs `_loop`. The spec and its hash live in `training.spec`, the held-out rows in
`training.heldout`, what an evaluation measures in `training.evaluate`, a step's gradient in `training.gradients`,
the stream's record in `training.run_stream`.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from curate.atomic import write_json
from curate.attribution.fingerprint import model_fingerprint
from curate.attribution.probes import corpus_probes
from curate.corpus import Corpus, open_corpus
from curate.errors import CurateError
from curate.outputs import RUN, check_output_folder
from curate.paths import portable
from curate.progress import TrainProgress, heartbeat_seconds
from curate.tokenize import end_of_text_id
from curate.training.checkpoints import STATE_FILE, latest_resumable, load_trainer_state, save_checkpoint
from curate.training.curves import CURVES_JSON, SUMMARY_JSON, best_head, summarize_curves, write_curves
from curate.training.default_model import default_model_config
from curate.training.evaluate import Evaluator
from curate.training.gradients import backward_batch
from curate.training.heldout import heldout_rows
from curate.training.models import (CHECKPOINTS_DIR, RUN_FILE, build_model, config_from_dict, corpus_vocab_size, load_model,
                                    resolve_checkpoint_dir, use_tokenizer_ids)
from curate.training.plan import RowStream, TrainingPlan, resolve_stream
from curate.training.run_stream import STREAM_FILE, check_parent_prefix, check_stream_vocab, write_stream
from curate.training.schedule import parse_checkpoint_steps
from curate.training.spec import TrainSpec, absolute, check_spec, normalized, resolved_plan, run_lr, spec_hash, stored_json

PLAN_FILE = "plan.json"
BatchHook = Callable[[int, np.ndarray, np.ndarray, np.ndarray], None]
"""on_batch(step, source_ids, row_ids, tokens): called with every batch just before it is trained on."""


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


@dataclass
class _Run:
    """A run resolved and ready to train: its spec, stream, model, optimizer and evaluation."""

    spec: TrainSpec
    out_dir: Path
    spec_hash: str
    plan_hash: str
    start_step: int
    schedule_steps: int
    batch_size: int
    context: int  # tokens a row predicts (row length - 1)
    stream: RowStream
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    evaluator: Evaluator
    eval_key: str
    heldout_where: str
    tokenizer_file: Path | None
    checkpoint_steps: set[int]


@dataclass
class _History:
    """The evaluation points so far and the training loss summed since the last one."""

    curves: list[dict] = field(default_factory=list)
    loss_sum: float = 0.0
    loss_count: int = 0


@dataclass
class _LoopStart:
    """Where the loop begins: the first step to train, the step of a fresh curve's first point (None: the curve
    goes on), and a step whose evaluation the history already holds."""

    first_step: int
    first_eval: int | None
    skip_eval_at: int | None


def train(run: TrainSpec, out_dir: Path, progress: bool = True, resume: bool = False,
          on_batch: BatchHook | None = None) -> TrainResult:
    """Train as `run` says into `out_dir` (checkpoints/, curves, summary); `resume` continues the latest
    checkpoint of a run already in `out_dir` (same spec required) and is bit-identical to not stopping.
    `progress`: a bar on stderr when it is a terminal, else a heartbeat line at a fixed interval (`curate.progress`).
    """
    check_spec(run)
    out_dir = Path(out_dir)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(run.threads)
    try:
        with torch.random.fork_rng(devices=[]):
            return _train(run, out_dir, progress, resume, on_batch)
    finally:
        torch.set_num_threads(old_threads)


def _train(run: TrainSpec, out_dir: Path, progress: bool, resume: bool, on_batch: BatchHook | None) -> TrainResult:
    heartbeat_s = heartbeat_seconds() if progress else 0.0  # a bad setting fails before anything is written
    plan = resolved_plan(run)
    run = normalized(run, plan)
    if plan.corpus is None and run.corpus is None:
        raise CurateError("no corpus: give a training corpus (or a plan that names one)")
    train_corpus = open_corpus(run.corpus) if run.corpus else None
    base = open_corpus(plan.corpus) if plan.corpus else train_corpus
    assert base is not None
    batch_size = run.batch_size or base.batch_size

    resume_dir, this_hash, plan_hash = _resume_decision(run, plan, out_dir, resume, base, train_corpus)
    init_folder, init_state = _init_source(run)
    start_step = _start_step_from(run, init_folder, init_state)
    if start_step >= run.steps:
        raise CurateError(f"nothing to train: the start step {start_step} is not before the final step {run.steps}")
    stream = resolve_stream(plan, base, batch_size, run.steps, start_step)
    if init_folder is not None and start_step > 0:
        check_parent_prefix(init_folder, stream, start_step)
    state = load_trainer_state(resume_dir) if resume_dir is not None else init_state
    if resume_dir is not None and int(state["step"]) == run.steps and (out_dir / SUMMARY_JSON).is_file():
        done = json.loads((out_dir / SUMMARY_JSON).read_text())
        if done.get("complete"):
            return _finished(run, out_dir, start_step, done)
    tokenizer_spec = (train_corpus or base).tokenizer_spec()
    tokenizer_file = Path(tokenizer_spec) if tokenizer_spec and Path(tokenizer_spec).is_file() else None
    model = _start_model(run, resume_dir, init_folder, train_corpus or base, tokenizer_file)

    # the checks before anything is written
    vocab_size = int(model.config.vocab_size)
    context = base.row_len - 1
    model_context = int(getattr(model.config, "max_position_embeddings", context))
    if context > model_context:
        raise CurateError(f"{base.path}: rows of {base.row_len} tokens exceed the model's context ({model_context} + 1)")
    if state is not None and state["plan_hash"] != plan_hash and resume_dir is not None:
        raise CurateError(f"{resume_dir}: checkpoint was trained under another plan")
    check_stream_vocab(stream, start_step, run.steps, vocab_size)

    heldout, heldout_where = heldout_rows(run, train_corpus, base, stream, vocab_size)
    probes = corpus_probes(model.config, base, n=run.eval_probes, half_len=run.probe_half_len or None, seed=run.probe_seed)
    evaluator = Evaluator(probes, heldout, run.device)
    r = _Run(
        spec=run, out_dir=out_dir, spec_hash=this_hash, plan_hash=plan_hash, start_step=start_step,
        schedule_steps=run.schedule_steps or run.steps, batch_size=batch_size, context=context, stream=stream,
        model=model, optimizer=_optimizer(model, run), evaluator=evaluator, eval_key=evaluator.key(),
        heldout_where=heldout_where, tokenizer_file=tokenizer_file,
        checkpoint_steps=set(parse_checkpoint_steps(run.checkpoints, run.steps, start_step + (1 if start_step > 0 else 0))),
    )
    history, loop_start = _restore(r, state, resume_dir)
    if resume_dir is None:
        _write_run_files(r, plan, base)

    display = TrainProgress(progress, loop_start.first_step, run.steps, heartbeat_s)
    if history.curves:
        display.metrics(best_head(history.curves[-1], "induction")[1])
    t0 = time.perf_counter()
    _loop(r, history, loop_start, display, on_batch)
    wall = time.perf_counter() - t0
    fingerprint = model_fingerprint(model)
    final_ckpt = out_dir / CHECKPOINTS_DIR / f"step{run.steps}"
    trained = run.steps - loop_start.first_step
    summary = _summary(run, history.curves, start_step, run.steps, final_ckpt, heldout_where, fingerprint)
    summary["timing"] = {"wall_s": wall, "steps": trained,
                         "tokens_per_s": trained * batch_size * context / wall if wall > 0 else None}
    write_curves(out_dir, history.curves, summary, plot=True)
    return TrainResult(out_dir=out_dir, start_step=start_step, final_step=run.steps, final_checkpoint=final_ckpt,
                       fingerprint=fingerprint, summary=summary, curves=history.curves,
                       resumed_from=int(state["step"]) if resume_dir is not None and state is not None else None)


# ---- the steps of `_train` ------------------------------------------------------------------------
def _resume_decision(run: TrainSpec, plan: TrainingPlan, out_dir: Path, resume: bool, base: Corpus,
                     train_corpus: Corpus | None) -> tuple[Path | None, str, str]:
    """(the checkpoint to resume from, None for a new run; the run's spec hash; its plan hash): a run already in
    `out_dir` is resumed only when asked and only with the same spec (a run recorded under the legacy hash keeps it)."""
    this_hash, plan_hash = spec_hash(run, plan), plan.plan_hash()
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
        return latest_resumable(out_dir), this_hash, plan_hash
    if out_dir.exists() and any(out_dir.iterdir()):
        raise CurateError(f"{out_dir}: exists and is not empty (and holds no run); choose another output folder")
    return None, this_hash, plan_hash


def _init_source(run: TrainSpec) -> tuple[Path | None, dict | None]:
    """(the local folder of the checkpoint the run starts from, None for fresh weights or a hub name; its trainer
    state when the run continues it)."""
    if run.init_from is None:
        return None, None
    folder = resolve_checkpoint_dir(run.init_from, run.revision)
    if not run.init_state:
        return folder, None
    if folder is None:
        raise CurateError(f"{run.init_from}: continuing a checkpoint's trainer state needs a local run checkpoint (hub models carry no trainer state)")
    return folder, load_trainer_state(folder)


def _start_step_from(spec: TrainSpec, folder: Path | None, state: dict | None) -> int:
    """The data/schedule position of the first update: the continued trainer state's, the spec's, the start
    checkpoint's (its trainer state, else a stepK revision), else 0."""
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


def _start_model(run: TrainSpec, resume_dir: Path | None, init_folder: Path | None, vocab_corpus: Corpus,
                 tokenizer_file: Path | None) -> torch.nn.Module:
    """The model the run starts with: the resumed checkpoint's, the start checkpoint's, or fresh weights (the given
    config, else the default model for `vocab_corpus`'s vocabulary) from the seed. A new run's model takes the
    bos/eos/pad ids of the tokenizer its checkpoints will carry, before its evaluation probes are drawn, so the
    probes stay the same when the run resumes from a checkpoint."""
    if resume_dir is not None:
        return load_model(resume_dir, device=run.device)  # its ids as the run started with them
    if run.init_from is not None:
        model = load_model(init_folder if init_folder is not None else run.init_from,
                           revision=None if init_folder else run.revision, device=run.device)
    else:
        if run.model_config is not None:
            config = config_from_dict(run.model_config)
        else:
            config = default_model_config(corpus_vocab_size(vocab_corpus), **dict(run.architecture or {}))
        model = build_model(config, run.seed).to(run.device)
    if tokenizer_file is not None:
        use_tokenizer_ids(model, end_of_text_id(tokenizer_file))
    return model


def _optimizer(model: torch.nn.Module, spec: TrainSpec) -> torch.optim.AdamW:
    """AdamW, without weight decay on biases and norms."""
    decay = [p for _, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for _, p in model.named_parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": spec.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=spec.lr, betas=(spec.beta1, spec.beta2), eps=spec.eps)


def _restore(r: _Run, state: dict | None, resume_dir: Path | None) -> tuple[_History, _LoopStart]:
    """The optimizer, RNG and evaluation history from the trainer state the run continues (a branch inherits its
    parent's history when it evaluates the same way), else the seeded RNG of a fresh start."""
    history = _History()
    start = _LoopStart(first_step=r.start_step, first_eval=r.start_step, skip_eval_at=None)  # a fresh curve starts with a point
    if state is None:
        torch.manual_seed(r.spec.seed)
        return history, start
    r.optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    if resume_dir is not None:
        start.first_step = int(state["step"])
    if resume_dir is not None or state.get("eval_key") == r.eval_key:
        history.curves = [p for p in state.get("curves", []) if p["step"] <= start.first_step]
        history.loss_sum, history.loss_count = float(state.get("loss_sum", 0.0)), int(state.get("loss_count", 0))
        start.first_eval = None if history.curves else start.first_step
        if history.curves and history.curves[-1]["step"] == start.first_step:
            start.skip_eval_at = start.first_step
    return history, start


def _write_run_files(r: _Run, plan: TrainingPlan, base: Corpus) -> None:
    """run.json, plan.json and stream.parquet of a new run. run.json first: it names the folder a training run
    (`curate.outputs`), so a run killed while it writes the rest is resumed (and rewritten from the start), never
    refused as a foreign folder."""
    out_dir = r.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    spec_json, paths = stored_json(r.spec, out_dir)
    sources = [str(c.path) for c in r.stream.sources]
    write_json(out_dir / RUN_FILE, {
        "spec": spec_json, "absolute": paths, "spec_hash": r.spec_hash, "plan_hash": r.plan_hash, "start_step": r.start_step,
        "batch_size": r.batch_size, "row_len": base.row_len, "schedule_steps": r.schedule_steps,
        "base_corpus": portable(base.path, out_dir), "sources": [portable(p, out_dir) for p in sources],
        "sources_absolute": [absolute(p) for p in sources], "heldout": r.heldout_where,
        "init_fingerprint": model_fingerprint(r.model), "model_config": r.model.config.to_dict(),
        "checkpoint_steps": sorted(r.checkpoint_steps), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    })
    write_json(out_dir / PLAN_FILE, plan.to_json())
    write_stream(out_dir / STREAM_FILE, r.stream, r.start_step)


# ---- the loop -------------------------------------------------------------------------------------
def _loop(r: _Run, history: _History, start: _LoopStart, display: TrainProgress, on_batch: BatchHook | None) -> None:
    """Train from `start.first_step` to the final step: evaluate and checkpoint at their steps (before the step's
    update, so a point at step K reads the model after K updates), then train the step's batch."""
    final = r.spec.steps
    r.model.train()
    with display:
        for step in range(start.first_step, final + 1):
            if step != start.skip_eval_at:
                if step % r.spec.eval_every == 0 or step == start.first_eval or step == final:
                    point = _evaluate(r, history, step)
                    display.metrics(best_head(point, "induction")[1])
                if step in r.checkpoint_steps:
                    _checkpoint(r, history, step)
            if step == final:
                break
            loss = _train_step(r, step, on_batch)
            history.loss_sum += loss
            history.loss_count += 1
            display.step(loss)


def _evaluate(r: _Run, history: _History, step: int) -> dict:
    """One curve point: the mean training loss since the last point, the step's learning rate, the evaluation."""
    s = r.spec
    point = {"step": step, "tokens": step * r.batch_size * r.context,
             "loss": history.loss_sum / history.loss_count if history.loss_count else None,
             "lr": run_lr(s, step - 1) if step > 0 else None,
             **r.evaluator(r.model)}
    history.loss_sum, history.loss_count = 0.0, 0
    history.curves.append(point)
    return point


def _checkpoint(r: _Run, history: _History, step: int) -> None:
    save_checkpoint(r.out_dir, step, r.model, r.optimizer, {
        "plan_hash": r.plan_hash, "spec_hash": r.spec_hash, "curves": history.curves,
        "loss_sum": history.loss_sum, "loss_count": history.loss_count, "start_step": r.start_step, "eval_key": r.eval_key,
    }, tokenizer_file=r.tokenizer_file)
    summary = _summary(r.spec, history.curves, r.start_step, step, None, r.heldout_where, fingerprint=None)
    write_curves(r.out_dir, history.curves, summary, plot=False)


def _train_step(r: _Run, step: int, on_batch: BatchHook | None) -> float:
    """One optimizer update on the step's batch; returns its loss (a diverged loss is one CurateError line)."""
    s = r.spec
    src, rows = r.stream.batch_ids(step)
    tokens = r.stream.read_batch(step)
    if on_batch is not None:
        on_batch(step, src, rows, tokens)
    lr = run_lr(s, step)
    for group in r.optimizer.param_groups:
        group["lr"] = lr
    batch = torch.from_numpy(tokens).to(s.device)
    r.optimizer.zero_grad(set_to_none=True)
    loss = backward_batch(r.model, batch, s.micro_batch, s.use_autocast())
    if s.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(r.model.parameters(), s.grad_clip)
    r.optimizer.step()
    value = float(loss.detach())
    if not math.isfinite(value):
        raise CurateError(f"training diverged at step {step} (loss {value}); lower the learning rate")
    return value


# ---- results --------------------------------------------------------------------------------------
def _finished(run: TrainSpec, out_dir: Path, start_step: int, summary: dict) -> TrainResult:
    """The result of a run that is already complete (nothing to train)."""
    curves = json.loads((out_dir / CURVES_JSON).read_text())["points"]
    final = out_dir / CHECKPOINTS_DIR / f"step{run.steps}"
    return TrainResult(out_dir=out_dir, start_step=start_step, final_step=run.steps, final_checkpoint=final,
                       fingerprint=summary.get("fingerprint") or "", summary=summary, curves=curves, resumed_from=run.steps)


def _summary(run: TrainSpec, curves: list[dict], start_step: int, step: int, final_ckpt: Path | None,
             heldout_where: str, fingerprint: str | None) -> dict:
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
