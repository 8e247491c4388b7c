"""`curate score --dry-run`: what a resolved scoring job (`pipelines.score_job.ScoreJob`) would do, and how long it
would take, measured on the real model and real rows; nothing is written.

- The plan (`job_plan`): rows and tokens of the window, heads, the passes over the rows (two fit passes over the
  fit rows when EK-FAC factors are fitted and not cached in `--out`, one score pass over the rows not scored yet),
  batch and shard sizes, and the workers a run would start (local: one per CPU, or per GPU; a Ray cluster is
  asked for its CPUs and GPUs).
- The calibration (`calibrate`): a few batches of each pass timed on the chosen device with one torch thread per
  worker, as a Ray actor runs them (`pipelines.actors.ScoreWorker`): one warm-up batch (not timed), then batches
  until at least `MIN_BATCHES` are timed and `MIN_SECONDS` have passed (at most `MAX_BATCHES`), from the job's
  own fit rows and window rows; the probe gradients are preconditioned once and timed too.
- The estimate: seconds per row of each pass x its rows, spread over the workers shard by shard as the actor pool
  takes them (each task to the first free worker), plus the measured preconditioning. Not included: starting Ray
  and the actors (seconds), merging the top rows (streams the score shards once).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch

from curate.attribution.ekfac import CovarianceAccumulator, IdentityCurvature, LambdaAccumulator
from curate.attribution.factors_io import factor_key, factor_path
from curate.attribution.influence import circuit_probe, probe_gradients
from curate.attribution.scores_folder import FACTORS_DIR
from curate.attribution.scoring import ScoringWorker, split_rows
from curate.pipelines.manifest import Manifest
from curate.pipelines.ray_pool import ray_session
from curate.pipelines.ray_resources import local_cpus, worker_count
from curate.pipelines.score_job import Log, ScoreJob
from curate.pipelines.score_methods import score_method

MIN_BATCHES = 2
"""Timed batches per pass at least (after one warm-up batch)."""
MIN_SECONDS = 1.0
"""Timed seconds per pass at least (more batches are timed while they take less, up to `MAX_BATCHES`)."""
MAX_BATCHES = 32
WORKER_THREADS = 1
"""Torch threads of a scoring worker (`pipelines.actors.WorkerSetup.threads`): the calibration runs with as many."""


@dataclass
class PassTiming:
    """One pass's calibration: batches and rows timed, their seconds, and so seconds per row."""

    name: str
    batches: int
    rows: int
    seconds: float

    @property
    def seconds_per_row(self) -> float:
        return self.seconds / self.rows

    def to_json(self) -> dict:
        return {**asdict(self), "seconds_per_row": self.seconds_per_row}


def _cached_heads(job: ScoreJob) -> list[str]:
    """Heads whose EK-FAC factors are already in `<out>/factors` (a real run loads them instead of fitting)."""
    fp = job.fingerprint["factors"]
    if fp is None:
        return []
    cache = job.out / FACTORS_DIR
    return [str(h) for h in job.heads
            if factor_path(cache, factor_key(job.model_fp, h, job.request.mode, fp["damping"], fp["damping_floor"], job.data_key)).is_file()]


def _workers(job: ScoreJob, tasks: int) -> tuple[int, str]:
    """(workers a real run would start, where): a Ray cluster is joined to count its CPUs and GPUs."""
    req = job.request
    if req.ray_address:
        with ray_session(req.ray_address) as session:
            cpus, gpus = session.cpus, session.gpus
        where = f"Ray cluster {req.ray_address} ({cpus} CPUs, {gpus} GPUs)"
    else:
        cpus = local_cpus(req)
        gpus = torch.cuda.device_count() if req.device == "cuda" else 0
        where = f"local ({cpus} CPUs{f', {gpus} GPUs' if req.device == 'cuda' else ''})"
    return worker_count(req, cpus, gpus, max(1, tasks)), where


