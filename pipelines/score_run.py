"""Running a resolved scoring job (`pipelines.score_job.ScoreJob`) on a pool of Ray actors.

EK-FAC is fitted distributed (actors accumulate partial sums of fit-row shards, the driver merges them in
shard order and caches the factors), the probe gradients are preconditioned once in the driver, the window's
row shards are scored by the actors (each writes its shard atomically, the driver records it in the manifest),
the top-k rows are merged by streaming, and `summary.json` is written last.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from curate.attribution.ekfac import DEFAULT_DAMPING, DEFAULT_DAMPING_FLOOR, CovarianceAccumulator, EKFACFactors, LambdaAccumulator
from curate.attribution.factors_io import load_factors, save_factors
from curate.attribution.heads import HeadBlocks, HeadRef
from curate.attribution.influence import circuit_probe, probe_gradients
from curate.atomic import atomic_path, write_json
from curate.outputs import SCORES, check_output_folder
from curate.corpus import Corpus
from curate.errors import CurateError
from curate.pipelines.actors import FaultPlan, ScoreWorker, WorkerSetup
from curate.pipelines.manifest import MANIFEST_FILE, Manifest, ShardRecord, fingerprint_hash
from curate.pipelines.score_job import (
    FACTORS_DIR, SHARDS_DIR, SHOW_TOP, SUMMARY_FILE, TEXT_CHARS, TOP_NEGATIVE_FILE, TOP_POSITIVE_FILE, Log, ScoreJob,
    ScoreRequest,
)
from curate.pipelines.topk import top_rows


# --------------------------------------------------------------------------- progress


class JobProgress:
    """A rich progress bar per phase (rows done, rows/s, ETA) on stderr; silent when disabled."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._progress = None
        self._task = None

    def __enter__(self) -> "JobProgress":
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
            from rich.text import Text

            class RowsPerSecond(ProgressColumn):
                def render(self, task) -> Text:
                    speed = task.finished_speed or task.speed
                    return Text(f"{speed:,.0f} rows/s" if speed else "- rows/s")

            self._progress = Progress(
                TextColumn("[bold]{task.description:<16}"), BarColumn(), MofNCompleteColumn(), RowsPerSecond(),
                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=Console(stderr=True),
            )
            self._progress.__enter__()
        return self

    def phase(self, name: str, total: int, done: int = 0) -> None:
        if self._progress is not None:
            self._task = self._progress.add_task(name, total=total, completed=done)

    def advance(self, rows: int) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, rows)

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)


# --------------------------------------------------------------------------- run


def _clear_outputs(out: Path) -> None:
    """Remove a previous job's results (manifest, shards, top files, summary); the factor cache stays."""
    for name in (MANIFEST_FILE, SUMMARY_FILE, TOP_POSITIVE_FILE, TOP_NEGATIVE_FILE):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / SHARDS_DIR, ignore_errors=True)


def _remove_stale_shards(out: Path, manifest: Manifest) -> int:
    """Delete shard files (and temporaries of killed writers) the manifest does not list."""
    folder = out / SHARDS_DIR
    if not folder.is_dir():
        return 0
    keep = {Path(rec.file).name for rec in manifest.shards.values()}
    removed = 0
    for p in folder.iterdir():
        if p.is_file() and p.name not in keep:
            p.unlink()
            removed += 1
    return removed


def shard_file(start: int, stop: int) -> str:
    """A shard's path relative to the output folder (names sort in row order)."""
    return f"{SHARDS_DIR}/rows-{start:012d}-{stop:012d}.parquet"


def _worker_count(req: ScoreRequest, session_cpus: int, session_gpus: int, tasks: int) -> int:
    """Actors to start: --workers, else one per CPU (per GPU with cuda); never more than the cluster's CPUs
    (each actor takes one, so more would wait forever) or than there are tasks."""
    if req.device == "cuda" and session_gpus < 1:
        raise CurateError("--device cuda: the Ray cluster has no GPU")
    if req.workers is not None:
        n = req.workers
    elif req.device == "cuda":
        n = session_gpus
    else:
        n = session_cpus
    return max(1, min(n, max(1, session_cpus), tasks))


