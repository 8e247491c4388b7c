"""Running a resolved scoring job (`pipelines.score_job.ScoreJob`) on a pool of Ray actors.

The scoring driver (`attribution.scoring.ScoringDriver`) runs with the Ray executor (`RayExecutor`): EK-FAC is
fitted distributed (actors accumulate partial sums of fit-row shards, the driver merges them in shard order and
caches the factors in `<out>/factors/`), the probe gradients are preconditioned once in the driver, the window's
row shards are scored by the actors (each writes its shard atomically, the driver records it in the manifest);
then the top-k rows are merged by streaming, and `summary.json` is written last (`attribution.scores_folder`).
The baselines (`pipelines.score_methods`) run the same way: gradient-dot preconditions with the identity (no
fit), copy-share and loss skip the fit and the probe and the actors score the shards with the row statistic.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from curate.attribution.ekfac import DEFAULT_DAMPING, DEFAULT_DAMPING_FLOOR
from curate.attribution.heads import HeadBlocks, HeadRef
from curate.attribution.influence import circuit_probe
from curate.attribution.scores_folder import (
    FACTORS_DIR, SHARDS_DIR, TOP_NEGATIVE_FILE, TOP_POSITIVE_FILE, begin_results, clear_results,
    remove_unlisted_shards, shard_file, top_tables, write_summary, write_top_files,
)
from curate.attribution.score_table import ScoreTable
from curate.attribution.scoring import FactorFit, ScoringDriver
from curate.outputs import SCORES, check_output_folder
from curate.corpus import Corpus
from curate.errors import CurateError
from curate.paths import portable, portable_if_local
from curate.pipelines.actors import FaultPlan, ScoreWorker, WorkerSetup
from curate.pipelines.manifest import MANIFEST_FILE, Manifest, ShardRecord, fingerprint_hash
from curate.pipelines.score_job import SHOW_TOP, TEXT_CHARS, Log, ScoreJob
from curate.pipelines.score_methods import score_method
from curate.pipelines.score_request import ScoreRequest
from curate.pipelines.score_trajectory import aggregate_tables


# --------------------------------------------------------------------------- progress


HEARTBEAT_S = 60.0
"""Without progress bars (`--quiet`), a phase still prints one line at most this often: shards and rows done."""


class JobProgress:
    """A rich progress bar per phase (rows done, rows/s, ETA) on stderr; when disabled, a one-line heartbeat on
    stderr at most every `HEARTBEAT_S` seconds (shards and rows done of the total), so a long quiet run shows it is alive."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._progress = None
        self._task = None
        self._name, self._rows, self._rows_total, self._shards, self._shards_total = "", 0, 0, 0, 0
        self._t0 = self._last = time.monotonic()

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

    def phase(self, name: str, total: int, done: int = 0, shards: int = 0, shards_done: int = 0) -> None:
        """A new phase of `total` rows (`done` already); `shards`: its shard count (`shards_done` already)."""
        if self._progress is not None:
            self._task = self._progress.add_task(name, total=total, completed=done)
        self._name, self._rows_total, self._rows, self._shards_total, self._shards = name, total, done, shards, shards_done
        self._last = time.monotonic()

    def advance(self, rows: int) -> None:
        """`rows` more rows done (one shard or chunk)."""
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, rows)
        self._rows += rows
        self._shards += 1
        now = time.monotonic()
        if not self.enabled and now - self._last >= HEARTBEAT_S:
            self._last = now
            shards = f"{self._shards:,}/{self._shards_total:,} shards, " if self._shards_total else ""
            print(f"{self._name}: {shards}{self._rows:,}/{self._rows_total:,} rows done "
                  f"({(now - self._t0) / 60:.0f} min elapsed)", file=sys.stderr, flush=True)

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)


# --------------------------------------------------------------------------- run


def _worker_count(req: ScoreRequest, session_cpus: int, session_gpus: int, tasks: int) -> int:
    """Actors to start: --workers, else one per CPU (per GPU with cuda); never more than the cluster's CPUs
    (each actor takes one, so more would wait forever) or than there are tasks."""
    if req.device == "cuda" and session_gpus < 1:
        raise CurateError("device cuda: the Ray cluster has no GPU")
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


