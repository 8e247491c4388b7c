"""Running a resolved scoring job (`pipelines.score_job.ScoreJob`) on a pool of Ray actors.

The scoring driver (`attribution.scoring.ScoringDriver`) runs with the Ray executor (`pipelines.ray_executor`): EK-FAC
is fitted distributed (actors accumulate partial sums of fit-row shards, the driver merges them in shard order and
caches the factors in `<out>/factors/`), the probe gradients are preconditioned once in the driver, the window's
row shards are scored by the actors (each writes its shard atomically, the driver records it in the manifest);
then the top-k rows are merged by streaming, and `summary.json` (`pipelines.score_summary`) is written last.
The baselines (`pipelines.score_methods`) run the same way: gradient-dot preconditions with the identity (no
fit), copy-share and loss skip the fit and the probe and the actors score the shards with the row statistic.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import ray
import torch

from curate.atomic import file_sha256
from curate.attribution.damping import DEFAULT_DAMPING_FLOOR
from curate.attribution.influence import circuit_probe
from curate.attribution.scores_folder import (
    FACTORS_DIR, SHARDS_DIR, TOP_NEGATIVE_FILE, TOP_POSITIVE_FILE, begin_results, clear_results, read_summary,
    remove_unlisted_shards, shard_file, top_tables, write_summary, write_top_files,
)
from curate.attribution.score_table import ScoreTable
from curate.attribution.scoring import FactorFit, ScoringDriver
from curate.outputs import SCORES, check_output_folder
from curate.corpus_digest import content_digest
from curate.paths import portable, portable_if_local
from curate.pipelines.actors import FaultPlan, ScoreWorker, WorkerSetup
from curate.pipelines.manifest import MANIFEST_FILE, Manifest, ShardRecord, fingerprint_hash
from curate.pipelines.ray_executor import RayExecutor
from curate.pipelines.ray_pool import Retry, ray_session
from curate.pipelines.ray_resources import gpus_per_actor, local_cpus, worker_count
from curate.pipelines.score_job import Log, ScoreJob
from curate.pipelines.score_methods import score_method
from curate.pipelines.score_progress import JobProgress
from curate.pipelines.score_summary import ScoreSummary, head_metrics, top_described
from curate.pipelines.score_trajectory import aggregate_tables


DRIVER_THREADS = 1
"""Torch threads of the driver's own numerics (factor eigendecompositions, probe gradients, preconditioning):
fixed, so that every run computes bit-identical factors and probe gradients whatever the machine's default."""


def run_job(job: ScoreJob, log: Log = lambda s: None) -> dict:
    """Fit, score the shards not done yet, merge top-k, write the summary; returns the summary dict."""
    old_threads = torch.get_num_threads()
    torch.set_num_threads(DRIVER_THREADS)
    try:
        assert not job.ensemble, "an --ensemble job runs with pipelines.score_ensemble.run_scoring"
        if job.trajectory:
            return run_trajectory(job, log)
        return _run_job(job, log)
    finally:
        torch.set_num_threads(old_threads)