def job_plan(job: ScoreJob) -> dict:
    """What a run of `job` would do now (no model is run): counts, passes, sizes and workers."""
    req = job.request
    method = score_method(req.method)
    shards = job.shards()
    if req.force:  # a forced run discards the shards (the factor cache stays)
        todo = shards
    else:
        manifest = Manifest.open(job.out, job.fingerprint)  # reads; a missing manifest is an empty one
        todo = [s for s in shards if not manifest.finished(*s)]
    cached = _cached_heads(job) if method.fits_factors else []
    fit_needed = method.fits_factors and len(cached) < len(job.heads)
    fit_rows = int(len(job.fit_ids)) if fit_needed else 0
    rows_todo = sum(b - a for a, b in todo)
    passes = []
    if fit_needed:
        passes += [{"pass": "fit covariances", "rows": fit_rows}, {"pass": "fit eigenvalues", "rows": fit_rows}]
    passes.append({"pass": "score", "rows": rows_todo})
    fit_chunks = len(split_rows(job.fit_ids, req.shard_rows)) if fit_needed else 0
    workers, where = _workers(job, max(len(todo), fit_chunks))
    return {
        "dry_run": True,
        "method": method.name,
        "circuit": job.circuit.name,
        "checkpoint": job.checkpoint,
        "corpus": job.corpus_spec,
        "out": str(job.out),
        "window": list(job.window),
        "row_range": list(job.rows),
        "rows": job.num_rows,
        "row_len": int(job.corpus.row_len),
        "tokens": job.num_rows * int(job.corpus.row_len),
        "rows_to_score": rows_todo,
        "heads": [str(h) for h in job.heads],
        "mode": req.mode,
        "fit_rows": fit_rows,
        "factors": ("not used" if not method.fits_factors else "cached" if not fit_needed else
                    f"fitted on {fit_rows} rows" + (f" ({len(cached)} of {len(job.heads)} heads cached)" if cached else "")),
        "passes": passes,
        "rows_passed": sum(p["rows"] for p in passes),
        "batch_rows": int(req.batch_rows),
        "shard_rows": int(req.shard_rows),
        "shards": len(shards),
        "shards_to_score": len(todo),
        "device": req.device,
        "workers": workers,
        "where": where,
        "_todo": todo,
    }


def _timed(name: str, batches: list[np.ndarray], run: Callable[[np.ndarray], object], sync: Callable[[], None]) -> tuple[PassTiming, list]:
    """Run batch 0 untimed (warm-up), then time batches 1.. until `MIN_BATCHES` and `MIN_SECONDS` are reached."""
    results = [run(batches[0])]
    sync()
    n = rows = 0
    seconds = 0.0
    for ids in batches[1:]:
        if n >= MIN_BATCHES and seconds >= MIN_SECONDS:
            break
        t0 = time.perf_counter()
        results.append(run(ids))
        sync()
        seconds += time.perf_counter() - t0
        n += 1
        rows += len(ids)
    if n == 0:  # a single batch there: time it again
        t0 = time.perf_counter()
        results.append(run(batches[0]))
        sync()
        seconds, n, rows = time.perf_counter() - t0, 1, len(batches[0])
    return PassTiming(name, n, rows, max(seconds, 1e-9)), results


def _calibration_batches(ids: np.ndarray, batch_rows: int) -> list[np.ndarray]:
    ids = np.asarray(ids, dtype=np.int64)[: (MAX_BATCHES + 1) * batch_rows]
    return [ids[a : a + batch_rows] for a in range(0, len(ids), batch_rows)]


