"""The scoring driver's executor on Ray (`attribution.scoring.ScoringDriver`'s `executor`): fit partial sums and
shard scores computed by a pool of `pipelines.actors.ScoreWorker` actors, each scored shard recorded in the manifest."""
from __future__ import annotations

import time

import numpy as np
import ray

from curate.attribution.heads import HeadBlocks, HeadRef
from curate.attribution.scores_folder import shard_file
from curate.pipelines.manifest import Manifest, ShardRecord
from curate.pipelines.ray_pool import ActorPool, Task
from curate.pipelines.score_job import Log, ScoreJob
from curate.pipelines.score_progress import JobProgress


class RayExecutor:
    """The scoring driver's executor on a pool of Ray actors (`ScoreWorker`s): partial sums of each fit chunk and
    the scores of each shard, on whichever actor is free (a dead actor's task is retried on a fresh one); every
    scored shard is written by its actor and recorded in the manifest."""

    def __init__(self, make_actor, workers: int, job: ScoreJob, manifest: Manifest, progress: JobProgress, rows_todo: int,
                 log: Log = lambda s: None) -> None:
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
        return self._partials("fit_lambda", "fit eigenvalues", (heads, ray.put(bases_state)), chunks)

    def score_shards(self, preconditioned: dict[HeadRef, HeadBlocks], shards: list[tuple[int, int]]) -> list[ShardRecord]:
        """Score the shards on the actors (each writes its file); returns their manifest records."""
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
