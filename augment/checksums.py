"""The `manifest.json` of a curated folder (a mix or a synthetic corpus): inputs with checksums, parameters,
counts and the sha256 of every output file, and `verify_folder`, which rechecks all of them.

Inputs are files (`{"kind": "file", "path", "sha256", "bytes"}`) or rows of a corpus
(`{"kind": "rows", "corpus", "batch_size", "range": [a, b]` or `"ids": [...], "sha256"}`): the sha256 of
the rows' token bytes (little endian, the corpus's own dtype) in the listed order, so a corpus too
large to hash whole is checked on exactly the rows that were used.
"""
from __future__ import annotations

import hashlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from curate.atomic import file_sha256, read_json, write_json
from curate.corpus import Corpus, open_corpus
from curate.errors import CurateError

MANIFEST_FILE = "manifest.json"
MANIFEST_VERSION = 1
HASH_CHUNK_ROWS = 4096


class RowHasher:
    """Running sha256 of token rows as they are streamed (little endian, one fixed dtype)."""

    def __init__(self, dtype: np.dtype) -> None:
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self.h = hashlib.sha256()
        self.rows = 0

    def update(self, rows: np.ndarray) -> None:
        block = np.ascontiguousarray(rows, dtype=self.dtype)
        self.h.update(memoryview(block).cast("B"))
        self.rows += int(block.shape[0]) if block.ndim else 0

    def hexdigest(self) -> str:
        return self.h.hexdigest()


class BackgroundHashing:
    """Feeds row blocks to `RowHasher`s, each on its own background thread (hashlib releases the GIL while
    hashing), in submission order, at most `depth` blocks behind the writer per hasher."""

    def __init__(self, depth: int = 4) -> None:
        self.depth = depth
        self.workers: dict[int, tuple[ThreadPoolExecutor, deque[Future]]] = {}

    def __enter__(self) -> "BackgroundHashing":
        return self

    def submit(self, hasher: RowHasher, rows: np.ndarray) -> None:
        if id(hasher) not in self.workers:
            self.workers[id(hasher)] = (ThreadPoolExecutor(max_workers=1, thread_name_prefix="curate-hash"), deque())
        pool, pending = self.workers[id(hasher)]
        pending.append(pool.submit(hasher.update, rows))
        while len(pending) > self.depth:
            pending.popleft().result()

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                for _, pending in self.workers.values():
                    while pending:
                        pending.popleft().result()
        finally:
            for pool, _ in self.workers.values():
                pool.shutdown(wait=True, cancel_futures=True)


def rows_sha256(corpus: Corpus, row_range: tuple[int, int] | None = None, ids: np.ndarray | None = None) -> str:
    """sha256 of the rows [a, b) (streamed) or of the rows `ids` in that order."""
    hasher = RowHasher(corpus.dtype)
    if row_range is not None:
        for _, chunk in corpus.iter_chunks(row_range[0], row_range[1], chunk_rows=HASH_CHUNK_ROWS):
            hasher.update(chunk)
    else:
        ids = np.asarray(ids, dtype=np.int64)
        for a in range(0, len(ids), HASH_CHUNK_ROWS):
            hasher.update(corpus.take(ids[a : a + HASH_CHUNK_ROWS]))
    return hasher.hexdigest()


def file_input(path: str | Path) -> dict:
    """A file input record (absolute path, sha256, size)."""
    p = Path(path).resolve()
    return {"kind": "file", "path": str(p), "sha256": file_sha256(p), "bytes": p.stat().st_size}


def rows_input(
    corpus: Corpus, sha256: str, row_range: tuple[int, int] | None = None, ids: np.ndarray | None = None, path: str | None = None
) -> dict:
    """A rows input record: the corpus (`path` as the user named it, else its data file), which rows, and their sha256."""
    where = str(Path(path).resolve()) if path is not None else str(Path(corpus.path).resolve())
    rec: dict = {"kind": "rows", "corpus": where, "batch_size": corpus.batch_size, "sha256": sha256}
    if row_range is not None:
        rec["range"] = [int(row_range[0]), int(row_range[1])]
    else:
        rec["ids"] = [int(i) for i in np.asarray(ids)]
    return rec


