"""Token corpora: fixed-length rows in training order, whatever the file format.

A corpus is `num_rows` rows of `row_len` tokens (Pythia: 2,049 = 2,048 context + 1 label shift).
Row id = global position in training order; step = row_id // batch_size. Readers:
Megatron `.bin`/`.idx` (single or Pythia shards), `.npy` of shape (N, L), Parquet with a
`token_ids` list column (one file or a folder of files, e.g. Pythia's Parquet mirror), and a
corpus folder with `corpus.json` metadata (what `curate` writes, e.g. the embedded default).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from curate.errors import CurateError
from curate.megatron import BinReader, find_bin_files, read_idx

PYTHIA_ROW_LEN = 2049
PYTHIA_BATCH_SIZE = 1024
METADATA_FILE = "corpus.json"


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

    # -- geometry -------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        return self.meta.batch_size if self.meta else PYTHIA_BATCH_SIZE

    @property
    def num_steps(self) -> int:
        """Whole steps in the corpus at its batch size."""
        return self.num_rows // self.batch_size

    def step_range(self, step: int, batch_size: int | None = None) -> tuple[int, int]:
        """Row ids [start, stop) of step `step`'s batch."""
        b = batch_size or self.batch_size
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
        start, stop = self.step_range(step, batch_size)
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
        for a in range(start, stop, chunk_rows):
            b = min(stop, a + chunk_rows)
            yield a, np.asarray(self.rows(a, b))

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

    def check_vocab(self, vocab_size: int, chunk_rows: int = 65536) -> None:
        """Fail with one line if any token id is outside [0, vocab_size)."""
        for a, chunk in self.iter_chunks(chunk_rows=chunk_rows):
            bad = (chunk < 0) | (chunk >= vocab_size)
            if bad.any():
                r, c = np.argwhere(bad)[0]
                raise CurateError(
                    f"{self.path}: token id {int(chunk[r, c])} at row {a + int(r)} is outside the model's "
                    f"vocabulary (size {vocab_size})"
                )

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

    def __init__(self, idx_path: Path) -> None:
        idx = read_idx(idx_path)
        files = find_bin_files(idx_path)
        self.bin = BinReader(files)
        n = idx.num_sequences
        item = idx.dtype.itemsize
        row_len = int(idx.sizes[0]) if n else 0
        if n:
            # O(1) checks for any size; the full per-row check for corpora that fit comfortably.
            last_end = int(idx.pointers[-1]) + int(idx.sizes[-1]) * item
            if int(idx.sizes[-1]) != row_len or int(idx.pointers[0]) != 0 or int(idx.pointers[-1]) != (n - 1) * row_len * item:
                raise CurateError(f"{idx_path}: sequences are not fixed-length contiguous rows (curate needs rows of one length)")
            if n <= 4_000_000:
                if not (np.all(idx.sizes == row_len) and np.array_equal(idx.pointers, np.arange(n, dtype=np.int64) * row_len * item)):
                    raise CurateError(f"{idx_path}: sequences are not fixed-length contiguous rows (curate needs rows of one length)")
            if self.bin.nbytes < last_end:
                raise CurateError(
                    f"{files[-1]}: truncated data: {self.bin.nbytes} bytes, the index needs {last_end} "
                    f"({n} rows of {row_len} {idx.dtype} tokens)"
                )
            if self.bin.nbytes != last_end:
                raise CurateError(
                    f"{files[-1]}: data size {self.bin.nbytes} bytes does not match the index ({last_end} bytes "
                    f"for {n} rows of {row_len} {idx.dtype} tokens)"
                )
        super().__init__(idx_path, n, row_len, idx.dtype, [idx_path, *files])
        self.idx = idx
        self._row_bytes = row_len * item

    def _read(self, start: int, stop: int) -> np.ndarray:
        raw = self.bin.read(start * self._row_bytes, (stop - start) * self._row_bytes)
        return raw.view(self.dtype.newbyteorder("<")).reshape(stop - start, self.row_len)


