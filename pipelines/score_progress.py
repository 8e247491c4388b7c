"""The progress display of a scoring job: a rich bar per phase on a terminal, a heartbeat line without one."""
from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text
from curate.progress import heartbeat_seconds

"""Without progress bars (`--quiet`), a phase still prints one line at most this often: shards and rows done."""


class RowsPerSecond(ProgressColumn):
    """The bar's speed column, in rows per second."""

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} rows/s" if speed else "- rows/s")


class JobProgress:
    """A rich progress bar per phase (rows done, rows/s, ETA) on stderr; when disabled, a one-line heartbeat on
    stderr at most every `curate.progress.heartbeat_seconds()` seconds (shards and rows done of the total), so a long quiet run shows it is alive."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._progress: Progress | None = None
        self._task = None
        self._name, self._rows, self._rows_total, self._shards, self._shards_total = "", 0, 0, 0, 0
        self._t0 = self._last = time.monotonic()
        self._every = heartbeat_seconds()  # one setting for every command's heartbeat ($CURATE_HEARTBEAT_S)

    def __enter__(self) -> "JobProgress":
        if self.enabled:
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
        if not self.enabled and now - self._last >= self._every:
            self._last = now
            shards = f"{self._shards:,}/{self._shards_total:,} shards, " if self._shards_total else ""
            print(f"{self._name}: {shards}{self._rows:,}/{self._rows_total:,} rows done "
                  f"({(now - self._t0) / 60:.0f} min elapsed)", file=sys.stderr, flush=True)

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)
