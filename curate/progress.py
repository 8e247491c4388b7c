"""Progress of long-running work on stderr: a rich bar on a terminal, and off a terminal (a log file, nohup, a
scheduler) a plain heartbeat line at a fixed interval, so a log shows where the work is.

The interval is `DEFAULT_HEARTBEAT_S` seconds unless the environment variable `CURATE_HEARTBEAT_S` sets it
(`heartbeat_seconds`; 0 = a line at every step)."""
from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import time
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from curate.errors import CurateError

HEARTBEAT_ENV = "CURATE_HEARTBEAT_S"
DEFAULT_HEARTBEAT_S = 60.0


def heartbeat_seconds() -> float:
    """The heartbeat interval: `$CURATE_HEARTBEAT_S` when set (seconds, >= 0), else `DEFAULT_HEARTBEAT_S`."""
    raw = os.environ.get(HEARTBEAT_ENV, "").strip()
    if not raw:
        return DEFAULT_HEARTBEAT_S
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds >= 0):
        raise CurateError(f"{HEARTBEAT_ENV}={raw!r}: expected a number of seconds >= 0")
    return seconds


def duration(seconds: float) -> str:
    """H:MM:SS, as the bar's time columns show it."""
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Heartbeat:
    """Says a line on stderr when `seconds` have passed since the last one (or since the start)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._last = time.monotonic()

    def due(self) -> bool:
        now = time.monotonic()
        if now - self._last < self.seconds:
            return False
        self._last = now
        return True

    @staticmethod
    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)


@contextlib.contextmanager
def beating(message: Callable[[float], str], seconds: float, say: Callable[[str], None] = Heartbeat.say) -> Iterator[None]:
    """While the block runs, a background thread says `message(seconds elapsed)` every `seconds` (at least 0.1)."""
    done = threading.Event()
    start = time.monotonic()
    every = max(0.1, seconds)

    def beat() -> None:
        while not done.wait(every):
            say(message(time.monotonic() - start))

    thread = threading.Thread(target=beat, name="curate-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


class TrainProgress:
    """A training run's progress on stderr: step, loss, best induction score, steps/s, ETA; a rich bar on a
    terminal, a heartbeat line every `heartbeat_s` seconds off one, nothing when disabled."""

    def __init__(self, enabled: bool, first: int, total: int, heartbeat_s: float = DEFAULT_HEARTBEAT_S) -> None:
        console = Console(stderr=True)
        self.first, self.total = first, total
        self.induction: float | None = None
        self._n = 0
        self._t0 = time.perf_counter()
        self._progress: Progress | None = None
        self._heartbeat: Heartbeat | None = None
        if enabled and console.is_terminal:
            self._progress = Progress(
                TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"), TextColumn("ind {task.fields[ind]}"),
                TextColumn("{task.fields[rate]} it/s"),
                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=False,
            )
        elif enabled:
            self._heartbeat = Heartbeat(heartbeat_s)

    def __enter__(self) -> "TrainProgress":
        if self._progress is not None:
            self._progress.__enter__()
            self._task = self._progress.add_task("train", total=self.total, completed=self.first, loss="-", ind="-", rate="-")
        self._t0 = time.perf_counter()
        return self

    def metrics(self, induction: float) -> None:
        """The best induction score of the latest evaluation."""
        self.induction = induction
        if self._progress is not None:
            self._progress.update(self._task, ind=f"{induction:.3f}")

    def step(self, loss: float) -> None:
        """One more step trained, at this loss."""
        self._n += 1
        elapsed = time.perf_counter() - self._t0
        rate = self._n / elapsed if elapsed > 0 else None
        if self._progress is not None:
            self._progress.update(self._task, advance=1, loss=f"{loss:.3f}", rate=f"{rate:.1f}" if rate else "-")
        elif self._heartbeat is not None and self._heartbeat.due():
            self._heartbeat.say(self.heartbeat_line(loss, rate))

    def heartbeat_line(self, loss: float, rate: float | None) -> str:
        """`train: step 120/1,000  loss 3.412  induction 0.213  4.10 steps/s  ETA 0:03:34` (the induction score
        once an evaluation has given one, the rate and ETA once a step has been timed)."""
        step = self.first + self._n
        parts = [f"train: step {step:,}/{self.total:,}", f"loss {loss:.3f}"]
        if self.induction is not None:
            parts.append(f"induction {self.induction:.3f}")
        if rate:
            parts += [f"{rate:.2f} steps/s", f"ETA {duration((self.total - step) / rate)}"]
        return "  ".join(parts)

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)


def duration_text(seconds: float) -> str:
    """An estimated duration for a person: seconds under 2 minutes, minutes under 2 hours, else hours."""
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
