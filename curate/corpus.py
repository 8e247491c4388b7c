"""Token corpora: fixed-length rows in training order, whatever the file format.

A corpus is `num_rows` rows of `row_len` tokens (Pythia: 2,049 = 2,048 context + 1 label shift).
Row id = global position in training order; step = row_id // batch_size. Readers:
Megatron `.bin`/`.idx` (single or Pythia shards), `.npy` of shape (N, L), Parquet with a
`token_ids` list column (one file or a folder of files, e.g. Pythia's Parquet mirror), and a
corpus folder with `corpus.json` metadata (what `curate` writes, e.g. the embedded default).
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curate.errors import CurateError
from curate.megatron import SHARD_RE, BinReader, find_bin_files, read_idx

PYTHIA_ROW_LEN = 2049
PYTHIA_BATCH_SIZE = 1024
METADATA_FILE = "corpus.json"
_EDGE = 1 << 16  # bytes hashed at each end of a data file by `Corpus.content_key`


@dataclass
class CorpusMeta:
    """What a corpus folder's `corpus.json` records beyond the tokens."""

    data: str  # file name of the token data inside the folder (a Megatron prefix's .idx, .npy or .parquet)
    batch_size: int = PYTHIA_BATCH_SIZE
    vocab_size: int | None = None
    tokenizer: str | None = None  # tokenizer.json path relative to the folder, or a transformers name
    sidecar: str | None = None  # per-row Parquet (row_id, doc ids, labels such as `domain`)
    eot_id: int | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def load(cls, folder: Path) -> "CorpusMeta":
        path = folder / METADATA_FILE
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise CurateError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
        known = {k: raw.pop(k) for k in list(raw) if k in cls.__dataclass_fields__ and k != "extra"}
        if "data" not in known:
            raise CurateError(f"{path}: missing the 'data' field")
        return cls(**known, extra=raw)

    def to_json(self) -> dict:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "extra"}
        out.update(self.extra)
        return out


