"""How many Ray actors a scoring job starts, and the CPUs and GPUs each takes."""
from __future__ import annotations

import os

from curate.errors import CurateError
from curate.pipelines.score_request import ScoreRequest


def worker_count(req: ScoreRequest, session_cpus: int, session_gpus: int, tasks: int) -> int:
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


def gpus_per_actor(req: ScoreRequest, session_gpus: int, workers: int) -> float:
    """A whole GPU per actor, or an equal share when there are more actors than GPUs."""
    if req.device != "cuda":
        return 0.0
    return 1.0 if workers <= session_gpus else session_gpus / workers


def local_cpus(req: ScoreRequest) -> int:
    """CPUs of a local Ray session: --workers, else the machine's."""
    return max(1, req.workers if req.workers is not None else (os.cpu_count() or 1))
