"""Trajectory scores (`curate score --checkpoints auto|transition[:N]|stepK,... --aggregate sum|lr-sum|segment`): the window scored at
several checkpoints of the run, each by an ordinary scoring job with its own EK-FAC fit (one fit per checkpoint,
shared by all heads; `pipelines.score_job` / `score_run`, the one scoring driver and its factor cache), then
combined row by row into the same scores folder format (`attribution.scores_folder`).

- Checkpoints `auto` (`auto_checkpoints`): the run's saved checkpoints inside the window (after its start, up to
  its end) plus the first checkpoint at/after the circuit formed, thinned to at most `AUTO_MAX_CHECKPOINTS`
  spread evenly over the steps (the last always kept). By default the window ends at that formation checkpoint,
  so on the reference run (window 0-1,700, checkpoints every 100) `auto` is step400, step900, step1300, step1700.
- Checkpoints `transition[:N]` (`transition_checkpoints`): the N (default 4) saved checkpoints that end at the first
  checkpoint at/after the circuit formed, consecutive (dense around the transition, where influence peaks and can
  change sign, Lee et al. 2025), after the window's start; on the reference run step1400, 1500, 1600, 1700.
- `sum`: every column summed over the checkpoints (TracIn-CP with EK-FAC curvature): head_c and score = the sum
  of the per-checkpoint values; `loss` = the loss at the last checkpoint.
- `lr-sum` (TracIn, Pruthi et al. 2020): the sum with checkpoint stepK's values weighted by the learning rate of
  the update that produced it (`training.spec.checkpoint_lr`: the step size between the previous checkpoint and
  this one; warm-up checkpoints weigh less), read from the scored run's `run.json` (`checkpoint_weights`): head_c
  and score = sum_i lr_i * value_i; `loss` = the loss at the last checkpoint. A model without a curate run folder
  (its schedule unknown) is refused.
- `segment` (the segment idea of SOURCE, Bae et al. 2024): each row takes every column from the first checkpoint
  whose model has taken the row's step, i.e. the first checkpoint c > step (c >= step + 1: checkpoint stepK holds
  the weights after K optimizer steps, the row of step s goes into the update that yields step s + 1); rows
  consumed at or after the last checkpoint take the last one. The consuming step is the table's `step` column:
  scoring reads the run's corpus in its training order (a run trained under a plan is refused), so row r is
  consumed at step r // batch_size.
- Gradient norms (`grad_norm_L_H`, `grad_norm`: `attribution.score_table`), where every checkpoint's table has them:
  under `sum` the root of the summed squares over the checkpoints (the norm of the checkpoints' gradients stacked
  into one vector, the vector the summed score is a dot product of; under `lr-sum` each checkpoint's norm times its
  weight first); under `segment` the chosen checkpoint's. A
  table without them (a statistic method, or scores written before norms were recorded) makes the combination
  have none.

Layout: `<out>/checkpoints/step<K>/` is each checkpoint's complete scores folder (its own manifest, factor cache
and shards: a killed job redoes only the unfinished checkpoints and shards); `<out>/shards/` holds the combined
rows, `<out>/summary.json` records `trajectory` {checkpoints, aggregate, folders}. The manifest's fingerprint
names the checkpoint jobs but not the aggregation (changing `--aggregate` recombines the same checkpoint scores);
the summary's `fingerprint_hash` includes the aggregation and lr-sum's weights (`ScoreJob.result_hash`). The rules live here; the job
is resolved by `pipelines.score_job` and run by `pipelines.score_run.run_trajectory`.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from curate.attribution.score_table import ScoreTable
from curate.errors import CurateError
from curate.training.models import RUN_FILE, list_checkpoints
from curate.training.spec import checkpoint_lr, stored_spec

AUTO_MAX_CHECKPOINTS = 4
CHECKPOINTS_DIR = "checkpoints"


def checkpoint_folder(out: Path, step: int) -> Path:
    """Where the scores of checkpoint `step` live inside a trajectory scores folder."""
    return Path(out) / CHECKPOINTS_DIR / f"step{step}"


def auto_checkpoints(saved: list[int], start: int, end: int, formed: int | None, cap: int = AUTO_MAX_CHECKPOINTS) -> list[int]:
    """`--checkpoints auto`: the saved checkpoints c with start < c <= end, plus `formed` (the first checkpoint at/after
    formation, when known); more than `cap` are thinned by step: for the targets start + (last - start) i / cap,
    i = 1..cap, the nearest candidate (ties: the later one), so the picks spread over the window's steps (a run's
    dense early log-spaced checkpoints do not crowd them) and the last candidate is always kept."""
    chosen = sorted({c for c in saved if start < c <= end} | ({formed} if formed is not None else set()))
    if not chosen:
        raise CurateError(f"no saved checkpoint of the run lies in the window ({start}, {end}]")
    if len(chosen) <= cap:
        return chosen
    last = chosen[-1]
    picks = {min(chosen, key=lambda c: (abs(c - (start + (last - start) * i / cap)), -c)) for i in range(1, cap + 1)}
    return sorted(picks)


def transition_checkpoints(saved: list[int], start: int, formed: int | None, n: int, where: str) -> list[int]:
    """`--checkpoints transition:N`: the last `n` saved checkpoints c with start < c <= `formed` (the first checkpoint
    at/after formation), i.e. consecutive saved checkpoints ending there (fewer when the window holds fewer)."""
    if formed is None:
        raise CurateError(f"{where}: transition needs the step where the circuit formed, and it never formed in the run "
                          f"(or the run records no curve): list the checkpoints as stepK,stepK")
    chosen = sorted(c for c in saved if start < c <= formed)
    if not chosen:
        raise CurateError(f"{where}: no saved checkpoint of the run lies in ({start}, {formed}]")
    return chosen[-n:]


def segment_index(steps: np.ndarray, checkpoints: list[int]) -> np.ndarray:
    """Per row, the index of its checkpoint under `segment`: the first checkpoint c > step, else the last."""
    cks = np.asarray(checkpoints, dtype=np.int64)
    return np.minimum(np.searchsorted(cks, np.asarray(steps, dtype=np.int64), side="right"), len(cks) - 1)


def checkpoint_weights(run_dir: Path | None, checkpoints: list[int], where: str) -> list[float]:
    """`lr-sum`'s weights: per checkpoint, the learning rate of the update that produced it under the schedule of the
    run in `run_dir` (its run.json spec). A model without a curate run folder has no known schedule: one line."""
    path = None if run_dir is None else Path(run_dir) / RUN_FILE
    if path is None or not path.is_file():
        what = "the model" if run_dir is None else str(run_dir)
        raise CurateError(f"{where}: lr-sum weights each checkpoint by the learning rate its run used, and {what} is not a curate "
                          f"training run folder with a {RUN_FILE} (its schedule is unknown): use --aggregate sum or segment")
    try:
        spec = stored_spec(json.loads(path.read_text()), Path(run_dir))  # type: ignore[arg-type]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CurateError(f"{path}: cannot read the run's schedule ({e})") from None
    return [checkpoint_lr(spec, c) for c in checkpoints]


def aggregate_tables(tables: list[ScoreTable], checkpoints: list[int], how: str, weights: list[float] | None = None) -> ScoreTable:
    """The checkpoints' score tables of the same rows (in `checkpoints` order) combined by `how` (sum / lr-sum with
    `weights`, one per checkpoint / segment)."""
    if not tables or len(tables) != len(checkpoints):
        raise CurateError("one score table per checkpoint is needed")
    if (how == "lr-sum") != (weights is not None) or (weights is not None and len(weights) != len(tables)):
        raise CurateError("lr-sum takes one weight per checkpoint (and only lr-sum takes weights)")
    first = tables[0]
    for t in tables[1:]:
        if t.heads != first.heads or not np.array_equal(t.row_id, first.row_id) or not np.array_equal(t.step, first.step):
            raise CurateError("the checkpoints' score tables cover different rows or heads")
    per_head = bool(first.heads)
    values = np.stack([t.head_scores if per_head else t.score[:, None] for t in tables])  # (checkpoints, rows, columns)
    losses = np.stack([t.loss for t in tables])
    if how == "sum":
        combined, loss = values.sum(axis=0), losses[-1]
    elif how == "lr-sum":
        combined, loss = (values * np.asarray(weights, dtype=np.float64)[:, None, None]).sum(axis=0), losses[-1]
    elif how == "segment":
        idx = segment_index(first.step, checkpoints)
        rows = np.arange(len(first))
        combined, loss = values[idx, rows], losses[idx, rows]
    else:
        raise CurateError(f"aggregate {how!r}: expected sum, lr-sum or segment")
    norms = None
    if per_head and all(t.grad_norms is not None for t in tables):
        stacked = np.stack([t.grad_norms for t in tables])  # type: ignore[misc]
        if how == "segment":
            norms = stacked[idx, rows]
        else:  # sum / lr-sum: the root of the summed (weighted) squares
            w = np.ones(len(tables)) if weights is None else np.asarray(weights, dtype=np.float64)
            norms = np.sqrt(np.square(stacked * w[:, None, None]).sum(axis=0))
    meta = {**first.meta, "checkpoints": list(checkpoints), "aggregate": how}
    if weights is not None:
        meta["weights"] = [float(w) for w in weights]
    if per_head:
        return ScoreTable(first.row_id, first.step, loss, combined, list(first.heads), meta, None, norms)
    return ScoreTable(first.row_id, first.step, loss, np.zeros((len(first), 0)), [], meta, combined[:, 0])


def resolve_steps(spec: str, run_dir: Path | None, formed: int | None, start: int, end: int, where: str) -> list[int]:
    """The checkpoint steps of `--checkpoints` (already parsed-checked): `auto` and `transition` need a training run folder."""
    from curate.pipelines.score_request import parse_checkpoints

    parsed = parse_checkpoints(spec)
    if isinstance(parsed, list):
        return parsed
    name = parsed if isinstance(parsed, str) else parsed[0]
    if run_dir is None:
        raise CurateError(f"{where}: {name} checkpoints need a training run folder (its saved checkpoints); list them as stepK,stepK")
    saved = sorted(list_checkpoints(run_dir))
    if isinstance(parsed, tuple):
        return transition_checkpoints(saved, start, formed, parsed[1], where)
    return auto_checkpoints(saved, start, end, formed)