class NpyCorpus(Corpus):
    """A `.npy` array of shape (N, L), memory-mapped."""

    format = "npy"

    def __init__(self, path: Path) -> None:
        try:
            arr = np.load(path, mmap_mode="r")
        except (ValueError, OSError) as e:
            raise CurateError(f"{path}: not a readable .npy file ({e})") from None
        if arr.ndim != 2:
            raise CurateError(f"{path}: expected a 2-D array (rows, tokens), got shape {arr.shape}")
        if arr.dtype.kind not in "iu":
            raise CurateError(f"{path}: expected integer token ids, got dtype {arr.dtype}")
        super().__init__(path, int(arr.shape[0]), int(arr.shape[1]), arr.dtype, [path])
        self.array = arr

    def _read(self, start: int, stop: int) -> np.ndarray:
        return self.array[start:stop]


class ParquetCorpus(Corpus):
    """Parquet file(s) with a `token_ids` list column; rows in file order, files in name order."""

    format = "parquet"

    def __init__(self, path: Path) -> None:
        import pyarrow.parquet as pq

        files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
        if not files:
            raise CurateError(f"{path}: no .parquet files")
        self._pq = pq
        self._files = []
        counts = []
        row_len = None
        dtype = None
        for f in files:
            try:
                pf = pq.ParquetFile(f)
            except Exception as e:  # pyarrow raises several types for corrupt files
                raise CurateError(f"{f}: not a readable Parquet file ({type(e).__name__})") from None
            if "token_ids" not in pf.schema_arrow.names:
                raise CurateError(f"{f}: no 'token_ids' column (columns: {', '.join(pf.schema_arrow.names)})")
            self._files.append(pf)
            counts.append(pf.metadata.num_rows)
            if row_len is None and pf.metadata.num_rows:
                first = pf.read_row_group(0, columns=["token_ids"]).column(0)
                row_len = len(first[0].as_py())
                dtype = np.dtype(first.type.value_type.to_pandas_dtype())
        self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._cache: tuple[int, np.ndarray] | None = None
        super().__init__(path, int(self._starts[-1]), row_len or 0, dtype or np.dtype(np.int64), files)

    def _file_rows(self, i: int) -> np.ndarray:
        if self._cache is None or self._cache[0] != i:
            col = self._files[i].read(columns=["token_ids"]).column(0).combine_chunks()
            flat = col.values.to_numpy(zero_copy_only=False)
            lengths = np.diff(col.offsets.to_numpy())
            if len(lengths) and (lengths != self.row_len).any():
                bad = int(np.flatnonzero(lengths != self.row_len)[0])
                raise CurateError(f"{self.files[i]}: row {bad} has {lengths[bad]} tokens, expected {self.row_len}")
            self._cache = (i, flat.reshape(-1, self.row_len))
        return self._cache[1]

    def _read(self, start: int, stop: int) -> np.ndarray:
        parts = []
        pos = start
        while pos < stop:
            i = int(np.searchsorted(self._starts, pos, side="right")) - 1
            rows = self._file_rows(i)
            local = pos - int(self._starts[i])
            take = min(stop - pos, rows.shape[0] - local)
            parts.append(rows[local : local + take])
            pos += take
        return parts[0] if len(parts) == 1 else np.concatenate(parts) if parts else np.empty((0, self.row_len), self.dtype)


def open_corpus(path: str | Path) -> Corpus:
    """Open any supported corpus; a bad path or file is one CurateError line."""
    p = Path(path)
    if p.is_dir() and (p / METADATA_FILE).is_file():
        meta = CorpusMeta.load(p)
        corpus = open_corpus(p / meta.data)
        corpus.meta = meta
        return corpus
    if p.suffix in (".bin", ".idx"):
        return MegatronCorpus(p.with_suffix(".idx"))
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
        raise CurateError(f"{p}: no corpus found (expected corpus.json, one .idx, or .parquet files)")
    if p.with_name(p.name + ".idx").is_file():
        return MegatronCorpus(p.with_name(p.name + ".idx"))
    raise CurateError(f"{p}: no such corpus (expected a .bin/.idx prefix, .npy, .parquet or a corpus folder)")
