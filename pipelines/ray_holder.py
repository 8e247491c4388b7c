"""The one local Ray session an experiment's scoring and arms share, started on first need."""
from __future__ import annotations

import contextlib
from typing import Iterator

from curate.pipelines.ray_pool import ray_session


class RayHolder:
    """Starts one local Ray session on first need and keeps it for the rest of the experiment."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.stack = contextlib.ExitStack()
        self.started = False

    def ensure(self) -> None:
        if not self.started:
            self.stack.enter_context(ray_session(None, num_cpus=self.workers))
            self.started = True

    def close(self) -> None:
        self.stack.close()


@contextlib.contextmanager
def ray_holder(workers: int, outer: RayHolder | None = None) -> Iterator[RayHolder]:
    """`outer` when given (a caller's session), else a new holder closed on exit."""
    if outer is not None:
        yield outer
        return
    holder = RayHolder(workers)
    try:
        yield holder
    finally:
        holder.close()
