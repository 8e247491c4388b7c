"""Megatron `MMIDIDX` indexed dataset: the `.idx` header/arrays and the (possibly sharded) `.bin`.

Layout of the `.idx` (little endian): 9-byte magic ``MMIDIDX\\x00\\x00``; uint64 version (1);
uint8 dtype code; uint64 sequence count L; uint64 document count D; int32[L] sizes (tokens);
int64[L] byte pointers into the `.bin`; int64[D] document indices. The `.bin` is raw tokens.
Pythia ships the `.bin` as shards ``document-000NN-of-000MM.bin`` next to one ``document.idx``;
the pointers address the shards' concatenation, so a row may straddle two shard files.
"""
from __future__ import annotations

import contextlib
import re
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from curate.atomic import atomic_path
from curate.errors import CurateError

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
HEADER_BYTES = 9 + 8 + 1 + 8 + 8
DTYPE_BY_CODE: dict[int, np.dtype] = {
    1: np.dtype(np.uint8),
    2: np.dtype(np.int8),
    3: np.dtype(np.int16),
    4: np.dtype(np.int32),
    5: np.dtype(np.int64),
    8: np.dtype(np.uint16),
}
CODE_BY_DTYPE = {v: k for k, v in DTYPE_BY_CODE.items()}
SHARD_RE = re.compile(r"^(?P<stem>.+)-(?P<i>\d+)-of-(?P<n>\d+)\.bin$")


@dataclass(frozen=True)
class IdxFile:
    """The parsed `.idx` arrays (memory-mapped)."""

    path: Path
    dtype: np.dtype
    sizes: np.ndarray
    pointers: np.ndarray
    doc_idx: np.ndarray

    @property
    def num_sequences(self) -> int:
        return int(self.sizes.shape[0])


def token_dtype_for_vocab(vocab_size: int) -> np.dtype:
    """uint16 when every id fits below 65,500 (Megatron's rule of thumb), else int32."""
    return np.dtype(np.uint16) if vocab_size < 65500 else np.dtype(np.int32)


def read_idx(path: str | Path) -> IdxFile:
    """Parse and validate an `.idx` file; every problem is one CurateError line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CurateError(f"{path}: index file not found")
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise CurateError(f"{path}: truncated index ({size} bytes, header needs {HEADER_BYTES})")
    with open(path, "rb") as f:
        head = f.read(HEADER_BYTES)
    if head[:9] != MAGIC:
        raise CurateError(f"{path}: bad magic {head[:9]!r}, expected {MAGIC!r} (not a Megatron MMIDIDX index)")
    (version,) = struct.unpack("<Q", head[9:17])
    if version != VERSION:
        raise CurateError(f"{path}: unsupported index version {version} (expected {VERSION})")
    code = head[17]
    if code not in DTYPE_BY_CODE:
        raise CurateError(f"{path}: unknown dtype code {code} (known: {sorted(DTYPE_BY_CODE)})")
    n_seq, n_doc = struct.unpack("<QQ", head[18:34])
    need = HEADER_BYTES + 4 * n_seq + 8 * n_seq + 8 * n_doc
    if size != need:
        raise CurateError(
            f"{path}: index size {size} bytes does not match its header ({n_seq} sequences, "
            f"{n_doc} documents need {need} bytes)"
        )
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    off = HEADER_BYTES
    sizes = mm[off : off + 4 * n_seq].view("<i4")
    off += 4 * n_seq
    pointers = mm[off : off + 8 * n_seq].view("<i8")
    off += 8 * n_seq
    doc_idx = mm[off : off + 8 * n_doc].view("<i8")
    return IdxFile(path, DTYPE_BY_CODE[code], sizes, pointers, doc_idx)


def serialize_idx(dtype: np.dtype, sizes: np.ndarray, pointers: np.ndarray, doc_idx: np.ndarray) -> bytes:
    """Serialize `.idx` arrays exactly as given (the inverse of `read_idx`)."""
    dtype = np.dtype(dtype)
    if dtype not in CODE_BY_DTYPE:
        raise CurateError(f"cannot write dtype {dtype} to a Megatron index (supported: {sorted(map(str, CODE_BY_DTYPE))})")
    sizes = np.asarray(sizes, dtype="<i4")
    pointers = np.asarray(pointers, dtype="<i8")
    doc_idx = np.asarray(doc_idx, dtype="<i8")
    if sizes.shape != pointers.shape:
        raise ValueError(f"sizes {sizes.shape} and pointers {pointers.shape} differ in length")
    header = MAGIC + struct.pack("<Q", VERSION) + struct.pack("<B", CODE_BY_DTYPE[dtype])
    header += struct.pack("<QQ", len(sizes), len(doc_idx))
    return header + sizes.tobytes() + pointers.tobytes() + doc_idx.tobytes()


def contiguous_pointers(sizes: np.ndarray, itemsize: int) -> np.ndarray:
    """Byte offsets of sequences stored back to back: 0, s0*item, (s0+s1)*item, ..."""
    sizes = np.asarray(sizes, dtype=np.int64)
    pointers = np.zeros(len(sizes), dtype="<i8")
    if len(sizes) > 1:
        np.cumsum(sizes[:-1] * itemsize, out=pointers[1:])
    return pointers


def idx_bytes(dtype: np.dtype, sizes: np.ndarray, doc_idx: np.ndarray | None = None) -> bytes:
    """Serialize an `.idx` for contiguous sequences of `sizes` tokens (pointers derived; doc_idx 0..L by default)."""
    dtype = np.dtype(dtype)
    sizes = np.asarray(sizes, dtype="<i4")
    if doc_idx is None:
        doc_idx = np.arange(len(sizes) + 1, dtype="<i8")
    return serialize_idx(dtype, sizes, contiguous_pointers(sizes, dtype.itemsize), doc_idx)


def shard_name(stem: str, index: int, last: int) -> str:
    """Pythia's shard naming: `<stem>-<index:05>-of-<last:05>.bin` (the number after `of` is the last index)."""
    return f"{stem}-{index:05d}-of-{last:05d}.bin"


