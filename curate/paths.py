"""Paths recorded in a folder's JSON files: relative to that folder, so a copied or moved workspace still reads.

A path is stored relative to the folder that holds the file when the two share a folder below the
filesystem root (a workspace), else absolute. Reading takes a relative path from the file's folder;
absolute paths (older folders, or a corpus elsewhere on the machine) are read as they are.
"""
from __future__ import annotations

import os
from pathlib import Path


def portable(path: str | Path, folder: str | Path) -> str:
    """`path` as stored in a file inside `folder`: relative to `folder` when they share a non-root ancestor."""
    p = Path(path).expanduser().resolve()
    f = Path(folder).expanduser().resolve()
    common = Path(os.path.commonpath([p, f]))
    if common == Path(common.anchor):
        return str(p)
    return os.path.relpath(p, f)


def portable_if_local(value: str, folder: str | Path) -> str:
    """`portable(value, folder)` when `value` is a path on this machine; a hub name (or name@revision) as it is."""
    return portable(value, folder) if Path(value).expanduser().exists() else value


def _present(p: Path) -> bool:
    return p.exists() or p.with_name(p.name + ".idx").is_file()


def resolve_stored(value: str, folder: str | Path, absolute: str | None = None) -> str:
    """A stored path read back: relative ones from `folder`; when that is missing and the absolute path the
    writer recorded (`absolute`) exists, that one (the folder moved, the input stayed)."""
    p = Path(value).expanduser()
    if p.is_absolute():
        return str(p)
    here = Path(folder) / p
    if not _present(here) and absolute is not None and _present(Path(absolute)):
        return str(absolute)
    return os.path.normpath(here)