def _listed_files(folder: Path) -> list[Path]:
    """Every regular file under `folder` except the manifest itself and hidden temporaries."""
    out = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if p.is_file() and rel.as_posix() != MANIFEST_FILE and not any(part.startswith(".") for part in rel.parts):
            out.append(p)
    return out


def output_checksums(folder: Path, known: dict[str, dict] | None = None) -> dict[str, dict]:
    """sha256 and size of every output file, by path relative to `folder` (`known`: computed while writing, same size)."""
    known = known or {}
    out = {}
    for p in _listed_files(folder):
        rel = p.relative_to(folder).as_posix()
        size = p.stat().st_size
        if rel in known and known[rel]["bytes"] == size:
            out[rel] = {"sha256": known[rel]["sha256"], "bytes": size}
        else:
            out[rel] = {"sha256": file_sha256(p), "bytes": size}
    return out


def write_manifest(folder: Path, body: dict, known: dict[str, dict] | None = None) -> dict:
    """Add the output checksums (of everything already in `folder`) and write `manifest.json`."""
    body = dict(body)
    body["version"] = MANIFEST_VERSION
    body["outputs"] = output_checksums(folder, known)
    write_json(folder / MANIFEST_FILE, body)
    return body


def load_manifest(folder: Path) -> dict:
    path = folder / MANIFEST_FILE
    if not folder.is_dir():
        raise CurateError(f"{folder}: not a folder (expected a mix or synthetic corpus folder with {MANIFEST_FILE})")
    if not path.is_file():
        raise CurateError(f"{folder}: no {MANIFEST_FILE} (not written by `curate build-mix` or `curate synth`)")
    body = read_json(path, MANIFEST_FILE)
    if not isinstance(body, dict) or not isinstance(body.get("outputs"), dict):
        raise CurateError(f"{path}: no 'outputs' checksums")
    return body


def _short(h: str) -> str:
    return h[:12]


def verify_folder(folder: str | Path, check_inputs: bool = True) -> tuple[list[str], int]:
    """Recheck every checksum of a curated folder; returns (problems, one line each; number of checks made)."""
    folder = Path(folder)
    body = load_manifest(folder)
    problems: list[str] = []
    checks = 0
    outputs: dict = body["outputs"]
    for rel, rec in sorted(outputs.items()):
        checks += 1
        p = folder / rel
        if not p.is_file():
            problems.append(f"{p}: output file missing")
            continue
        size = p.stat().st_size
        if size != rec.get("bytes"):
            problems.append(f"{p}: size {size} bytes, the manifest says {rec.get('bytes')}")
            continue
        got = file_sha256(p)
        if got != rec.get("sha256"):
            problems.append(f"{p}: checksum mismatch (manifest {_short(str(rec.get('sha256')))}, file {_short(got)})")
    for p in _listed_files(folder):
        rel = p.relative_to(folder).as_posix()
        if rel not in outputs:
            problems.append(f"{p}: file not listed in the manifest")
    if check_inputs:
        for name, rec in sorted(body.get("inputs", {}).items()):
            checks += 1
            problem = _check_input(name, rec)
            if problem:
                problems.append(problem)
    return problems, checks


def _check_input(name: str, rec: dict) -> str | None:
    kind = rec.get("kind")
    if kind == "file":
        p = Path(rec["path"])
        if not p.is_file():
            return f"input {name} {p}: missing"
        got = file_sha256(p)
        if got != rec["sha256"]:
            return f"input {name} {p}: checksum mismatch (manifest {_short(rec['sha256'])}, file {_short(got)})"
        return None
    if kind == "rows":
        try:
            corpus = open_corpus(rec["corpus"], batch_size=rec.get("batch_size"))
            if "range" in rec:
                a, b = rec["range"]
                got = rows_sha256(corpus, row_range=(int(a), int(b)))
                what = f"rows [{a}, {b})"
            else:
                ids = np.asarray(rec["ids"], dtype=np.int64)
                got = rows_sha256(corpus, ids=ids)
                what = f"{len(ids)} listed rows"
        except CurateError as e:
            return f"input {name}: {e}"
        if got != rec["sha256"]:
            return f"input {name} {rec['corpus']}: {what} changed (manifest {_short(rec['sha256'])}, now {_short(got)})"
        return None
    return f"input {name}: unknown kind {kind!r} in the manifest"