class Corpus:
    """Base class: random access to rows; subclasses implement `_read` for a contiguous range."""

    format: str = "?"

    def __init__(self, path: Path, num_rows: int, row_len: int, dtype: np.dtype, files: list[Path]) -> None:
        self.path = path
        self.num_rows = num_rows
        self.row_len = row_len
        self.dtype = np.dtype(dtype)
        self.files = files
        self.meta: CorpusMeta | None = None
        self._batch_size: int | None = None

    # -- geometry -------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        """Rows per training step: an explicit override, else corpus.json's, else Pythia's 1,024."""
        if self._batch_size is not None:
            return self._batch_size
        return self.meta.batch_size if self.meta else PYTHIA_BATCH_SIZE

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        if int(value) < 1:
            raise CurateError(f"{self.path}: batch size must be at least 1, got {value}")
        self._batch_size = int(value)

    @property
    def row_bytes(self) -> int:
        """Bytes one row occupies in the token data (row_len x token size)."""
        return self.row_len * self.dtype.itemsize

    def step_of_row(self, row_id: int | np.ndarray) -> int | np.ndarray:
        """The training step at which a row is seen: row_id // batch_size."""
        return row_id // self.batch_size

    def row_byte_range(self, row_id: int) -> tuple[int, int]:
        """Bytes [start, stop) of row `row_id` in the (virtually concatenated) token data."""
        return row_id * self.row_bytes, (row_id + 1) * self.row_bytes

    def step_byte_range(self, step: int, batch_size: int | None = None) -> tuple[int, int]:
        """Bytes [start, stop) of step `step`'s batch (Pythia: [N * 4,196,352, (N+1) * 4,196,352))."""
        start, stop = self.step_range(step, batch_size)
        return start * self.row_bytes, stop * self.row_bytes

    @property
    def num_steps(self) -> int:
        """Whole steps in the corpus at its batch size."""
        return self.num_rows // self.batch_size

    def step_range(self, step: int, batch_size: int | None = None) -> tuple[int, int]:
        """Row ids [start, stop) of step `step`'s batch."""
        b = batch_size or self.batch_size
        if step < 0:
            raise CurateError(f"{self.path}: step {step} is negative")
        return step * b, (step + 1) * b

    def folder(self) -> Path:
        return self.path if self.path.is_dir() else self.path.parent

    # -- reading --------------------------------------------------------------------------
    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as an (n, row_len) array (a memory-mapped view where possible)."""
        if not (0 <= start <= stop <= self.num_rows):
            raise CurateError(f"{self.path}: rows [{start}, {stop}) outside the corpus (0..{self.num_rows})")
        return self._read(start, stop)

    def step_batch(self, step: int, batch_size: int | None = None) -> np.ndarray:
        """The rows of step `step`'s batch (O(1): one contiguous read)."""
        start, stop = self.step_range(step, batch_size)
        if stop > self.num_rows:
            raise CurateError(
                f"{self.path}: step {step} is past the end ({self.num_rows} rows = {self.num_rows // (batch_size or self.batch_size)} "
                f"whole steps of {batch_size or self.batch_size})"
            )
        return self.rows(start, stop)

    def take(self, row_ids: np.ndarray) -> np.ndarray:
        """Rows at arbitrary ids (in the given order)."""
        ids = np.asarray(row_ids, dtype=np.int64)
        out = np.empty((len(ids), self.row_len), dtype=self.dtype)
        if len(ids) == 0:
            return out
        if ids.min() < 0 or ids.max() >= self.num_rows:
            raise CurateError(f"{self.path}: row id out of range 0..{self.num_rows - 1}")
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        # read runs of consecutive ids in one call
        breaks = np.flatnonzero(np.diff(sorted_ids) != 1) + 1
        for run in np.split(np.arange(len(ids)), breaks):
            a, b = int(sorted_ids[run[0]]), int(sorted_ids[run[-1]]) + 1
            out[order[run]] = self._read(a, b)
        return out

    def iter_chunks(self, start: int = 0, stop: int | None = None, chunk_rows: int = 4096) -> Iterator[tuple[int, np.ndarray]]:
        """Stream rows [start, stop) as (first_row_id, rows) chunks, never loading the whole corpus."""
        stop = self.num_rows if stop is None else stop
        if not (0 <= start <= stop <= self.num_rows):
            raise CurateError(f"{self.path}: rows [{start}, {stop}) outside the corpus (0..{self.num_rows})")
        cuts = sorted({*range(start, stop, chunk_rows), *self._read_breaks(start, stop), stop})
        for a, b in zip(cuts[:-1], cuts[1:]):
            yield a, np.asarray(self._read(a, b))

    def _read_breaks(self, start: int, stop: int) -> list[int]:
        """Row ids inside (start, stop) where a streaming read should break to stay zero-copy."""
        return []

    def _read(self, start: int, stop: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- description ----------------------------------------------------------------------
    def vocab_range(self, chunk_rows: int = 65536) -> tuple[int, int]:
        """(min id, max id) over the whole corpus, by streaming."""
        lo, hi = np.iinfo(np.int64).max, np.iinfo(np.int64).min
        for _, chunk in self.iter_chunks(chunk_rows=chunk_rows):
            if chunk.size:
                lo, hi = min(lo, int(chunk.min())), max(hi, int(chunk.max()))
        return lo, hi

    def tokenizer_spec(self) -> str | None:
        """The tokenizer recorded for this corpus (an absolute tokenizer.json path or a name)."""
        if not self.meta or not self.meta.tokenizer:
            return None
        candidate = self.folder() / self.meta.tokenizer
        return str(candidate) if candidate.exists() else self.meta.tokenizer

    def sidecar_path(self) -> Path | None:
        if not self.meta or not self.meta.sidecar:
            return None
        return self.folder() / self.meta.sidecar

    def content_key(self) -> str:
        """What identifies the corpus by its content, not its path: shape, file names and sizes, and a hash
        of each file's first and last 64 KiB (all of a Megatron `.idx`, which is small). Equal after a copy or move."""
        h = hashlib.sha256(f"{self.num_rows}:{self.row_len}:{self.dtype.str}".encode())
        for f in self.files:
            f = Path(f)
            size = f.stat().st_size
            h.update(f"|{f.name}:{size}|".encode())
            with f.open("rb") as fh:
                if f.suffix == ".idx" or size <= 2 * _EDGE:
                    h.update(fh.read())
                else:
                    h.update(fh.read(_EDGE))
                    fh.seek(size - _EDGE)
                    h.update(fh.read(_EDGE))
        return h.hexdigest()[:32]

    def describe(self) -> dict:
        return {
            "path": str(self.path),
            "format": self.format,
            "rows": self.num_rows,
            "row_len": self.row_len,
            "dtype": str(self.dtype),
            "batch_size": self.batch_size,
            "steps": self.num_steps,
            "files": [str(f) for f in self.files],
        }


class MegatronCorpus(Corpus):
    """Megatron MMIDIDX dataset of fixed-length rows: one `.bin`, or Pythia's shards, plus one `.idx`."""

    format = "megatron"
    FULL_CHECK_MAX_ROWS = 4_000_000

    def __init__(self, idx_path: Path) -> None:
        idx = read_idx(idx_path)
        files = find_bin_files(idx_path)
        self.bin = BinReader(files)
        n = idx.num_sequences
        item = idx.dtype.itemsize
        row_len = int(idx.sizes[0]) if n else 0
        if n:
            not_rows = f"{idx_path}: sequences are not fixed-length contiguous rows (curate needs rows of one length)"
            # O(1) checks for any size; the full per-row check for corpora that fit comfortably.
            if row_len < 1 or int(idx.sizes[-1]) != row_len or int(idx.pointers[0]) != 0:
                raise CurateError(not_rows)
            if int(idx.pointers[-1]) != (n - 1) * row_len * item:
                raise CurateError(not_rows)
            if n <= self.FULL_CHECK_MAX_ROWS:
                expected = np.arange(n, dtype=np.int64) * (row_len * item)
                if not (np.all(idx.sizes == row_len) and np.array_equal(idx.pointers, expected)):
                    raise CurateError(not_rows)
            self._check_data_size(idx_path, files, n, row_len, idx.dtype)
        elif self.bin.nbytes:  # an index that lists nothing beside data: a broken index, not an empty corpus
            raise CurateError(f"{files[0]}: {self.bin.nbytes} bytes of data, but the index {idx_path.name} lists 0 sequences")
        super().__init__(idx_path, n, row_len, idx.dtype, [idx_path, *files])
        self.idx = idx
        self._row_bytes = row_len * item

    def _check_data_size(self, idx_path: Path, files: list[Path], n: int, row_len: int, dtype: np.dtype) -> None:
        need = n * row_len * dtype.itemsize
        have = self.bin.nbytes
        where = str(files[0]) if len(files) == 1 else f"{files[0].parent}/{files[0].name.rsplit('-', 3)[0]}-*.bin ({len(files)} shards)"
        what = f"{n} rows of {row_len} {dtype} tokens"
        row_bytes = row_len * dtype.itemsize
        if have < need:
            hint = " (a shard is missing or truncated)" if len(files) > 1 else ""
            raise CurateError(f"{where}: truncated data: {have} bytes, the index needs {need} for {what}{hint}")
        if have % row_bytes:
            raise CurateError(
                f"{where}: data size {have} bytes is not a whole number of rows ({row_bytes} bytes each); "
                f"the index {idx_path.name} needs {need} bytes for {what}"
            )
        if have > need:
            raise CurateError(f"{where}: data size {have} bytes does not match the index ({need} bytes for {what})")

    def _read_breaks(self, start: int, stop: int) -> list[int]:
        """Around each shard boundary: the rows before it, the one row straddling it, the rows after."""
        rb = self._row_bytes
        out: list[int] = []
        for boundary in self.bin.starts[1:-1].tolist():
            lo, hi = boundary // rb, -(-boundary // rb)
            out.extend(r for r in (lo, hi) if start < r < stop)
        return out

    def _read(self, start: int, stop: int) -> np.ndarray:
        raw = self.bin.read(start * self._row_bytes, (stop - start) * self._row_bytes)
        return raw.view(self.dtype.newbyteorder("<")).reshape(stop - start, self.row_len)

    def describe(self) -> dict:
        out = super().describe()
        out["shards"] = len(self.bin.files)
        out["data_bytes"] = self.bin.nbytes
        return out


class NpyCorpus(Corpus):
    """A `.npy` array of shape (N, L), memory-mapped."""

    format = "npy"

    def __init__(self, path: Path) -> None:
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as e:
            raise CurateError(f"{path}: not a readable .npy file ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        if not isinstance(arr, np.ndarray) or arr.ndim != 2:
            raise CurateError(f"{path}: expected a 2-D array (rows, tokens), got shape {getattr(arr, 'shape', '?')}")
        if arr.dtype.kind not in "iu":
            raise CurateError(f"{path}: expected integer token ids, got dtype {arr.dtype}")
        if arr.dtype.byteorder == ">":
            raise CurateError(f"{path}: big-endian token ids are not supported")
        super().__init__(path, int(arr.shape[0]), int(arr.shape[1]), arr.dtype, [path])
        self.array = arr

    def _read(self, start: int, stop: int) -> np.ndarray:
        return self.array[start:stop]


def check_token_ids(corpus: Corpus, rows: tuple[int, int], vocab_size: int, chunk_rows: int = 65536,
                    progress: Callable[[int], None] | None = None) -> None:
    """The one vocabulary check: every token id of rows [rows[0], rows[1]) lies in [0, vocab_size), else one
    CurateError line naming the corpus file, the first bad row and its id. Streams the rows in chunks;
    `progress(n)` is called with the number of rows of each chunk checked."""
    for a, chunk in corpus.iter_chunks(rows[0], rows[1], chunk_rows=chunk_rows):
        if chunk.size and (int(chunk.max()) >= vocab_size or int(chunk.min()) < 0):
            r, c = np.argwhere((chunk < 0) | (chunk >= vocab_size))[0]
            raise CurateError(
                f"{corpus.path}: token id {int(chunk[r, c])} at row {a + int(r)} is outside the model's "
                f"vocabulary (size {vocab_size})"
            )
        if progress is not None:
            progress(chunk.shape[0])


def natural_key(name: str) -> list:
    """Sort key that orders embedded numbers numerically (batch_2000 before batch_10000)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


class ParquetCorpus(Corpus):
    """Parquet file(s) with a `token_ids` list column; rows in file order, files in natural name order.

    Reads one row group at a time (Pythia's mirror holds 1,000 steps per file), caching the last one.
    A `curate.batch_size` schema metadata key (written by `curate.parquet_io`) sets the batch size.
    """

    format = "parquet"

    def __init__(self, path: Path) -> None:
        files = sorted(path.glob("*.parquet"), key=lambda f: natural_key(f.name)) if path.is_dir() else [path]
        if not files:
            raise CurateError(f"{path}: no .parquet files")
        self._files: list = []
        group_rows: list[int] = []
        self._groups: list[tuple[int, int]] = []  # (file index, row group index) in reading order
        row_len: int | None = None
        dtype: np.dtype | None = None
        batch_size: int | None = None
        for fi, f in enumerate(files):
            try:
                pf = pq.ParquetFile(f)
            except Exception as e:  # pyarrow raises several types for corrupt files
                raise CurateError(f"{f}: not a readable Parquet file ({type(e).__name__})") from None
            schema = pf.schema_arrow
            if "token_ids" not in schema.names:
                raise CurateError(f"{f}: no 'token_ids' column (columns: {', '.join(schema.names)})")
            field_type = schema.field("token_ids").type
            value_type = getattr(field_type, "value_type", None)
            if value_type is None:
                raise CurateError(f"{f}: column 'token_ids' is {field_type}, expected a list of integers")
            try:
                this_dtype = np.dtype(value_type.to_pandas_dtype())
            except NotImplementedError:
                this_dtype = np.dtype(object)
            if this_dtype.kind not in "iu":
                raise CurateError(f"{f}: column 'token_ids' holds {value_type}, expected integers")
            if dtype is None:
                dtype = this_dtype
            elif this_dtype != dtype:
                raise CurateError(f"{f}: token_ids are {this_dtype}, but {files[0].name} has {dtype}")
            meta = schema.metadata or {}
            if b"curate.batch_size" in meta and batch_size is None:
                batch_size = int(meta[b"curate.batch_size"])
            self._files.append(pf)
            for g in range(pf.metadata.num_row_groups):
                count = pf.metadata.row_group(g).num_rows
                if count:
                    self._groups.append((fi, g))
                    group_rows.append(count)
            if row_len is None and pf.metadata.num_rows:
                first = next(pf.iter_batches(batch_size=1, columns=["token_ids"])).column(0)
                row_len = len(first[0])
        self._starts = np.concatenate([[0], np.cumsum(group_rows, dtype=np.int64)]).astype(np.int64)
        self._cache: tuple[int, np.ndarray] | None = None
        super().__init__(path, int(self._starts[-1]), row_len or 0, dtype or np.dtype(np.int64), files)
        if batch_size:
            self._batch_size = batch_size

    def _group_rows(self, k: int) -> np.ndarray:
        if self._cache is None or self._cache[0] != k:
            fi, g = self._groups[k]
            col = self._files[fi].read_row_group(g, columns=["token_ids"]).column(0).combine_chunks()
            if col.null_count:
                bad = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
                raise CurateError(f"{self.files[fi]}: row {self._local_row(k, bad)} has no token_ids (null)")
            lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
            if len(lengths) and (lengths != self.row_len).any():
                bad = int(np.flatnonzero(lengths != self.row_len)[0])
                raise CurateError(
                    f"{self.files[fi]}: row {self._local_row(k, bad)} has {lengths[bad]} tokens, expected {self.row_len}"
                )
            flat = pc.list_flatten(col).to_numpy(zero_copy_only=False)
            self._cache = (k, flat.astype(self.dtype, copy=False).reshape(-1, self.row_len))
        return self._cache[1]

    def _local_row(self, k: int, row_in_group: int) -> int:
        """Row number inside its file of row `row_in_group` of reading-order group k."""
        fi, g = self._groups[k]
        before = sum(self._files[fi].metadata.row_group(j).num_rows for j in range(g))
        return before + row_in_group

    def _read(self, start: int, stop: int) -> np.ndarray:
        parts = []
        pos = start
        while pos < stop:
            k = int(np.searchsorted(self._starts, pos, side="right")) - 1
            rows = self._group_rows(k)
            local = pos - int(self._starts[k])
            take = min(stop - pos, rows.shape[0] - local)
            parts.append(rows[local : local + take])
            pos += take
        if not parts:
            return np.empty((0, self.row_len), self.dtype)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _megatron_idx_for(p: Path) -> Path:
    """The `.idx` of a path given as a prefix, `.bin`, `.idx` or one of Pythia's shard files."""
    m = SHARD_RE.match(p.name)
    if m:
        return p.with_name(m.group("stem") + ".idx")
    return p.with_suffix(".idx")


def open_corpus(path: str | Path, batch_size: int | None = None) -> Corpus:
    """Open any supported corpus; a bad path or file is one CurateError line.

    `batch_size` overrides the recorded one (corpus.json, Parquet metadata, else Pythia's 1,024).
    """
    corpus = _open(Path(path))
    if batch_size is not None:
        corpus.batch_size = batch_size
    return corpus


def _open(p: Path) -> Corpus:
    if p.is_dir() and (p / METADATA_FILE).is_file():
        meta = CorpusMeta.load(p)
        data = p / meta.data
        if not (data.exists() or data.with_name(data.name + ".idx").is_file() or data.with_suffix(".idx").is_file()):
            raise CurateError(f"{p / METADATA_FILE}: its data {meta.data!r} is not in {p}")
        corpus = _open(data)
        corpus.meta = meta
        return corpus
    if p.suffix in (".bin", ".idx"):
        return MegatronCorpus(_megatron_idx_for(p))
    if p.suffix == ".npy":
        if not p.is_file():
            raise CurateError(f"{p}: file not found")
        return NpyCorpus(p)
    if p.suffix == ".parquet":
        if not p.exists():
            raise CurateError(f"{p}: file not found")
        return ParquetCorpus(p)
    if p.is_dir():
        idxs = sorted(p.glob("*.idx"))
        if len(idxs) == 1:
            return MegatronCorpus(idxs[0])
        if len(idxs) > 1:
            raise CurateError(f"{p}: several .idx files ({', '.join(i.name for i in idxs[:4])}); name one")
        if any(p.glob("*.parquet")):
            return ParquetCorpus(p)
        npys = sorted(p.glob("*.npy"))
        if len(npys) == 1:
            return NpyCorpus(npys[0])
        raise CurateError(f"{p}: no corpus found (expected corpus.json, one .idx, .parquet files or one .npy)")
    if p.with_name(p.name + ".idx").is_file():
        return MegatronCorpus(p.with_name(p.name + ".idx"))
    if not p.exists():
        raise CurateError(f"{p}: no such file or folder")
    raise CurateError(f"{p}: not a corpus (expected a .bin/.idx prefix, .npy, .parquet or a corpus folder)")


def training_rows(corpus: Corpus) -> int:
    """The rows training may read: those before the corpus's held-out rows (`heldout_start` in corpus.json), else all.
    Held-out rows never enter training, an index pool, a neighbour or synthetic source, or a mix."""
    start = corpus.meta.extra.get("heldout_start") if corpus.meta is not None else None
    return int(start) if start is not None and 0 < int(start) <= corpus.num_rows else corpus.num_rows


def same_corpus(a: Corpus, b: Corpus) -> bool:
    """Whether two opened corpora are the same files (by resolved path)."""
    return Path(a.path).resolve() == Path(b.path).resolve()