def find_bin_files(idx_path: Path) -> list[Path]:
    """The `.bin` file(s) belonging to an `.idx`: `<prefix>.bin`, or the ordered Pythia shards.

    Pythia names its 21 shards `document-00000-of-00020.bin` .. `document-00020-of-00020.bin`
    (the number after `of` is the last index); numbering 0..n-1 or 1..n of n is accepted too.
    Gaps in the numbering are reported by name; a missing last shard shows up as truncated data.
    """
    prefix = idx_path.with_suffix("")
    single = prefix.with_suffix(".bin")
    if single.is_file():
        return [single]
    shards: dict[int, Path] = {}
    declared: set[int] = set()
    width = 5
    for p in idx_path.parent.glob(f"{prefix.name}-*-of-*.bin"):
        m = SHARD_RE.match(p.name)
        if m and m.group("stem") == prefix.name:
            shards[int(m.group("i"))] = p
            declared.add(int(m.group("n")))
            width = len(m.group("i"))
    if not shards:
        raise CurateError(
            f"{idx_path}: no data file {single.name} or {prefix.name}-NNNNN-of-NNNNN.bin shards beside it"
        )
    if len(declared) != 1:
        raise CurateError(f"{idx_path}: shard files disagree on the shard count ({sorted(declared)})")
    (n,) = declared
    first = 1 if min(shards) == 1 and 0 not in shards else 0
    last = max(max(shards), n if first == 1 else n - 1)
    missing = [i for i in range(first, last + 1) if i not in shards]
    if missing:
        names = ", ".join(f"{prefix.name}-{i:0{width}d}-of-{n:0{width}d}.bin" for i in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise CurateError(f"{idx_path}: missing shard file(s) {names}{more}")
    if max(shards) > n:
        raise CurateError(f"{idx_path}: shard {shards[max(shards)].name} numbers past its declared count {n}")
    return [shards[i] for i in sorted(shards)]


class BinReader:
    """Byte-addressed reads over one `.bin` or the concatenation of its shards (memory-mapped)."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files
        self.maps = [np.memmap(f, dtype=np.uint8, mode="r") if f.stat().st_size else np.zeros(0, np.uint8) for f in files]
        sizes = np.array([m.shape[0] for m in self.maps], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(sizes)])
        self.nbytes = int(self.starts[-1])

    def read(self, offset: int, nbytes: int) -> np.ndarray:
        """Bytes [offset, offset + nbytes) of the virtual concatenation (a view when in one file)."""
        if offset < 0 or offset + nbytes > self.nbytes:
            raise CurateError(f"{self.files[0]}: read of bytes [{offset}, {offset + nbytes}) past the data end {self.nbytes}")
        i = int(np.searchsorted(self.starts, offset, side="right")) - 1
        local = offset - int(self.starts[i])
        if local + nbytes <= self.maps[i].shape[0]:
            return self.maps[i][local : local + nbytes]
        out = np.empty(nbytes, dtype=np.uint8)
        done = 0
        while done < nbytes:
            m = self.maps[i]
            take = min(nbytes - done, m.shape[0] - local)
            out[done : done + take] = m[local : local + take]
            done += take
            i += 1
            local = 0
        return out


def write_megatron(prefix: str | Path, rows: "np.ndarray | list[np.ndarray]", dtype: np.dtype) -> tuple[Path, Path]:
    """Write fixed-length rows (an array or chunks of arrays) as `<prefix>.bin` + `<prefix>.idx`, atomically."""
    writer = MegatronWriter(prefix, dtype)
    with writer:
        chunks = [rows] if isinstance(rows, np.ndarray) else rows
        for chunk in chunks:
            writer.add_rows(chunk)
    return writer.bin_path, writer.idx_path


class MegatronWriter:
    """Streaming writer of fixed-length rows; both files appear (by rename) only on a clean close.

    The index it writes is what GPT-NeoX / Megatron readers expect: version 1, one sequence per
    row, contiguous pointers, doc_idx = 0..L (every row its own document).
    """

    def __init__(self, prefix: str | Path, dtype: np.dtype) -> None:
        self.prefix = Path(prefix)
        self.dtype = np.dtype(dtype)
        if self.dtype not in CODE_BY_DTYPE:
            raise CurateError(f"cannot write dtype {self.dtype} to a Megatron dataset")
        self.bin_path = self.prefix.with_name(self.prefix.name + ".bin")
        self.idx_path = self.prefix.with_name(self.prefix.name + ".idx")
        self.row_len: int | None = None
        self.rows = 0
        self._stack: contextlib.ExitStack | None = None

    def __enter__(self) -> "MegatronWriter":
        stack = contextlib.ExitStack()
        # entered first so that it is renamed last: the index never appears without its data
        self._idx_tmp = stack.enter_context(atomic_path(self.idx_path))
        self._bin_tmp = stack.enter_context(atomic_path(self.bin_path))
        self._fh = stack.enter_context(open(self._bin_tmp, "wb"))
        self._stack = stack
        return self

    def add_rows(self, rows: np.ndarray) -> None:
        """Append an (n, row_len) block of token ids (every block must have the same row length)."""
        if self._stack is None:
            raise RuntimeError("MegatronWriter.add_rows outside its `with` block")
        rows = np.asarray(rows)
        if rows.ndim != 2:
            raise ValueError("rows must be a 2-D array (n, row_len)")
        if self.row_len is None:
            self.row_len = int(rows.shape[1])
        elif rows.shape[1] != self.row_len:
            raise ValueError(f"row length changed from {self.row_len} to {rows.shape[1]}")
        if rows.size and rows.dtype != self.dtype:
            info = np.iinfo(self.dtype)
            lo, hi = int(rows.min()), int(rows.max())
            if lo < info.min or hi > info.max:
                raise CurateError(f"{self.bin_path}: token ids [{lo}, {hi}] do not fit {self.dtype}")
        # file.write, not ndarray.tofile: a full disk then raises OSError(ENOSPC), not a bare short-write error
        self._fh.write(np.ascontiguousarray(rows, dtype=self.dtype.newbyteorder("<")).reshape(-1).view(np.uint8))
        self.rows += int(rows.shape[0])

    def __exit__(self, exc_type, exc, tb) -> None:
        stack, self._stack = self._stack, None
        assert stack is not None
        if exc_type is None:
            try:
                self._fh.close()
                sizes = np.full(self.rows, self.row_len or 0, dtype="<i4")
                self._idx_tmp.write_bytes(idx_bytes(self.dtype, sizes))
            except BaseException:
                if not stack.__exit__(*sys.exc_info()):
                    raise
                return
        stack.__exit__(exc_type, exc, tb)
