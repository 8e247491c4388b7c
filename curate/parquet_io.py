"""Parquet output of token rows with provenance: `token_ids` plus `row_id`, `step` and caller columns.

Files are written through `atomic_path` (a temporary name, renamed on a clean close), so a failed
write leaves nothing behind. The batch size is stored in the schema metadata (`curate.batch_size`)
so that `open_corpus` on the file knows the steps. Readers: `curate.corpus.ParquetCorpus`, HF
`datasets`, pandas, DuckDB, ...
"""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.atomic import atomic_path
from curate.errors import CurateError

BATCH_SIZE_KEY = b"curate.batch_size"
RESERVED_COLUMNS = ("row_id", "step", "token_ids")
DEFAULT_ROW_GROUP_ROWS = 8192


def token_list_array(rows: np.ndarray) -> pa.Array:
    """An (n, L) integer array as an Arrow list<int> column without a Python loop."""
    rows = np.ascontiguousarray(rows)
    n, width = rows.shape
    values = pa.array(rows.reshape(-1))
    if n * width < 2**31:
        return pa.ListArray.from_arrays(pa.array(np.arange(0, (n + 1) * width, width, dtype=np.int32)), values)
    return pa.LargeListArray.from_arrays(pa.array(np.arange(0, (n + 1) * width, width, dtype=np.int64)), values)


class ParquetRowWriter:
    """Streaming Parquet writer: `add(rows, row_ids, extra)` block by block; the file appears on a clean close."""

    def __init__(
        self,
        path: str | Path,
        batch_size: int,
        row_group_rows: int = DEFAULT_ROW_GROUP_ROWS,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        if batch_size < 1:
            raise CurateError(f"{path}: batch size must be at least 1, got {batch_size}")
        self.path = Path(path)
        self.batch_size = int(batch_size)
        self.row_group_rows = int(row_group_rows)
        self.metadata = {BATCH_SIZE_KEY: str(self.batch_size).encode()}
        for k, v in (metadata or {}).items():
            self.metadata[f"curate.{k}".encode()] = str(v).encode()
        self.rows = 0
        self.row_len: int | None = None
        self._writer: pq.ParquetWriter | None = None
        self._schema: pa.Schema | None = None
        self._stack: contextlib.ExitStack | None = None

    def __enter__(self) -> "ParquetRowWriter":
        self._stack = contextlib.ExitStack()
        self._tmp = self._stack.enter_context(atomic_path(self.path))
        return self

    def add(self, rows: np.ndarray, row_ids: np.ndarray, extra: Mapping[str, np.ndarray | list] | None = None) -> None:
        """Append rows (n, L) with their global row ids and optional per-row columns of length n."""
        if self._stack is None:
            raise RuntimeError("ParquetRowWriter.add outside its `with` block")
        rows = np.asarray(rows)
        row_ids = np.asarray(row_ids, dtype=np.int64)
        if rows.ndim != 2:
            raise ValueError(f"rows must be 2-D (n, row_len), got shape {rows.shape}")
        n = rows.shape[0]
        if row_ids.shape != (n,):
            raise ValueError(f"row_ids has shape {row_ids.shape}, expected ({n},)")
        if self.row_len is None:
            self.row_len = int(rows.shape[1])
        elif rows.shape[1] != self.row_len:
            raise ValueError(f"row length changed from {self.row_len} to {rows.shape[1]}")
        columns: dict[str, pa.Array] = {
            "row_id": pa.array(row_ids),
            "step": pa.array(row_ids // self.batch_size),
            "token_ids": token_list_array(rows),
        }
        for name, values in (extra or {}).items():
            if name in RESERVED_COLUMNS:
                raise ValueError(f"extra column {name!r} clashes with a built-in column")
            col = pa.array(values) if not isinstance(values, pa.Array) else values
            if len(col) != n:
                raise ValueError(f"extra column {name!r} has {len(col)} values for {n} rows")
            columns[name] = col
        table = pa.table(columns)
        if self._writer is None:
            self._schema = table.schema.with_metadata(self.metadata)
            self._writer = pq.ParquetWriter(self._tmp, self._schema, compression="zstd")
        else:
            try:
                table = table.cast(self._schema)
            except (pa.ArrowInvalid, ValueError, TypeError) as e:
                raise ValueError(f"{self.path}: block's columns do not match the first block ({e})") from None
        self._writer.write_table(table, row_group_size=self.row_group_rows)
        self.rows += n

    def __exit__(self, exc_type, exc, tb) -> None:
        stack, self._stack = self._stack, None
        assert stack is not None
        try:
            if self._writer is None and exc_type is None:
                # no rows at all: still a valid file with the built-in columns
                schema = pa.schema(
                    [("row_id", pa.int64()), ("step", pa.int64()), ("token_ids", pa.list_(pa.int64()))],
                    metadata=self.metadata,
                )
                self._writer = pq.ParquetWriter(self._tmp, schema, compression="zstd")
            if self._writer is not None:
                self._writer.close()
        except BaseException:
            if not stack.__exit__(*sys.exc_info()):
                raise
            return
        stack.__exit__(exc_type, exc, tb)


def write_rows_parquet(
    path: str | Path,
    rows: np.ndarray,
    row_ids: np.ndarray,
    batch_size: int,
    extra: Mapping[str, np.ndarray | list] | None = None,
    row_group_rows: int = DEFAULT_ROW_GROUP_ROWS,
) -> Path:
    """Write rows (n, L) with `row_id`, `step` = row_id // batch_size and `extra` columns, atomically."""
    rows = np.asarray(rows)
    n = rows.shape[0]
    with ParquetRowWriter(path, batch_size, row_group_rows) as writer:
        for a in range(0, max(n, 1), row_group_rows):
            b = min(n, a + row_group_rows)
            if b > a:
                part = {k: (v[a:b] if not isinstance(v, pa.Array) else v.slice(a, b - a)) for k, v in (extra or {}).items()}
                writer.add(rows[a:b], np.asarray(row_ids)[a:b], part)
    return Path(path)


def write_table_parquet(path: str | Path, columns: Mapping[str, np.ndarray | list], metadata: Mapping[str, str] | None = None) -> Path:
    """Write plain columns (a per-row sidecar and the like) as one Parquet file, atomically."""
    table = pa.table({k: (v if isinstance(v, pa.Array) else pa.array(v)) for k, v in columns.items()})
    if metadata:
        table = table.replace_schema_metadata({f"curate.{k}".encode(): str(v).encode() for k, v in metadata.items()})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return Path(path)