def calibrate(job: ScoreJob, fit: bool, log: Log = lambda s: None) -> tuple[list[PassTiming], float]:
    """Time a few batches of each pass on the job's device and rows (one thread on CPU, as a worker); returns the
    pass timings and the seconds of preconditioning the probe gradients (0 for a method without a probe)."""
    req = job.request
    method = score_method(req.method)
    device = torch.device(req.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    old_threads = torch.get_num_threads()
    torch.set_num_threads(WORKER_THREADS)
    try:
        model = job.model.to(device).eval()
        worker = ScoringWorker(model, job.corpus, job.heads, req.mode, req.seed, req.batch_rows, int(model.config.vocab_size),
                               statistic=method.statistic, token_aggregate=req.token_aggregate)
        timings: list[PassTiming] = []
        factors = IdentityCurvature(req.mode)  # cached factors or gradient-dot: timed with the identity (no fit to use)
        if fit:
            fit_batches = _calibration_batches(job.fit_ids, req.batch_rows)
            log(f"calibrating: fit covariances, up to {len(fit_batches)} batches of {req.batch_rows} rows")
            t, states = _timed("fit covariances", fit_batches, lambda ids: worker.fit_covariance(job.heads, ids), sync)
            timings.append(t)
            cov = CovarianceAccumulator.from_state(states[0])
            for s in states[1:]:
                cov.merge(CovarianceAccumulator.from_state(s))
            bases_state = cov.finalize().state_dict()
            log("calibrating: fit eigenvalues")
            t, states = _timed("fit eigenvalues", fit_batches, lambda ids: worker.fit_lambda(job.heads, bases_state, ids), sync)
            timings.append(t)
            lam = LambdaAccumulator.from_state({**states[0], "bases": bases_state})
            for s in states[1:]:
                lam.merge(LambdaAccumulator.from_state({**s, "bases": bases_state}))
            fp = job.fingerprint["factors"]
            factors = lam.finalize(fp["damping"], fp["damping_floor"])
        seconds_precondition = 0.0
        if method.per_head:
            log("calibrating: probe gradients")
            t0 = time.perf_counter()
            probe_fn, shared = circuit_probe(job.circuit, job.probes)
            grads = probe_gradients(model, probe_fn, job.heads, req.mode, shared=shared)
            preconditioned = factors.precondition(grads)
            sync()
            seconds_precondition = time.perf_counter() - t0
            worker.load_probe(preconditioned)
        a, b = job.rows
        score_batches = _calibration_batches(np.arange(a, b, dtype=np.int64), req.batch_rows)
        log(f"calibrating: score, up to {len(score_batches)} batches of {req.batch_rows} rows")
        t, _ = _timed("score", score_batches, lambda ids: worker.score_rows(int(ids[0]), int(ids[-1]) + 1), sync)
        timings.append(t)
        return timings, seconds_precondition
    finally:
        torch.set_num_threads(old_threads)


def makespan(task_seconds: list[float], workers: int) -> float:
    """Seconds until `workers` workers finish `task_seconds` taken in order, each by the first free worker."""
    free = [0.0] * max(1, workers)
    for s in task_seconds:
        i = min(range(len(free)), key=free.__getitem__)
        free[i] += s
    return max(free)


def dry_run(job: ScoreJob, log: Log = lambda s: None) -> dict:
    """The plan of `job` and its estimated time from a measured calibration; writes nothing."""
    plan = job_plan(job)
    todo = plan.pop("_todo")
    fit = plan["fit_rows"] > 0
    timings, seconds_precondition = calibrate(job, fit, log)
    by_name = {t.name: t for t in timings}
    workers = plan["workers"]
    seconds_fit = 0.0
    if fit:
        chunks = [len(c) for c in split_rows(job.fit_ids, job.request.shard_rows)]
        for name in ("fit covariances", "fit eigenvalues"):
            seconds_fit += makespan([n * by_name[name].seconds_per_row for n in chunks], workers)
    seconds_score = makespan([(b - a) * by_name["score"].seconds_per_row for a, b in todo], workers)
    total = seconds_fit + seconds_precondition + seconds_score
    plan["calibration"] = {
        "device": job.request.device,
        "threads_per_worker": WORKER_THREADS if job.request.device == "cpu" else None,
        "passes": [t.to_json() for t in timings],
        "batches_timed": sum(t.batches for t in timings),
        "seconds_precondition": seconds_precondition,
    }
    plan["estimate"] = {
        "seconds_fit": seconds_fit,
        "seconds_precondition": seconds_precondition,
        "seconds_score": seconds_score,
        "seconds": total,
        "excludes": "starting Ray and the workers, merging the top rows",
    }
    return plan