def _gpus_per_actor(req: ScoreRequest, session_gpus: int, workers: int) -> float:
    """A whole GPU per actor, or an equal share when there are more actors than GPUs."""
    if req.device != "cuda":
        return 0.0
    return 1.0 if workers <= session_gpus else session_gpus / workers


def _local_cpus(req: ScoreRequest) -> int:
    return max(1, req.workers if req.workers is not None else (os.cpu_count() or 1))


def _split(ids: np.ndarray, size: int) -> list[np.ndarray]:
    return [ids[a : a + size] for a in range(0, len(ids), size)]


def fit_factors_distributed(pool, job: ScoreJob, progress: JobProgress) -> EKFACFactors:
    """EK-FAC of the job's heads: actors accumulate each fit shard's partial sums, the driver merges them in
    shard order (deterministic whatever actor ran what) and finalizes."""
    from curate.pipelines.ray_pool import Task

    chunks = _split(job.fit_ids, job.request.shard_rows)
    cov_states: dict[int, dict] = {}
    progress.phase("fit covariances", len(job.fit_ids))

    def keep_cov(task: Task, state: dict) -> None:
        cov_states[task.key] = state
        progress.advance(len(chunks[task.key]))

    pool.run("fit_covariance", [Task(i, (c,)) for i, c in enumerate(chunks)], keep_cov, phase="fit covariances")
    cov = CovarianceAccumulator.from_state(cov_states[0])
    for i in range(1, len(chunks)):
        cov.merge(CovarianceAccumulator.from_state(cov_states[i]))
    bases = cov.finalize()
    bases_state = bases.state_dict()
    import ray

    bases_ref = ray.put(bases_state)
    lam_states: dict[int, dict] = {}
    progress.phase("fit eigenvalues", len(job.fit_ids))

    def keep_lam(task: Task, state: dict) -> None:
        lam_states[task.key] = state
        progress.advance(len(chunks[task.key]))

    pool.run("fit_lambda", [Task(i, (bases_ref, c)) for i, c in enumerate(chunks)], keep_lam, phase="fit eigenvalues")
    lam = LambdaAccumulator.from_state({**lam_states[0], "bases": bases_state})
    for i in range(1, len(chunks)):
        lam.merge(LambdaAccumulator.from_state({**lam_states[i], "bases": bases_state}))
    return lam.finalize(DEFAULT_DAMPING, DEFAULT_DAMPING_FLOOR)


DRIVER_THREADS = 1
"""Torch threads of the driver's own numerics (factor eigendecompositions, probe gradients, preconditioning):
fixed, so that every run computes bit-identical factors and probe gradients whatever the machine's default."""


def run_job(job: ScoreJob, log: Log = lambda s: None) -> dict:
    """Fit, score the shards not done yet, merge top-k, write the summary; returns the summary dict."""
    old_threads = torch.get_num_threads()
    torch.set_num_threads(DRIVER_THREADS)
    try:
        return _run_job(job, log)
    finally:
        torch.set_num_threads(old_threads)


