"""Ensemble scores (`curate score --ensemble RUN,RUN,...` or `--ensemble K`): the window scored with K reference runs
trained on the same corpus in the same row order with different initialisation seeds, each by an ordinary scoring
job (`pipelines.score_job` / `score_run`: its own checkpoint after formation, its own localized heads, its own
EK-FAC fit), then combined row by row into one scores folder of the usual format (`attribution.scores_folder`):

    score(row) = mean over the members m of score_m(row) / sd_m

where sd_m is member m's sample standard deviation of `score` over the window (`curate.stats.mean_std`): each
member weighs the same whatever the scale of its influence scores. `loss` is the members' mean loss; the combined
table has no per-head columns (the members' heads differ).

- The members: run folders as given, or K = the workspace's reference run plus reference runs of seeds 1..K-1
  (`training.reference.ensure_reference_run`, `curate train --default --seed S` into
  `<workspace>/default/runs/reference-seedS`), trained first when missing.
- The window: `--window`, else the members' common window (each member's default ends at its own checkpoint after
  formation, which differs by seed: the ensemble scores the steps every member has trained on, from the latest start
  to the earliest end). The members are then resolved again with that window.
- Every member must score the same rows of the same corpus (content digest, rows, batch size): another is refused
  with one line, before anything is written.

Layout: `<out>/members/<i>-<run name>/` is each member's complete scores folder (its own manifest, factor cache and
shards: a killed job rescores only the unfinished members, a finished member is reused as it is); `<out>/shards/`
holds the combined rows (recombined on every run), `<out>/summary.json` records `ensemble` {members, combine}; the
summary's heads, checkpoint and head metrics are the first member's. The manifest's fingerprint is the members'
result hashes.

`curate score` resolves and runs every job through `resolve_scoring` / `run_scoring` (an ensemble here, one model by
`score_job.resolve_job` / `score_run.run_job`, which this module calls for each member).
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from curate.attribution.circuits import get_circuit
from curate.attribution.score_table import ScoreTable
from curate.attribution.scores_folder import begin_results, clear_results, open_scores, read_summary, write_summary
from curate.corpus_digest import content_digest
from curate.errors import CurateError
from curate.options import flag
from curate.outputs import SCORES, check_output_folder
from curate.paths import portable, portable_if_local
from curate.pipelines.manifest import MANIFEST_FILE, Manifest
from curate.pipelines.ray_pool import ray_session
from curate.pipelines.ray_resources import local_cpus
from curate.pipelines.score_job import Log, ScoreJob, resolve_job
from curate.pipelines.score_request import ScoreRequest, check_request, parse_ensemble
from curate.pipelines import score_run  # its run_job read at call time: what a test stubs there is what runs
from curate.pipelines.score_summary import ScoreSummary, head_metrics
from curate.stats import mean_std
from curate.training.reference import ensure_reference_run
from curate.workspace import resolve_workspace, scores_dir

ENSEMBLE_VERSION = 1
MEMBERS_DIR = "members"
COMBINE = "mean over the members of score / sd, sd = the member's sample standard deviation of score over the window"


# --------------------------------------------------------------------------- entry points


def resolve_scoring(req: ScoreRequest, log: Log = lambda s: None) -> ScoreJob:
    """`curate score`'s job: the ensemble's (`--ensemble`) or the one model's (`score_job.resolve_job`); writes nothing."""
    return resolve_ensemble(req, log) if req.ensemble is not None else resolve_job(req, log)


def run_scoring(job: ScoreJob, log: Log = lambda s: None) -> dict:
    """Run a job of `resolve_scoring`; returns its summary."""
    return run_ensemble(job, log) if job.ensemble else score_run.run_job(job, log)


# --------------------------------------------------------------------------- the rules


def member_folder(out: Path, index: int, run: str | Path) -> Path:
    """Where member `index` (run folder `run`) keeps its scores inside an ensemble scores folder."""
    return out / MEMBERS_DIR / f"{index}-{Path(run).expanduser().resolve().name}"


def score_sd(folder: Path) -> float:
    """A member's sample standard deviation of `score` over its window (its complete scores folder)."""
    scores = open_scores(folder)
    values = np.concatenate([batch["score"] for batch in scores.iter_columns(["score"])])
    sd = mean_std(values)[1]
    if sd is None or not np.isfinite(sd) or sd <= 0:
        raise CurateError(f"{folder}: its scores do not vary over the window (sd {sd}): an ensemble cannot standardise them")
    return float(sd)


