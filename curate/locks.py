"""One writer per output: a lock file beside each output (`.NAME.lock` next to folder or file `NAME`).

The lock is taken before the first byte of the output is written and released when the writer is done (or its
process ends: the kernel drops an `flock` of a killed process, and a lock file whose pid is gone on this host is
taken over). The file records the holder (pid, host, command line, start time), so a second writer gets one
line naming it. Locks are re-entrant within a process: a command that locks a folder may call library code
that locks it again.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from curate.atomic import os_error, pid_alive
from curate.errors import CurateError

TEST_BARRIER_ENV = "CURATE_TEST_LOCK_BARRIER"
"""Tests only: a path; a writer that took a lock touches PATH.held and waits until PATH.go exists (or 60 s)."""


@dataclass
class _Held:
    fd: int
    path: Path
    made: list[Path]  # parent folders this lock created (removed again when empty)
    depth: int = 1


_HELD: dict[Path, _Held] = {}  # lock file -> the lock this process holds on it


def lock_path(output: str | os.PathLike[str]) -> Path:
    """The lock file of `output` (a folder, a file or a file prefix): `.NAME.lock` beside it."""
    out = Path(os.path.abspath(output))
    return out.with_name(f".{out.name}.lock")


def _holder(path: Path) -> dict:
    try:
        body = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def _describe(holder: dict) -> str:
    if not holder:
        return "another curate process"
    started = holder.get("started")
    since = f", since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(started))}" if isinstance(started, (int, float)) else ""
    cmd = f" ({holder['command']})" if holder.get("command") else ""
    return f"pid {holder.get('pid')} on {holder.get('host')}{cmd}{since}"


def _stale(holder: dict) -> bool:
    """A lock recorded by a process of this host that is gone."""
    pid = holder.get("pid")
    return holder.get("host") == socket.gethostname() and isinstance(pid, int) and not pid_alive(pid)


def _make_parents(folder: Path) -> list[Path]:
    """Create `folder` and its missing parents; the ones created, deepest first."""
    made: list[Path] = []
    p = folder
    while not p.exists():
        made.append(p)
        p = p.parent
    if p.exists() and not p.is_dir():
        raise CurateError(f"{p}: exists and is not a folder; choose another output")
    for d in reversed(made):
        try:
            d.mkdir()
        except FileExistsError:
            if not d.is_dir():
                raise CurateError(f"{d}: exists and is not a folder; choose another output") from None
        except OSError as e:
            raise os_error(e, d) from None
    return made


def _try_lock(path: Path) -> int | None:
    """An fd holding an exclusive flock on the file now at `path`, or None when another process holds it."""
    for _ in range(20):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(path)
            if _stale(holder):  # a dead process's lock whose file a forked child still holds: take the name over
                with contextlib.suppress(OSError):
                    if os.fstat(fd).st_ino == os.stat(path).st_ino:
                        os.unlink(path)
                os.close(fd)
                continue
            os.close(fd)
            return None
        try:  # the holder may have removed the file between our open and our flock: lock the file that is there
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)
    return None


def acquire(output: str | os.PathLike[str], what: str = "output") -> None:
    """Take the lock of `output` for this process (re-entrant); a CurateError naming the holder if another has it."""
    path = lock_path(output)
    held = _HELD.get(path)
    if held is not None:
        held.depth += 1
        return
    made = _make_parents(path.parent)
    try:
        fd = _try_lock(path)
    except OSError as e:  # a read-only or full location: the same line as any write there
        _remove_empty(made)
        raise os_error(e, output) from None
    if fd is None:
        _remove_empty(made)
        raise CurateError(f"{output}: another writer holds this {what} ({_describe(_holder(path))}); "
                          f"wait for it to finish or choose another output (lock {path})")
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
              "command": " ".join(["curate", *sys.argv[1:]])[:500]}
    os.ftruncate(fd, 0)
    os.write(fd, (json.dumps(record) + "\n").encode())
    _HELD[path] = _Held(fd, path, made)
    _test_barrier()


def release(output: str | os.PathLike[str]) -> None:
    """Give back one `acquire` of `output`; the last one removes the lock file."""
    path = lock_path(output)
    held = _HELD.get(path)
    if held is None:
        return
    held.depth -= 1
    if held.depth > 0:
        return
    del _HELD[path]
    with contextlib.suppress(OSError):
        os.unlink(path)  # before the unlock, so a waiting writer never locks a file that is about to vanish
    os.close(held.fd)
    _remove_empty(held.made)


def _remove_empty(made: list[Path]) -> None:
    for d in made:  # deepest first
        try:
            d.rmdir()
        except OSError:
            break


@contextlib.contextmanager
def hold(*outputs: str | os.PathLike[str] | None, what: str = "output") -> Iterator[None]:
    """Lock every given output (None skipped; in a fixed order) for the block; all or none are taken."""
    paths = sorted({os.path.abspath(p) for p in outputs if p is not None})
    taken: list[str] = []
    try:
        for p in paths:
            acquire(p, what)
            taken.append(p)
        yield
    finally:
        for p in reversed(taken):
            release(p)


def _test_barrier() -> None:
    barrier = os.environ.get(TEST_BARRIER_ENV)
    if not barrier:
        return
    Path(f"{barrier}.held").write_text(str(os.getpid()))
    deadline = time.monotonic() + 60
    while not Path(f"{barrier}.go").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
