"""`curate experiment --dry-run`: what the experiment would do and what it would cost, measured on the real model,
rows and device; nothing is written.

- The plan: the baseline (already trained: its window decides the rest; a baseline still to train is an error),
  the window, the heads, the arms x seeds x steps, how many distinct runs train (runs whose specs and mixes are
  equal train once, as `pipelines.arms.dedupe` does; finished runs are not counted), the rows each scoring method
  scores and the tokens the arms train on.
- The scoring cost: `curate score --dry-run`'s estimate (`pipelines.score_estimate.dry_run`) of each method's job.
- The training cost: a few optimizer steps of an arm's spec (its start weights, rows at its start step, batch,
  `--micro-batch`, `--precision`, optimiser settings) timed on the device with the arm's torch threads: one
  warm-up step (not timed), then steps until at least `MIN_STEPS` are timed and `MIN_SECONDS` have passed (at most
  `MAX_STEPS`). Seconds per step x each run's steps, spread over the workers (`score_estimate.makespan`).
  Not included: starting Ray, building the mixes (FAISS index, synthetic rows), evaluations and checkpoints,
  the report.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from curate.corpus import open_corpus
from curate.errors import CurateError
from curate.pipelines.arm_plan import ArmPlan, arm_train_specs, plan_arms
from curate.pipelines.arms import ArmRun, arm_defs, is_finished, mix_folder, run_folder, run_key
from curate.attribution.scores_folder import Window
from curate.pipelines.baseline_run import finished_baseline
from curate.pipelines.experiment_scores import score_job
from curate.pipelines.window_choice import choose_window
from curate.pipelines.experiment_options import ExperimentOptions, command_line
from curate.pipelines.experiment_setting import Log, Setting, abs_path, resolve_setting
from curate.pipelines.score_estimate import dry_run as score_dry_run
from curate.pipelines.score_estimate import makespan
from curate.training.curves import SUMMARY_JSON
from curate.training.models import build_model, config_from_dict, load_model
from curate.training.gradients import backward_batch
from curate.training.spec import TrainSpec
from curate.workspace import reference_run_dir

MIN_STEPS = 2
"""Timed optimizer steps at least (after one warm-up step)."""
MIN_SECONDS = 1.0
"""Timed seconds at least (more steps are timed while they take less, up to `MAX_STEPS`)."""
MAX_STEPS = 8


@dataclass
class StepTiming:
    """The training calibration: optimizer steps timed and their seconds."""

    steps: int
    rows_per_step: int
    micro_batch: int | None
    autocast: bool
    seconds: float

    @property
    def seconds_per_step(self) -> float:
        return self.seconds / self.steps

    def to_json(self) -> dict:
        return {**asdict(self), "seconds_per_step": self.seconds_per_step}


def trained_baseline(s: Setting) -> dict:
    """The baseline's run.json when it is already trained ({} for an external model); never trains."""
    b = s.baseline
    if b.mode == "reference":
        b.run_dir = Path(abs_path(reference_run_dir(s.ws)))
    if b.run_dir is not None and b.mode in ("reference", "own"):
        summary = b.run_dir / SUMMARY_JSON
        complete = summary.is_file() and json.loads(summary.read_text()).get("complete") is True
        if not complete:
            raise CurateError(f"--dry-run: the baseline {b.run_dir} is not trained yet, and the window, the arms and their "
                              "cost follow from it; train it first (run the experiment without --dry-run, or curate train), "
                              "or estimate an external --model with --window")
    return finished_baseline(s)


def planned_runs(s: Setting, window: Window, plan: ArmPlan, run_json: dict) -> tuple[list[ArmRun], list[ArmRun]]:
    """(every (arm, seed) run, the distinct runs still to train). A mix not built yet is told apart by its folder (a
    seed-independent arm shares one mix over the seeds), so runs that `dedupe` would merge are merged here too."""
    defs = arm_defs()
    mixes = {(arm, seed): mix_folder(s.out / "mixes", arm, seed) if defs[arm].remove or defs[arm].augment else None
             for arm in s.arms for seed in s.seeds}
    runs: list[ArmRun] = []
    todo: dict[str, ArmRun] = {}
    for arm, seed, spec in arm_train_specs(s, window, plan, run_json, mixes):
        built = spec.plan is None or Path(str(spec.plan)).is_file()
        key = run_key(spec) if built else run_key(replace(spec, plan=None)) + f"|{spec.plan}"
        run = ArmRun(arm, seed, run_folder(s.out / "arms", arm, seed), spec, key)
        runs.append(run)
        if not (built and is_finished(run.out_dir, key)):
            todo.setdefault(key, run)
    return runs, list(todo.values())


def _start_model(spec: TrainSpec, device: str) -> torch.nn.Module:
    """The weights the run starts from (as the trainer loads them), on the device."""
    if spec.init_from is not None:
        return load_model(spec.init_from, spec.revision, device)
    assert spec.model_config is not None
    return build_model(config_from_dict(dict(spec.model_config)), spec.seed).to(device)