def standardised_mean(tables: list[ScoreTable], sds: list[float]) -> ScoreTable:
    """One shard of the members' scores combined: the mean of score / sd, the mean loss, no per-head columns."""
    first = tables[0]
    for t in tables[1:]:
        if not (np.array_equal(t.row_id, first.row_id) and np.array_equal(t.step, first.step)):
            raise CurateError("the members' score shards hold different rows; every member must score the same window")
    score = np.mean([t.score / sd for t, sd in zip(tables, sds)], axis=0)
    loss = np.mean([t.loss.astype(np.float64) for t in tables], axis=0)
    meta = {"ensemble": {"members": len(tables), "sd": [float(s) for s in sds], "combine": COMBINE}}
    return ScoreTable(first.row_id, first.step, loss, np.zeros((len(first), 0)), [], meta, score)


def common_window(windows: list[tuple[int, int]]) -> tuple[int, int]:
    """The steps every member's window holds: the latest start to the earliest end."""
    start, end = max(w[0] for w in windows), min(w[1] for w in windows)
    if end <= start:
        raise CurateError(f"the members' windows {', '.join(f'{a}:{b}' for a, b in windows)} share no step; give --window START:END")
    return start, end


# --------------------------------------------------------------------------- resolve


def _member_runs(req: ScoreRequest, log: Log) -> list[str]:
    """The members' run folders: as given, or the reference runs of seeds 0..K-1 (trained first when missing)."""
    members = parse_ensemble(req.ensemble)  # type: ignore[arg-type]
    if isinstance(members, list):
        return members
    ws = resolve_workspace(req.workspace)
    return [str(ensure_reference_run(ws, req.progress, log, seed=s)) for s in range(members)]


def _resolve_members(req: ScoreRequest, runs: list[str], out: Path, log: Log) -> tuple[list[ScoreJob], list[str]]:
    """Each member's job (the ensemble's options, its own run, its folder), on `--window` or the common window."""
    def member(i: int, run: str, window: str | None, force: bool) -> ScoreJob:
        sub = replace(req, ensemble=None, model=run, out=member_folder(out, i, run), window=window, force=force)
        return resolve_job(sub, log)

    notes: list[str] = []
    window = req.window
    if window is None:  # the windows each member would score alone (force: only to read them, nothing is checked or written)
        windows = [member(i, run, None, True).window for i, run in enumerate(runs)]
        start, end = common_window(windows)
        if len(set(windows)) > 1:
            notes.append(f"the members' own windows are {', '.join(f'{a}:{b}' for a, b in windows)}: every member scores "
                         f"their common window {start}:{end}")
        window = f"{start}:{end}"
    return [member(i, run, window, req.force) for i, run in enumerate(runs)], notes


def _check_same_rows(members: list[ScoreJob], runs: list[str], req: ScoreRequest) -> None:
    """Every member scores the same rows (window, batch size) of the same corpus content; one line otherwise."""
    def identity(job: ScoreJob) -> tuple:
        return content_digest(job.corpus), job.rows, job.window, int(job.corpus.batch_size)

    first = identity(members[0])
    for run, job in zip(runs[1:], members[1:]):
        mine = identity(job)
        if mine != first:
            what = "another corpus" if mine[0] != first[0] else f"rows {mine[1][0]}:{mine[1][1]} (window {mine[2][0]}:{mine[2][1]} at batch {mine[3]})"
            raise CurateError(f"{flag(req, 'ensemble')}: {run} scores {what}, not the first member's rows {first[1][0]}:{first[1][1]} "
                              f"(window {first[2][0]}:{first[2][1]} at batch {first[3]}) of {members[0].corpus.path}: "
                              f"every member must be trained on the same corpus in the same row order")


