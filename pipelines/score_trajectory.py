"""Trajectory scores (`curate score --checkpoints auto|stepK,... --aggregate sum|segment`): the window scored at
several checkpoints of the run, each by an ordinary scoring job with its own EK-FAC fit (one fit per checkpoint,
shared by all heads; `pipelines.score_job` / `score_run`, the one scoring driver and its factor cache), then
combined row by row into the same scores folder format (`attribution.scores_folder`).

- Checkpoints `auto` (`auto_checkpoints`): the run's saved checkpoints inside the window (after its start, up to
  its end) plus the first checkpoint at/after the circuit formed, thinned to at most `AUTO_MAX_CHECKPOINTS`
  evenly spaced ones (the last always kept). By default the window ends at that formation checkpoint, so `auto`
  is the formation checkpoint and up to three earlier ones spread over the window.
- `sum`: every column summed over the checkpoints (TracIn-CP with EK-FAC curvature): head_c and score = the sum
  of the per-checkpoint values; `loss` = the loss at the last checkpoint.
- `segment` (the segment idea of SOURCE, Bae et al. 2024): each row takes every column from the first checkpoint
  whose model has taken the row's step, i.e. the first checkpoint c > step (c >= step + 1: checkpoint stepK holds
  the weights after K optimizer steps, the row of step s goes into the update that yields step s + 1); rows
  consumed at or after the last checkpoint take the last one. The consuming step is the table's `step` column:
  scoring reads the run's corpus in its training order (a run trained under a plan is refused), so row r is
  consumed at step r // batch_size.

Layout: `<out>/checkpoints/step<K>/` is each checkpoint's complete scores folder (its own manifest, factor cache
and shards: a killed job redoes only the unfinished checkpoints and shards); `<out>/shards/` holds the combined
rows, `<out>/summary.json` records `trajectory` {checkpoints, aggregate, folders}. The manifest's fingerprint
names the checkpoint jobs but not the aggregation (changing `--aggregate` recombines the same checkpoint scores);
the summary's `fingerprint_hash` includes the aggregation (`ScoreJob.result_hash`).
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from curate.attribution.score_table import ScoreTable
from curate.errors import CurateError

if TYPE_CHECKING:
    from curate.pipelines.score_job import ScoreJob

Log = Callable[[str], None]
AUTO_MAX_CHECKPOINTS = 4
CHECKPOINTS_DIR = "checkpoints"


def checkpoint_folder(out: Path, step: int) -> Path:
    """Where the scores of checkpoint `step` live inside a trajectory scores folder."""
    return Path(out) / CHECKPOINTS_DIR / f"step{step}"


def auto_checkpoints(saved: list[int], start: int, end: int, formed: int | None, cap: int = AUTO_MAX_CHECKPOINTS) -> list[int]:
    """`--checkpoints auto`: saved checkpoints c with start < c <= end, plus `formed` (the first checkpoint at/after
    formation, when known), thinned to `cap` evenly spaced ones (indices round(i (n-1) / (cap-1))), the last kept."""
    chosen = sorted({c for c in saved if start < c <= end} | ({formed} if formed is not None else set()))
    if not chosen:
        raise CurateError(f"no saved checkpoint of the run lies in the window ({start}, {end}]")
    if len(chosen) <= cap:
        return chosen
    picks = sorted({int(round(i * (len(chosen) - 1) / (cap - 1))) for i in range(cap)})
    return [chosen[i] for i in picks]


def segment_index(steps: np.ndarray, checkpoints: list[int]) -> np.ndarray:
    """Per row, the index of its checkpoint under `segment`: the first checkpoint c > step, else the last."""
    cks = np.asarray(checkpoints, dtype=np.int64)
    return np.minimum(np.searchsorted(cks, np.asarray(steps, dtype=np.int64), side="right"), len(cks) - 1)


def aggregate_tables(tables: list[ScoreTable], checkpoints: list[int], how: str) -> ScoreTable:
    """The checkpoints' score tables of the same rows (in `checkpoints` order) combined by `how` (sum / segment)."""
    if not tables or len(tables) != len(checkpoints):
        raise CurateError("one score table per checkpoint is needed")
    first = tables[0]
    for t in tables[1:]:
        if t.heads != first.heads or not np.array_equal(t.row_id, first.row_id) or not np.array_equal(t.step, first.step):
            raise CurateError("the checkpoints' score tables cover different rows or heads")
    per_head = bool(first.heads)
    values = np.stack([t.head_scores if per_head else t.score[:, None] for t in tables])  # (checkpoints, rows, columns)
    losses = np.stack([t.loss for t in tables])
    if how == "sum":
        combined, loss = values.sum(axis=0), losses[-1]
    elif how == "segment":
        idx = segment_index(first.step, checkpoints)
        rows = np.arange(len(first))
        combined, loss = values[idx, rows], losses[idx, rows]
    else:
        raise CurateError(f"aggregate {how!r}: expected sum or segment")
    meta = {**first.meta, "checkpoints": list(checkpoints), "aggregate": how}
    if per_head:
        return ScoreTable(first.row_id, first.step, loss, combined, list(first.heads), meta)
    return ScoreTable(first.row_id, first.step, loss, np.zeros((len(first), 0)), [], meta, combined[:, 0])