class RayExecutor:
    """The scoring driver's executor on a pool of Ray actors (`ScoreWorker`s): partial sums of each fit chunk and
    the scores of each shard, on whichever actor is free (a dead actor's task is retried on a fresh one); every
    scored shard is written by its actor and recorded in the manifest."""

    def __init__(self, make_actor, workers: int, job: ScoreJob, manifest: Manifest, progress: JobProgress, rows_todo: int,
                 log: Log = lambda s: None) -> None:
        from curate.pipelines.ray_pool import ActorPool

        self.job = job
        self.log = log
        self.nodes: dict[str, int] = {}  # Ray node id -> shards it scored this run
        self.manifest = manifest
        self.progress = progress
        self.rows_todo = rows_todo
        self.cpu_seconds = 0.0
        self.precond_ref = None  # actors created after the probe is known (replacing dead ones) get it at once
        self.pool = ActorPool(lambda: make_actor(self.precond_ref), workers, on_retry=self._note_retry)

    def _note_retry(self, r) -> None:
        self.manifest.retries.append({**r.to_json(), "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
        self.manifest.save()
        what = f"shard of rows {r.key[0]}..{r.key[1]}" if r.phase == "score" else f"{r.phase} task {r.to_json()['task']}"
        self.log(f"retry: the worker running the {what} died ({r.error}); running it again (attempt {r.attempt + 1})")

    def _partials(self, method: str, phase: str, args, chunks: list[np.ndarray]) -> list[dict]:
        """Partial sums of every chunk, in chunk order (whatever actor ran what)."""
        from curate.pipelines.ray_pool import Task

        states: dict[int, dict] = {}
        self.progress.phase(phase, sum(len(c) for c in chunks))

        def keep(task: Task, state: dict) -> None:
            states[task.key] = state
            self.progress.advance(len(chunks[task.key]))

        self.pool.run(method, [Task(i, (*args, c)) for i, c in enumerate(chunks)], keep, phase=phase)
        return [states[i] for i in range(len(chunks))]

    def fit_covariance(self, heads: list[HeadRef], chunks: list[np.ndarray]) -> list[dict]:
        return self._partials("fit_covariance", "fit covariances", (heads,), chunks)

    def fit_lambda(self, heads: list[HeadRef], bases_state: dict, chunks: list[np.ndarray]) -> list[dict]:
        import ray

        return self._partials("fit_lambda", "fit eigenvalues", (heads, ray.put(bases_state)), chunks)

    def score_shards(self, preconditioned: dict[HeadRef, HeadBlocks], shards: list[tuple[int, int]]) -> list[ShardRecord]:
        """Score the shards on the actors (each writes its file); returns their manifest records."""
        import ray

        from curate.pipelines.ray_pool import Task

        self.precond_ref = ray.put(preconditioned)
        self.pool.call_all("load_probe", self.precond_ref)
        total_shards = len(self.job.shards())
        self.progress.phase("score", self.job.num_rows, self.job.num_rows - self.rows_todo, total_shards, total_shards - len(shards))
        out = self.job.out
        records: list[ShardRecord] = []

        def record(task: Task, result: dict) -> None:
            self.cpu_seconds += float(result.get("cpu_seconds", 0.0))
            a, b = task.key
            node = str(result.get("node") or "")
            rec = ShardRecord(a, b, shard_file(a, b), result["sha256"], int(result["rows"]), round(float(result["seconds"]), 3), task.attempts,
                              node)
            self.nodes[node] = self.nodes.get(node, 0) + 1
            self.manifest.record(rec)
            records.append(rec)
            self.progress.advance(b - a)

        self.pool.run("score_shard", [Task((a, b), (a, b, str(out / shard_file(a, b)))) for a, b in shards], record, phase="score")
        return records


DRIVER_THREADS = 1
"""Torch threads of the driver's own numerics (factor eigendecompositions, probe gradients, preconditioning):
fixed, so that every run computes bit-identical factors and probe gradients whatever the machine's default."""


def run_job(job: ScoreJob, log: Log = lambda s: None) -> dict:
    """Fit, score the shards not done yet, merge top-k, write the summary; returns the summary dict."""
    old_threads = torch.get_num_threads()
    torch.set_num_threads(DRIVER_THREADS)
    try:
        if job.trajectory:
            return run_trajectory(job, log)
        return _run_job(job, log)
    finally:
        torch.set_num_threads(old_threads)


def _run_job(job: ScoreJob, log: Log) -> dict:
    import ray

    from curate.pipelines.ray_pool import Retry, ray_session

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
        session_cm = ray_session(req.ray_address, num_cpus=None if req.ray_address else _local_cpus(req))
        with session_cm as session, JobProgress(req.progress) as progress:
            setup = WorkerSetup(
                corpus=job.corpus_spec, batch_size=job.corpus.batch_size, heads=list(job.heads), mode=req.mode,
                seed=req.seed, batch_rows=req.batch_rows, device=req.device, vocab_size=int(job.model.config.vocab_size),
                shard_meta={"circuit": job.circuit.name, "mode": req.mode, "heads": [str(h) for h in job.heads],
                            "job": fingerprint_hash(job.fingerprint), **({} if method.name == "mda" else {"method": method.name})},
                faults=faults, statistic=method.statistic,
            )
            model_ref = ray.put(job.model.cpu())
            workers_used = _worker_count(req, session.cpus, session.gpus, len(todo))
            gpus = _gpus_per_actor(req, session.gpus, workers_used)
            # SPREAD: the actors go to as many nodes as the cluster has (one node's loss costs the fewest)
            remote_cls = ray.remote(ScoreWorker).options(num_cpus=1, num_gpus=gpus, max_restarts=0, scheduling_strategy="SPREAD")
            where = f"joined {req.ray_address}" if req.ray_address else "local"
            log(f"ray: {where} ({session.cpus} CPUs, {session.gpus} GPUs); {workers_used} worker(s), {len(todo)} shard(s) to score")

            executor = RayExecutor(lambda precond_ref: remote_cls.remote(setup, model_ref, precond_ref), workers_used, job,
                                   manifest, progress, rows_todo, log)
            fit = FactorFit(job.fit_ids, job.data_key, DEFAULT_DAMPING, DEFAULT_DAMPING_FLOOR, req.shard_rows)
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
    positive = describe_rows(job.corpus, best.slice(0, SHOW_TOP))
    negative = describe_rows(job.corpus, worst.slice(0, SHOW_TOP))

    seconds = time.perf_counter() - t_start
    if not method.fits_factors:
        fitted = f"not used by {method.name}"
    summary = {
        "method": method.name,
        "corpus": portable(job.corpus_spec, out),
        "corpus_absolute": job.corpus_spec,
        "out": str(out.resolve()),
        "circuit": job.circuit.name,
        "heads": [str(h) for h in job.heads],
        "head_metrics": head_metrics(job),
        "localization": job.localization.to_json(),
        "mode": req.mode,
        "window": list(job.window),
        "row_range": list(job.rows),
        "batch_size": int(job.corpus.batch_size),
        "rows": job.num_rows,
        "rows_scored": rows_todo,
        "checkpoint": portable_if_local(job.checkpoint, out),  # relative to the scores folder, as the corpus
        "checkpoint_absolute": job.checkpoint,
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
        "retried_shards": len({tuple(r.key) for r in retries if r.phase == "score"}),  # shards re-run after their actor died
        "nodes": nodes,  # Ray node id -> shards it scored this run (each shard's node is in the manifest)
        "notes": job.notes + list(job.localization.notes),
        "fingerprint_hash": job.result_hash,
    }
    write_summary(out, summary)  # last: the folder is complete
    return summary


# --------------------------------------------------------------------------- trajectory scores


def _complete(job: ScoreJob) -> bool:
    from curate.attribution.scores_folder import read_summary

    summary = read_summary(job.out)
    return summary is not None and summary.get("fingerprint_hash") == job.result_hash


def run_trajectory(job: ScoreJob, log: Log = lambda s: None) -> dict:
    """Trajectory scores (`pipelines.score_trajectory`): score every checkpoint (each resumable on its own), combine them shard by shard, write the summary."""
    from curate.atomic import file_sha256
    from curate.pipelines.ray_pool import ray_session

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
        "checkpoint": portable_if_local(job.checkpoint, out),  # relative to the scores folder, as the corpus
        "checkpoint_absolute": job.checkpoint,
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
            "checkpoint_paths": [s.get("checkpoint_absolute", s["checkpoint"]) for s in subs],
            "fingerprint_hashes": [s["fingerprint_hash"] for s in subs],
        },
    })
    write_summary(out, summary)
    return summary


def head_metrics(job: ScoreJob) -> dict:
    """Induction and previous-token scores of the job's heads at its checkpoint (from the localization)."""
    hs = job.localization.head_scores
    if hs is None:
        return {}
    return {str(h): {"induction": float(hs.induction[h.layer, h.head]), "previous_token": float(hs.previous_token[h.layer, h.head])}
            for h in job.heads}


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
        {"row_id": r, "step": int(s), "score": float(v), "loss": None if l is None or l != l else float(l),  # NaN: not run
         "domain": domains.get(r), "text": texts.get(r)}
        for r, s, v, l in zip(ids, steps, scores, losses)
    ]