def _run_job(job: ScoreJob, log: Log) -> dict:
    req = job.request
    t_start = time.perf_counter()
    out = job.out
    check_output_folder(out, SCORES, [job.corpus.path, *job.corpus.files, job.checkpoint])
    if req.force:
        clear_results(out, also=(MANIFEST_FILE,))
    begin_results(out)  # summary.json present = the job is complete
    manifest = Manifest.open(out, job.fingerprint, force=req.force)
    stale = remove_unlisted_shards(out, {Path(rec.file).name for rec in manifest.shards.values()})
    if stale:
        log(f"removed {stale} unrecorded shard file(s) an interrupted run left behind")
    shards = job.shards()
    todo = [s for s in shards if not manifest.finished(*s)]
    skipped = len(shards) - len(todo)
    rows_todo = sum(b - a for a, b in todo)
    if skipped:
        log(f"resuming: {skipped} of {len(shards)} shards already scored ({job.num_rows - rows_todo} rows)")
    retries: list[Retry] = []
    nodes: dict[str, int] = {}
    seconds_fit = seconds_score = cpu_score = 0.0
    workers_used = 0
    fitted = "not needed"
    faults = FaultPlan.from_env(out)
    method = score_method(req.method)

    if todo:
        session_cm = ray_session(req.ray_address, num_cpus=None if req.ray_address else local_cpus(req))
        with session_cm as session, JobProgress(req.progress) as progress:
            setup = WorkerSetup(
                corpus=job.corpus_spec, batch_size=job.corpus.batch_size, heads=list(job.heads), mode=req.mode,
                seed=req.seed, batch_rows=req.batch_rows, device=req.device, vocab_size=int(job.model.config.vocab_size),
                shard_meta={"circuit": job.circuit.name, "mode": req.mode, "heads": [str(h) for h in job.heads],
                            "job": fingerprint_hash(job.fingerprint), **({} if method.name == "mda" else {"method": method.name}),
                            **({} if req.token_aggregate == "sum" else {"token_aggregate": req.token_aggregate})},
                faults=faults, statistic=method.statistic, token_aggregate=req.token_aggregate,
            )
            model_ref = ray.put(job.model.cpu())
            workers_used = worker_count(req, session.cpus, session.gpus, len(todo))
            gpus = gpus_per_actor(req, session.gpus, workers_used)
            # SPREAD: the actors go to as many nodes as the cluster has (one node's loss costs the fewest)
            remote_cls = ray.remote(ScoreWorker).options(num_cpus=1, num_gpus=gpus, max_restarts=0, scheduling_strategy="SPREAD")
            where = f"joined {req.ray_address}" if req.ray_address else "local"
            log(f"ray: {where} ({session.cpus} CPUs, {session.gpus} GPUs); {workers_used} worker(s), {len(todo)} shard(s) to score")

            executor = RayExecutor(lambda precond_ref: remote_cls.remote(setup, model_ref, precond_ref), workers_used, job,
                                   manifest, progress, rows_todo, log)
            fit = FactorFit(job.fit_ids, job.data_key, float(req.damping), DEFAULT_DAMPING_FLOOR, req.shard_rows)
            driver = ScoringDriver(executor, job.model, job.heads, req.mode, fit, out / FACTORS_DIR, job.model_fp,
                                   curvature=method.curvature or "ekfac")
            try:
                preconditioned = None
                if method.per_head:
                    factors = driver.fit_curvature()
                    if method.fits_factors:
                        fitted = f"fitted on {len(job.fit_ids)} rows" if driver.fitted else "loaded from the cache"
                    seconds_fit = driver.seconds_fit
                    # probe gradients, preconditioned once in the driver, shipped once per actor
                    probe_fn, shared = circuit_probe(job.circuit, job.probes)
                    preconditioned = driver.precondition(factors, probe_fn, shared)
                t1 = time.perf_counter()
                driver.score(preconditioned, todo)
                seconds_score = time.perf_counter() - t1
                cpu_score = executor.cpu_seconds
                retries = list(executor.pool.retries)
                nodes = dict(sorted(executor.nodes.items()))
            finally:
                executor.pool.shutdown()

    # -- top-k, by streaming the shard files
    best, worst = top_tables([out / shard_file(a, b) for a, b in shards], job.top_k)
    write_top_files(out, best, worst)
    positive, negative = top_described(job, best, worst)

    seconds = time.perf_counter() - t_start
    if not method.fits_factors:
        fitted = f"not used by {method.name}"
    summary = ScoreSummary(
        method=method.name, corpus=portable(job.corpus_spec, out), corpus_absolute=job.corpus_spec,
        corpus_digest=content_digest(job.corpus), out=str(out.resolve()),
        circuit=job.circuit.name, heads=[str(h) for h in job.heads], head_metrics=head_metrics(job),
        localization=job.localization.to_json(), mode=req.mode, window=list(job.window), row_range=list(job.rows),
        batch_size=int(job.corpus.batch_size), rows=job.num_rows, rows_scored=rows_todo, checkpoint=portable_if_local(job.checkpoint, out), checkpoint_absolute=job.checkpoint,
        checkpoint_step=job.checkpoint_step, model_fingerprint=job.model_fp, factors=fitted, fit_rows=int(len(job.fit_ids)),
        seed=req.seed, top_k=job.top_k, top_positive=positive, top_negative=negative,
        top_files={"positive": TOP_POSITIVE_FILE, "negative": TOP_NEGATIVE_FILE}, shards_dir=SHARDS_DIR,
        shards=len(shards), shards_scored=len(todo), shards_skipped=skipped, workers=workers_used,
        ray_address=req.ray_address, device=req.device, seconds=round(seconds, 3), seconds_fit=round(seconds_fit, 3),
        seconds_score=round(seconds_score, 3), rows_per_s=round(rows_todo / seconds_score, 1) if seconds_score > 0 else None,
        cpu_seconds_score=round(cpu_score, 3), retries=[r.to_json() for r in retries],
        retried_shards=len({tuple(r.key) for r in retries if r.phase == "score"}), nodes=nodes,
        notes=job.notes + list(job.localization.notes), fingerprint_hash=job.result_hash,
        token_aggregate=None if req.token_aggregate == "sum" else req.token_aggregate,
    ).to_json()
    write_summary(out, summary)  # last: the folder is complete
    return summary