def resolve_ensemble(req: ScoreRequest, log: Log = lambda s: None) -> ScoreJob:
    """Validate the request, resolve every member (training the seeded reference runs `--ensemble K` needs) and check
    they score the same rows; writes nothing to the output folder."""
    circuit = get_circuit(req.circuit)
    if req.mode is None:
        req = replace(req, mode=circuit.default_mode)
    check_request(req)
    ws = resolve_workspace(req.workspace)
    runs = _member_runs(req, log)
    if req.out is not None:
        out = Path(req.out).absolute()
    else:
        default = scores_dir(ws, circuit.name, req.method, trajectory=req.checkpoints is not None)
        out = default.with_name(f"{default.name}-ensemble{len(runs)}").absolute()
    if out.exists() and not out.is_dir():
        raise CurateError(f"{out}: exists and is not a folder")
    members, notes = _resolve_members(req, runs, out, log)
    _check_same_rows(members, runs, req)
    first = members[0]
    inputs = [first.corpus.path, *first.corpus.files, *runs, *(m.checkpoint for m in members)]
    check_output_folder(out, SCORES, inputs)
    fingerprint = {"version": ENSEMBLE_VERSION, "ensemble": [m.result_hash for m in members], "combine": COMBINE}
    if not req.force:
        Manifest.open(out, fingerprint)  # a different job's results there: one line, nothing touched
    for i, (run, m) in enumerate(zip(runs, members)):
        notes += [f"member {i} ({Path(run).name}): {n}" for n in m.notes + list(m.localization.notes)]
    return replace(first, request=req, out=out, fingerprint=fingerprint, notes=notes, trajectory=[], ensemble=members,
                   localization=replace(first.localization, notes=[]))


# --------------------------------------------------------------------------- run


def _finished(job: ScoreJob) -> dict | None:
    """The member's summary when its folder holds this very job, complete."""
    summary = read_summary(job.out)
    return summary if summary is not None and summary.get("fingerprint_hash") == job.result_hash else None


def _reused(summary: dict) -> dict:
    """A finished member's summary as this run's work on it: nothing scored, fitted or retried, every shard skipped."""
    return {**summary, "rows_scored": 0, "shards_scored": 0, "shards_skipped": int(summary["shards"]), "seconds_fit": 0.0,
            "seconds_score": 0.0, "cpu_seconds_score": 0.0, "retries": [], "factors": "reused"}


def run_ensemble(job: ScoreJob, log: Log = lambda s: None) -> dict:
    """Score the members not finished yet (each resumable on its own), combine them shard by shard, write the summary."""
    req = job.request
    out = job.out
    t0 = time.perf_counter()
    members = job.ensemble
    check_output_folder(out, SCORES, [job.corpus.path, *job.corpus.files, *(m.checkpoint for m in members)])
    if req.force:
        clear_results(out, also=(MANIFEST_FILE,))
    begin_results(out)
    manifest = Manifest.open(out, job.fingerprint, force=req.force)
    manifest.save()  # before the first member: a job killed inside a member finds its own folder on rerun
    done = [None if req.force else _finished(m) for m in members]
    session = (ray_session(req.ray_address, num_cpus=None if req.ray_address else local_cpus(req))
               if any(d is None for d in done) else contextlib.nullcontext())
    subs: list[dict] = []
    with session:
        for i, (m, d) in enumerate(zip(members, done)):
            log(f"ensemble: member {i + 1}/{len(members)} ({m.request.model}): {'done, reused' if d else 'scoring'} -> {m.out}")
            subs.append(_reused(d) if d is not None else score_run.run_job(m, log))

    sds = [score_sd(m.out) for m in members]
    positive, negative = score_run.write_combined(job, manifest, lambda shard: standardised_mean(
        [ScoreTable.from_parquet(m.out / shard) for m in members], sds))
    summary = replace(
        ScoreSummary.from_json(subs[0]),
        corpus=portable(job.corpus_spec, out), out=str(out.resolve()), head_metrics=head_metrics(job),
        localization=job.localization.to_json(), checkpoint=portable_if_local(job.checkpoint, out), checkpoint_absolute=job.checkpoint,
        factors=f"one fit per member ({', '.join(str(s['factors']) for s in subs)})",
        **score_run.summed_work(subs), seconds=round(time.perf_counter() - t0, 3), top_positive=positive, top_negative=negative,
        notes=list(job.notes), fingerprint_hash=job.result_hash, trajectory=None,
        ensemble={
            "members": [{"run": str(Path(str(m.request.model)).resolve()), "folder": str(m.out.relative_to(out)),
                         "heads": s["heads"], "checkpoint": s.get("checkpoint_absolute", s["checkpoint"]),
                         "checkpoint_step": s.get("checkpoint_step"), "score_sd": sd, "fingerprint_hash": s["fingerprint_hash"]}
                        for m, s, sd in zip(members, subs, sds)],
            "combine": COMBINE,
            "heads_option": req.heads,  # --heads as given: auto localizes each member's own heads
        },
    ).to_json()
    write_summary(out, summary)
    return summary
