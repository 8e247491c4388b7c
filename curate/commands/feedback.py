"""Feedback while a command works: a spinner with the elapsed time on a terminal, and off a terminal (a log, nohup,
a scheduler) a plain heartbeat line on stderr every `curate.progress.heartbeat_seconds()` ($CURATE_HEARTBEAT_S), so a log shows the command is alive."""
from __future__ import annotations

import contextlib
from typing import Iterator

from rich.console import Console

from curate.progress import beating, heartbeat_seconds

def _elapsed(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


@contextlib.contextmanager
def heartbeat(label: str, quiet: bool = False) -> Iterator[None]:
    """Show that `label` is in progress for the block (nothing when `quiet`)."""
    if quiet:
        yield
        return
    console = Console(stderr=True)
    if console.is_terminal:
        with console.status(f"{label} ...", spinner="dots"):
            yield
        return
    with beating(lambda elapsed: f"{label}: working, {_elapsed(elapsed)} so far", heartbeat_seconds()):
        yield
