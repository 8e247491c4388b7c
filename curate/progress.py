"""Progress displays shared by the library's long-running work: the training run's bar."""
from __future__ import annotations

import time

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class TrainProgress:
    """Rich progress of a training run: step, loss, best induction score, it/s, ETA (a no-op when disabled)."""

    def __init__(self, enabled: bool, first: int, total: int) -> None:
        self.enabled = enabled
        self.first, self.total = first, total
        self.induction: float | None = None
        self._n = 0

    def __enter__(self) -> "TrainProgress":
        if self.enabled:
            self.progress = Progress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"), TextColumn("ind {task.fields[ind]}"),
                TextColumn("{task.fields[rate]} it/s"),
                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), transient=False,
            )
            self.progress.__enter__()
            self.task = self.progress.add_task("train", total=self.total, completed=self.first, loss="-", ind="-", rate="-")
            self.t0 = time.perf_counter()
        return self

    def metrics(self, induction: float) -> None:
        """The best induction score of the latest evaluation."""
        self.induction = induction
        if self.enabled:
            self.progress.update(self.task, ind=f"{induction:.3f}")

    def step(self, loss: float) -> None:
        """One step trained, at this loss."""
        if not self.enabled:
            return
        self._n += 1
        elapsed = time.perf_counter() - self.t0
        rate = f"{self._n / elapsed:.1f}" if elapsed > 0 else "-"
        self.progress.update(self.task, advance=1, loss=f"{loss:.3f}", rate=rate)

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.progress.__exit__(*exc)