# --------------------------------------------------------------------------- trajectory scores


def _complete(job: ScoreJob) -> bool:
    summary = read_summary(job.out)
    return summary is not None and summary.get("fingerprint_hash") == job.result_hash


def run_trajectory(job: ScoreJob, log: Log = lambda s: None) -> dict:
    """Trajectory scores (`pipelines.score_trajectory`): score every checkpoint (each resumable on its own), combine them shard by shard, write the summary."""
    req = job.request
    out = job.out
    t0 = time.perf_counter()
    check_output_folder(out, SCORES, [job.corpus.path, *job.corpus.files, job.checkpoint])
    if req.force:
        clear_results(out, also=(MANIFEST_FILE,))
    begin_results(out)
    manifest = Manifest.open(out, job.fingerprint, force=req.force)
    manifest.save()  # before the first checkpoint: a job killed inside a checkpoint finds its own folder on rerun
    steps = [int(sj.checkpoint_step) for sj in job.trajectory]  # type: ignore[arg-type]
    pending = [sj for sj in job.trajectory if not _complete(sj)]
    session = (ray_session(req.ray_address, num_cpus=None if req.ray_address else local_cpus(req)) if pending
               else contextlib.nullcontext())
    subs: list[dict] = []
    with session:
        for i, sj in enumerate(job.trajectory):
            state = "done, reused" if sj not in pending else "scoring"
            log(f"trajectory: checkpoint step{sj.checkpoint_step} ({i + 1}/{len(steps)}): {state} -> {sj.out}")
            subs.append(run_job(sj, log))

    positive, negative = write_combined(job, manifest, lambda shard: aggregate_tables(
        [ScoreTable.from_parquet(sj.out / shard) for sj in job.trajectory], steps, req.aggregate, job.weights))
    summary = replace(
        ScoreSummary.from_json(subs[-1]),
        corpus=portable(job.corpus_spec, out), out=str(out.resolve()), head_metrics=head_metrics(job),
        localization=job.localization.to_json(), checkpoint=portable_if_local(job.checkpoint, out), checkpoint_absolute=job.checkpoint,
        checkpoint_step=job.checkpoint_step,
        model_fingerprint=job.model_fp, factors=f"one fit per checkpoint ({', '.join(s['factors'] for s in subs)})",
        **summed_work(subs), seconds=round(time.perf_counter() - t0, 3), top_positive=positive, top_negative=negative,
        notes=job.notes + list(job.localization.notes), fingerprint_hash=job.result_hash,
        trajectory={
            "checkpoints": steps,
            "aggregate": req.aggregate,
            **({} if job.weights is None else {"weights": job.weights}),
            "folders": [str(sj.out.relative_to(out)) for sj in job.trajectory],
            "checkpoint_paths": [s.get("checkpoint_absolute", s["checkpoint"]) for s in subs],
            "fingerprint_hashes": [s["fingerprint_hash"] for s in subs],
        },
    ).to_json()
    write_summary(out, summary)
    return summary


def write_combined(job: ScoreJob, manifest: Manifest, combine: Callable[[str], ScoreTable]) -> tuple[list, list]:
    """Write a combined job's shards (`combine(shard file name)` -> its table; cheap, so every shard is recombined on
    every run), its manifest and top files; returns the described top rows (positive, negative)."""
    out = job.out
    shards = job.shards()
    remove_unlisted_shards(out, {Path(shard_file(a, b)).name for a, b in shards})
    for a, b in shards:
        path = combine(shard_file(a, b)).to_parquet(out / shard_file(a, b))
        rec = ShardRecord(a, b, shard_file(a, b), file_sha256(path), b - a)
        manifest.shards[rec.key] = rec
    manifest.save()
    best, worst = top_tables([out / shard_file(a, b) for a, b in shards], job.top_k)
    write_top_files(out, best, worst)
    return top_described(job, best, worst)


def summed_work(subs: list[dict]) -> dict:
    """The summary fields of a combined job that add up its parts' work (rows, shards, seconds, retries)."""
    def total(key: str) -> float:
        return round(sum(float(s[key]) for s in subs), 3)

    return {"rows_scored": sum(int(s["rows_scored"]) for s in subs), "shards_scored": sum(int(s["shards_scored"]) for s in subs),
            "shards_skipped": sum(int(s["shards_skipped"]) for s in subs), "seconds_fit": total("seconds_fit"),
            "seconds_score": total("seconds_score"), "rows_per_s": None, "cpu_seconds_score": total("cpu_seconds_score"),
            "retries": [r for s in subs for r in s["retries"]]}