def time_training(spec: TrainSpec, start_step: int, log: Log = lambda m: None) -> StepTiming:
    """Time optimizer steps of `spec` on its device and threads, on the corpus rows of the steps from `start_step`."""
    device = torch.device(spec.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    corpus = open_corpus(str(spec.corpus), spec.batch_size)
    batch = corpus.batch_size
    last_step = corpus.num_rows // batch
    old_threads = torch.get_num_threads()
    torch.set_num_threads(spec.threads)
    try:
        model = _start_model(spec, spec.device).train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, betas=(spec.beta1, spec.beta2), eps=spec.eps,
                                      weight_decay=spec.weight_decay)  # the cost of the trainer's AdamW (decay groups aside)
        autocast = spec.use_autocast()  # the trainer's rule: bf16 by default on cuda
        log(f"calibrating: training steps of {batch} rows (micro-batch {spec.micro_batch or batch}) on {spec.device}")

        def step(k: int) -> None:
            at = min(start_step + k, last_step - 1)
            rows = np.asarray(corpus.rows(at * batch, (at + 1) * batch), dtype=np.int64)
            optimizer.zero_grad(set_to_none=True)
            backward_batch(model, torch.from_numpy(rows).to(device), spec.micro_batch, autocast)
            if spec.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
            optimizer.step()
            sync()

        step(0)  # warm-up, not timed
        steps, seconds = 0, 0.0
        while steps < MAX_STEPS and (steps < MIN_STEPS or seconds < MIN_SECONDS):
            t0 = time.perf_counter()
            step(steps + 1)
            seconds += time.perf_counter() - t0
            steps += 1
        return StepTiming(steps, batch, spec.micro_batch, autocast, max(seconds, 1e-9))
    finally:
        torch.set_num_threads(old_threads)


def _train_workers(opts: ExperimentOptions, runs: int) -> int:
    """Workers the arms would train on (`pipelines.arms.train_runs`: one per CPU by default, at most one per GPU)."""
    workers = opts.workers or (os.cpu_count() or 1)
    if opts.device == "cuda":
        workers = min(workers, max(1, torch.cuda.device_count()))
    return max(1, min(workers, max(1, runs)))


def experiment_dry_run(opts: ExperimentOptions, log: Log = lambda m: None) -> dict:
    """The experiment's plan and its estimated cost from measured batches; writes nothing."""
    s = resolve_setting(opts, log)
    run_json = trained_baseline(s)
    choice = choose_window(s, run_json)
    window = choice.window
    plan = plan_arms(s, window, run_json)
    scoring = []
    heads: str | None = None
    for method in s.methods:  # MDA first: its heads are every method's
        job, notes = score_job(s, window, log, method=method, heads=heads)
        heads = heads or ",".join(str(h) for h in job.heads)
        est = score_dry_run(job, log)
        scoring.append({"method": method, "rows": est["rows"], "rows_to_score": est["rows_to_score"],
                        "rows_passed": est["rows_passed"], "heads": est["heads"], "checkpoint": est["checkpoint"],
                        "workers": est["workers"], "calibration": est["calibration"], "seconds": est["estimate"]["seconds"],
                        "notes": notes})
    runs, todo = planned_runs(s, window, plan, run_json)
    corpus = open_corpus(s.baseline.corpus, s.baseline.batch_size)
    steps_per_run = plan.steps - window.start_step
    row_len = int(corpus.row_len)
    timing = time_training(todo[0].spec, window.start_step, log) if todo else None  # type: ignore[arg-type]
    workers = _train_workers(opts, len(todo))
    seconds_train = makespan([steps_per_run * timing.seconds_per_step] * len(todo), workers) if timing else 0.0
    seconds_score = sum(m["seconds"] for m in scoring)
    return {
        "dry_run": True,
        "command": command_line(opts),
        "out": str(s.out),
        "baseline": {"mode": s.baseline.mode, "model": s.baseline.model,
                     "run": str(s.baseline.run_dir) if s.baseline.run_dir is not None else None, "corpus": s.baseline.corpus},
        "window": {"start": window.start_step, "end": window.end_step, "reason": choice.reason,
                   "rows": (window.end_step - window.start_step) * s.baseline.batch_size},
        "heads": heads.split(",") if heads else [],
        "arms": list(s.arms),
        "seeds": list(s.seeds),
        "arm_runs": len(runs),
        "runs_to_train": len(todo),
        "arm_steps": {"from": window.start_step, "to": plan.steps, "steps": steps_per_run},
        "batch_size": s.baseline.batch_size,
        "micro_batch": opts.micro_batch,
        "precision": opts.precision or ("bf16" if timing and timing.autocast else "fp32"),
        "row_len": row_len,
        "rows_removed": plan.n_remove,
        "rows_added": plan.n_add,
        "scoring": scoring,
        "rows_scored": sum(m["rows_to_score"] for m in scoring),
        "tokens_per_run": steps_per_run * s.baseline.batch_size * row_len,
        "tokens_trained": len(todo) * steps_per_run * s.baseline.batch_size * row_len,
        "device": opts.device,
        "train_workers": workers,
        "train_calibration": timing.to_json() if timing else None,
        "estimate": {"seconds_score": seconds_score, "seconds_train": seconds_train, "seconds": seconds_score + seconds_train,
                     "excludes": "starting Ray, building the mixes (FAISS index, synthetic rows), evaluations and "
                                 "checkpoints during training, the report"},
        "notes": plan.notes + s.notes,
    }