def _run_job(job: ScoreJob, log: Log) -> dict:
    import ray

    from curate.pipelines.ray_pool import ActorPool, Retry, Task, ray_session

    req = job.request
    t_start = time.perf_counter()
    out = job.out
    check_output_folder(out, SCORES, [job.corpus.path, *job.corpus.files, job.checkpoint])
    if req.force:
        _clear_outputs(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / SUMMARY_FILE).unlink(missing_ok=True)  # summary.json present = the job is complete
    manifest = Manifest.open(out, job.fingerprint, force=req.force)
    stale = _remove_stale_shards(out, manifest)
    if stale:
        log(f"removed {stale} unrecorded shard file(s) an interrupted run left behind")
    shards = job.shards()
    todo = [s for s in shards if not manifest.finished(*s)]
    skipped = len(shards) - len(todo)
    rows_todo = sum(b - a for a, b in todo)
    if skipped:
        log(f"resuming: {skipped} of {len(shards)} shards already scored ({job.num_rows - rows_todo} rows)")
    retries: list[Retry] = []
    seconds_fit = seconds_score = cpu_score = 0.0
    workers_used = 0
    fitted = "not needed"
    faults = FaultPlan.from_env(out)

    if todo:
        session_cm = ray_session(req.ray_address, num_cpus=None if req.ray_address else _local_cpus(req))
        with session_cm as session, JobProgress(req.progress) as progress:
            heads_t = [(h.layer, h.head) for h in job.heads]
            setup = WorkerSetup(
                corpus=job.corpus_spec, batch_size=job.corpus.batch_size, heads=heads_t, mode=req.mode,
                seed=req.seed, batch_rows=req.batch_rows, device=req.device, vocab_size=int(job.model.config.vocab_size),
                shard_meta={"circuit": job.circuit.name, "mode": req.mode, "heads": [str(h) for h in job.heads],
                            "job": fingerprint_hash(job.fingerprint)},
                faults=faults,
            )
            model_ref = ray.put(job.model.cpu())
            workers_used = _worker_count(req, session.cpus, session.gpus, len(todo))
            gpus = _gpus_per_actor(req, session.gpus, workers_used)
            remote_cls = ray.remote(ScoreWorker).options(num_cpus=1, num_gpus=gpus, max_restarts=0)
            where = f"joined {req.ray_address}" if req.ray_address else "local"
            log(f"ray: {where} ({session.cpus} CPUs, {session.gpus} GPUs); {workers_used} worker(s), {len(todo)} shard(s) to score")
            precond_ref = None

            def make_actor():
                return remote_cls.remote(setup, model_ref, precond_ref)

            def note_retry(r: Retry) -> None:
                manifest.retries.append({**r.to_json(), "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
                manifest.save()

            pool = ActorPool(make_actor, workers_used, on_retry=note_retry)
            try:
                # factors: the cache, else a distributed fit
                t0 = time.perf_counter()
                cache = out / FACTORS_DIR
                factors, missing = load_factors(cache, job.heads, req.mode, job.model_fp, DEFAULT_DAMPING, DEFAULT_DAMPING_FLOOR, job.data_key)
                if missing:
                    fresh = fit_factors_distributed(pool, job, progress)
                    save_factors(cache, fresh, job.model_fp, job.data_key)
                    factors = factors.merged_with(fresh).subset(job.heads)
                    fitted = f"fitted on {len(job.fit_ids)} rows"
                else:
                    fitted = "loaded from the cache"
                seconds_fit = time.perf_counter() - t0
                # probe gradients, preconditioned once in the driver, shipped once per actor
                probe_fn, shared = circuit_probe(job.circuit, job.probes)
                grads = probe_gradients(job.model, probe_fn, job.heads, req.mode, shared=shared)
                precond: dict[HeadRef, HeadBlocks] = factors.precondition(grads)
                precond_ref = ray.put(precond)
                pool.call_all("load_probe", precond_ref)
                # scoring
                t1 = time.perf_counter()
                progress.phase("score", job.num_rows, job.num_rows - rows_todo)

                def record(task: Task, result: dict) -> None:
                    nonlocal cpu_score
                    cpu_score += float(result.get("cpu_seconds", 0.0))
                    a, b = task.key
                    manifest.record(ShardRecord(a, b, shard_file(a, b), result["sha256"], int(result["rows"]),
                                                round(float(result["seconds"]), 3), task.attempts))
                    progress.advance(b - a)

                tasks = [Task((a, b), (a, b, str(out / shard_file(a, b)))) for a, b in todo]
                pool.run("score_shard", tasks, record, phase="score")
                seconds_score = time.perf_counter() - t1
                retries = list(pool.retries)
            finally:
                pool.shutdown()

    # -- top-k, by streaming the shard files
    files = [out / shard_file(a, b) for a, b in shards]
    best, worst = top_rows(files, job.top_k)
    import pyarrow.parquet as pq

    for table, name in ((best, TOP_POSITIVE_FILE), (worst, TOP_NEGATIVE_FILE)):
        with atomic_path(out / name) as tmp:
            pq.write_table(table, tmp)
    positive = describe_rows(job.corpus, best.slice(0, SHOW_TOP))
    negative = describe_rows(job.corpus, worst.slice(0, SHOW_TOP))

    seconds = time.perf_counter() - t_start
    scores_hs = job.localization.head_scores
    summary = {
        "corpus": job.corpus_spec,
        "out": str(out.resolve()),
        "circuit": job.circuit.name,
        "heads": [str(h) for h in job.heads],
        "head_metrics": {
            str(h): {"induction": float(scores_hs.induction[h.layer, h.head]), "previous_token": float(scores_hs.previous_token[h.layer, h.head])}
            for h in job.heads
        } if scores_hs is not None else {},
        "localization": job.localization.to_json(),
        "mode": req.mode,
        "window": list(job.window),
        "row_range": list(job.rows),
        "batch_size": int(job.corpus.batch_size),
        "rows": job.num_rows,
        "rows_scored": rows_todo,
        "checkpoint": job.checkpoint,
        "checkpoint_step": job.checkpoint_step,
        "model_fingerprint": job.model_fp,
        "factors": fitted,
        "fit_rows": int(len(job.fit_ids)),
        "seed": req.seed,
        "top_k": job.top_k,
        "top_positive": positive,
        "top_negative": negative,
        "top_files": {"positive": TOP_POSITIVE_FILE, "negative": TOP_NEGATIVE_FILE},
        "shards_dir": SHARDS_DIR,
        "shards": len(shards),
        "shards_scored": len(todo),
        "shards_skipped": skipped,
        "workers": workers_used,
        "ray_address": req.ray_address,
        "device": req.device,
        "seconds": round(seconds, 3),
        "seconds_fit": round(seconds_fit, 3),
        "seconds_score": round(seconds_score, 3),
        "rows_per_s": round(rows_todo / seconds_score, 1) if seconds_score > 0 else None,
        "cpu_seconds_score": round(cpu_score, 3),  # CPU time the actors spent on the shards scored this run
        "retries": [r.to_json() for r in retries],
        "notes": job.notes + list(job.localization.notes),
        "fingerprint_hash": fingerprint_hash(job.fingerprint),
    }
    write_json(out / SUMMARY_FILE, summary)
    return summary


# --------------------------------------------------------------------------- showing rows


def _domains(corpus: Corpus, row_ids: list[int]) -> dict[int, str]:
    """Row id -> `domain` from the corpus sidecar (rows.parquet), when it has that column."""
    path = corpus.sidecar_path()
    if path is None or not path.is_file() or not row_ids:
        return {}
    import pyarrow.parquet as pq

    try:
        names = pq.read_schema(path).names
        if "domain" not in names or "row_id" not in names:
            return {}
        table = pq.read_table(path, columns=["row_id", "domain"], filters=[("row_id", "in", [int(r) for r in row_ids])])
    except Exception:  # an unreadable sidecar only costs the domain column
        return {}
    return {int(r): (str(d) if d is not None else "") for r, d in zip(table.column("row_id").to_pylist(), table.column("domain").to_pylist())}


def describe_rows(corpus: Corpus, table) -> list[dict]:
    """row_id, step, score, loss, domain and the first characters of the decoded text of each row."""
    ids = [int(r) for r in table.column("row_id").to_pylist()]
    if not ids:
        return []
    domains = _domains(corpus, ids)
    texts: dict[int, str] = {}
    spec = corpus.tokenizer_spec()
    if spec:
        try:
            from curate.tokenize import load_tokenizer

            tok = load_tokenizer(spec)
            rows = corpus.take(np.asarray(ids, dtype=np.int64))
            for r, tokens in zip(ids, rows):
                text = tok.decode(tokens.tolist())
                texts[r] = text.replace("\n", "\\n").replace("\t", " ")[:TEXT_CHARS]
        except CurateError:
            texts = {}
    scores = table.column("score").to_pylist()
    steps = table.column("step").to_pylist()
    losses = table.column("loss").to_pylist()
    return [
        {"row_id": r, "step": int(s), "score": float(v), "loss": float(l), "domain": domains.get(r), "text": texts.get(r)}
        for r, s, v, l in zip(ids, steps, scores, losses)
    ]
