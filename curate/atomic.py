"""Atomic file and directory writes: write to a temporary name, then rename."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from curate.errors import CurateError

# A location that cannot take the write: the one-line cause the user sees.
DISK_CAUSES = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}
# How libraries that do their own I/O (faiss, safetensors, arrow, Ray) spell those causes in a message.
_CAUSE_TEXTS = (
    ("no space left on device", errno.ENOSPC), ("os error 28", errno.ENOSPC), ("storagefull", errno.ENOSPC),
    ("disk quota exceeded", errno.EDQUOT), ("read-only file system", errno.EROFS), ("os error 30", errno.EROFS),
    ("permission denied", errno.EACCES), ("os error 13", errno.EACCES),
)


def disk_fault(e: BaseException) -> tuple[str | None, str] | None:
    """(path if known, cause) when `e`, or an error it wraps, says the location is full, read-only or forbidden."""
    seen: set[int] = set()
    todo: list[BaseException] = [e]
    while todo:
        x = todo.pop(0)
        if id(x) in seen or isinstance(x, CurateError):
            continue
        seen.add(id(x))
        if isinstance(x, OSError) and x.errno in DISK_CAUSES:
            return (str(x.filename) if x.filename else None), DISK_CAUSES[x.errno]
        text = str(x).lower()
        for needle, code in _CAUSE_TEXTS:
            if needle in text:
                return None, DISK_CAUSES[code]
        todo += [n for n in (getattr(x, "cause", None), x.__cause__, x.__context__) if isinstance(n, BaseException)]
    return None


def disk_error(e: BaseException, where: str | os.PathLike[str] | None = None) -> CurateError | None:
    """The one-line CurateError for a full / read-only / forbidden location (None when `e` is something else).

    `where` (the output being written) is named when given; else the path the error carries."""
    fault = disk_fault(e)
    if fault is None:
        return None
    path, cause = fault
    return CurateError(f"{where if where is not None else (path or 'output')}: cannot write ({cause})")


def os_error(e: OSError, where: str | os.PathLike[str] | None = None) -> CurateError:
    """One CurateError line for any OSError: the path it names (else `where`) and its cause."""
    disk = disk_error(e, where)
    if disk is not None:
        return disk
    path = e.filename if e.filename is not None else where
    cause = e.strerror or str(e) or type(e).__name__
    if path is None:
        return CurateError(cause)
    hint = "; a folder on the way is a file" if e.errno in (errno.EEXIST, errno.ENOTDIR) and path == e.filename else ""
    return CurateError(f"{path}: {cause}{hint}")


@contextlib.contextmanager
def _disk_errors(where: Path) -> Iterator[None]:
    """Re-raise a full / read-only / forbidden write under `where`, and any other OSError, as one CurateError line."""
    try:
        yield
    except CurateError:
        raise
    except OSError as e:
        raise os_error(e, where) from None
    except Exception as e:
        err = disk_error(e, where)
        if err is None:
            raise
        raise err from None


_STARTED = time.time()  # temporaries older than this process with no writer pid are an earlier run's


def _temp_prefix(final: Path) -> str:
    """Temporaries carry the writer's pid, so a later run can tell a dead writer's leftovers from a live one's."""
    return f".{final.name}.{os.getpid()}-"


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def clean_stale_temps(final: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporaries of `final` that a killed writer left (its pid is gone; or, with no pid in the name,
    made before this process started); returns what was removed."""
    final = Path(final)
    pattern = re.compile(rf"^\.{re.escape(final.name)}\.(?:(\d+)-[a-z0-9_]{{8}}\.tmp|old-(\d+)|[a-z0-9_]{{8}}\.tmp)$")
    removed: list[Path] = []
    try:
        entries = list(os.scandir(final.parent))
    except OSError:
        return removed
    for entry in entries:
        m = pattern.match(entry.name)
        if m is None:
            continue
        pid = m.group(1) or m.group(2)
        try:
            stale = not pid_alive(int(pid)) if pid else entry.stat(follow_symlinks=False).st_mtime < _STARTED
            if not stale:
                continue
            path = Path(entry.path)
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
        except OSError:
            continue
    return removed


def _umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `final`; rename it onto `final` only if the block succeeds."""
    final = Path(final)
    with _disk_errors(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temps(final)
        fd, tmp_name = tempfile.mkstemp(prefix=_temp_prefix(final), suffix=".tmp", dir=final.parent)
        os.close(fd)
    tmp = Path(tmp_name)
    try:
        with _disk_errors(final):
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
            yield tmp
            os.chmod(tmp, 0o666 & ~_umask())  # writers that replace the file (safetensors, torch) leave 0600
            os.replace(tmp, final)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary directory beside `final`; it replaces `final` only if the block succeeds."""
    final = Path(final)
    with _disk_errors(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temps(final)
        tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(final), suffix=".tmp", dir=final.parent))
    try:
        with _disk_errors(final):
            os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
            try:
                yield tmp
            except CurateError as e:  # a write inside the temporary folder names the folder the user asked for
                if str(tmp) in str(e):
                    raise CurateError(str(e).replace(str(tmp), str(final))) from None
                raise
            _normalize_modes(tmp)
            if final.exists():
                old = final.with_name(f".{final.name}.old-{os.getpid()}")
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _normalize_modes(folder: Path) -> None:
    """Every file 0666 and folder 0777 minus the umask (libraries that write through their own temp files leave 0600)."""
    mask = _umask()
    for p in folder.rglob("*"):
        if not p.is_symlink():
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)


def read_json(path: str | os.PathLike[str], what: str = "file") -> Any:
    """Parse a JSON file; a missing file or bad JSON is one CurateError line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CurateError(f"{path}: {what} not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CurateError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write JSON atomically (sorted keys, indented)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes (read in chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