def resolve_steps(spec: str, run_dir: Path | None, formed: int | None, start: int, end: int, where: str) -> list[int]:
    """The checkpoint steps of `--checkpoints` (already parsed-checked): `auto` needs a training run folder."""
    from curate.pipelines.score_request import parse_checkpoints

    parsed = parse_checkpoints(spec)
    if parsed != "auto":
        return list(parsed)  # type: ignore[arg-type]
    if run_dir is None:
        raise CurateError(f"{where}: auto checkpoints need a training run folder (its saved checkpoints); list them as stepK,stepK")
    from curate.training.models import list_checkpoints

    return auto_checkpoints(sorted(list_checkpoints(run_dir)), start, end, formed)


# --------------------------------------------------------------------------- running


def _complete(job: "ScoreJob") -> bool:
    from curate.attribution.scores_folder import read_summary

    summary = read_summary(job.out)
    return summary is not None and summary.get("fingerprint_hash") == job.result_hash


def run_trajectory(job: "ScoreJob", log: Log = lambda s: None) -> dict:
    """Score every checkpoint (each resumable on its own), combine them shard by shard, write the summary."""
    from curate.atomic import file_sha256
    from curate.attribution.scores_folder import (
        begin_results, clear_results, remove_unlisted_shards, shard_file, top_tables, write_summary, write_top_files,
    )
    from curate.outputs import SCORES, check_output_folder
    from curate.paths import portable
    from curate.pipelines.manifest import MANIFEST_FILE, Manifest, ShardRecord
    from curate.pipelines.ray_pool import ray_session
    from curate.pipelines.score_run import SHOW_TOP, _local_cpus, describe_rows, head_metrics, run_job

    req = job.request
    out = job.out
    t0 = time.perf_counter()
    check_output_folder(out, SCORES, [job.corpus.path, *job.corpus.files, job.checkpoint])
    if req.force:
        clear_results(out, also=(MANIFEST_FILE,))
    begin_results(out)
    manifest = Manifest.open(out, job.fingerprint, force=req.force)
    steps = [int(sj.checkpoint_step) for sj in job.trajectory]  # type: ignore[arg-type]
    pending = [sj for sj in job.trajectory if not _complete(sj)]
    session = (ray_session(req.ray_address, num_cpus=None if req.ray_address else _local_cpus(req)) if pending
               else contextlib.nullcontext())
    subs: list[dict] = []
    with session:
        for i, sj in enumerate(job.trajectory):
            state = "done, reused" if sj not in pending else "scoring"
            log(f"trajectory: checkpoint step{sj.checkpoint_step} ({i + 1}/{len(steps)}): {state} -> {sj.out}")
            subs.append(run_job(sj, log))

    # -- combine, shard by shard (cheap: every shard is recombined on every run)
    shards = job.shards()
    remove_unlisted_shards(out, {Path(shard_file(a, b)).name for a, b in shards})
    for a, b in shards:
        tables = [ScoreTable.from_parquet(sj.out / shard_file(a, b)) for sj in job.trajectory]
        combined = aggregate_tables(tables, steps, req.aggregate)
        path = combined.to_parquet(out / shard_file(a, b))
        rec = ShardRecord(a, b, shard_file(a, b), file_sha256(path), b - a)
        manifest.shards[rec.key] = rec
    manifest.save()
    best, worst = top_tables([out / shard_file(a, b) for a, b in shards], job.top_k)
    write_top_files(out, best, worst)

    last = subs[-1]
    summary = dict(last)
    summary.update({
        "corpus": portable(job.corpus_spec, out),
        "out": str(out.resolve()),
        "head_metrics": head_metrics(job),
        "localization": job.localization.to_json(),
        "checkpoint": job.checkpoint,
        "checkpoint_step": job.checkpoint_step,
        "model_fingerprint": job.model_fp,
        "factors": f"one fit per checkpoint ({', '.join(s['factors'] for s in subs)})",
        "rows_scored": sum(int(s["rows_scored"]) for s in subs),
        "shards_scored": sum(int(s["shards_scored"]) for s in subs),
        "shards_skipped": sum(int(s["shards_skipped"]) for s in subs),
        "seconds": round(time.perf_counter() - t0, 3),
        "seconds_fit": round(sum(float(s["seconds_fit"]) for s in subs), 3),
        "seconds_score": round(sum(float(s["seconds_score"]) for s in subs), 3),
        "rows_per_s": None,
        "cpu_seconds_score": round(sum(float(s["cpu_seconds_score"]) for s in subs), 3),
        "retries": [r for s in subs for r in s["retries"]],
        "top_positive": describe_rows(job.corpus, best.slice(0, SHOW_TOP)),
        "top_negative": describe_rows(job.corpus, worst.slice(0, SHOW_TOP)),
        "notes": job.notes + list(job.localization.notes),
        "fingerprint_hash": job.result_hash,
        "trajectory": {
            "checkpoints": steps,
            "aggregate": req.aggregate,
            "folders": [str(sj.out.relative_to(out)) for sj in job.trajectory],
            "checkpoint_paths": [s["checkpoint"] for s in subs],
            "fingerprint_hashes": [s["fingerprint_hash"] for s in subs],
        },
    })
    write_summary(out, summary)
    return summary
