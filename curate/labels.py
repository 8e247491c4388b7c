"""Label columns of a corpus sidecar: the per-row labels (such as `domain`, `source`) that `explain --by`
groups rows by and that mixes copy into their provenance.

A sidecar (`corpus.json` `sidecar`, a Parquet file with a `row_id` column) holds bookkeeping columns
(`STRUCTURE_COLUMNS`: positions and document ids written by ingest) and label columns: every other column
whose values are names, integers or booleans (floats and lists are measurements, not classes).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.corpus import Corpus
from curate.errors import CurateError
from curate.ingest import SIDECAR_COLUMNS as STRUCTURE_COLUMNS  # ingest's bookkeeping columns: positions, document ids
MISSING_LABEL = "(none)"  # how a row without a value is named in a class list


def is_label_type(t: pa.DataType) -> bool:
    """Names, integers, booleans (and dictionaries of them) are labels; floats, lists and structs are not."""
    if pa.types.is_dictionary(t):
        return is_label_type(t.value_type)
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_integer(t) or pa.types.is_boolean(t)


def sidecar_schema(corpus: Corpus) -> pa.Schema | None:
    """The schema of the corpus sidecar, None when the corpus has none."""
    side = corpus.sidecar_path()
    if side is None or not side.is_file():
        return None
    try:
        return pq.read_schema(side)
    except (OSError, pa.ArrowInvalid) as e:
        raise CurateError(f"{side}: cannot read the row sidecar ({type(e).__name__})") from None


def label_columns(corpus: Corpus, exclude: tuple[str, ...] = ()) -> list[str]:
    """The label columns of the corpus sidecar, in file order ([] when there is no sidecar)."""
    schema = sidecar_schema(corpus)
    if schema is None:
        return []
    skip = set(STRUCTURE_COLUMNS) | set(exclude)
    return [f.name for f in schema if f.name not in skip and is_label_type(f.type)]


def read_labels(corpus: Corpus, columns: list[str]) -> dict[str, pa.Array]:
    """The given sidecar columns, each an array indexed by row id (length `corpus.num_rows`)."""
    side: Path | None = corpus.sidecar_path()
    if side is None or not side.is_file():
        raise CurateError(f"{corpus.path}: no row sidecar (corpus.json 'sidecar'), so no label columns")
    try:
        table = pq.read_table(side, columns=["row_id", *columns])
    except (OSError, pa.ArrowInvalid, KeyError) as e:
        raise CurateError(f"{side}: cannot read columns {', '.join(columns)} ({type(e).__name__})") from None
    if table.num_rows != corpus.num_rows:
        raise CurateError(f"{side}: sidecar has {table.num_rows} rows, the corpus {corpus.num_rows}")
    ids = table.column("row_id").to_numpy()
    if not np.array_equal(ids, np.arange(corpus.num_rows)):
        if not np.array_equal(np.sort(ids), np.arange(corpus.num_rows)):
            raise CurateError(f"{side}: row ids are not 0..{corpus.num_rows - 1}")
        table = table.take(pa.array(np.argsort(ids)))
    return {c: table.column(c).combine_chunks() for c in columns}


NOT_LABELS = ("row_id", "step")  # sidecar columns that say which row, not what it holds


def value_columns(corpus: Corpus) -> list[str] | None:
    """Every sidecar column but the row's id and step (structure columns included), None without a sidecar."""
    schema = sidecar_schema(corpus)
    return None if schema is None else [n for n in schema.names if n not in NOT_LABELS]


def read_row_labels(corpus: Corpus, row_ids: list[int], columns: list[str] | None = None) -> dict[int, dict]:
    """Sidecar values of the given rows, row id -> {column: value}: the given columns (those the sidecar has), or
    every column but row_id/step; {} when the corpus has no sidecar."""
    schema = sidecar_schema(corpus)
    if schema is None or not row_ids:
        return {}
    names = [n for n in schema.names if n not in NOT_LABELS]
    wanted = names if columns is None else [c for c in columns if c in names]
    if "row_id" not in schema.names or not wanted:
        return {}
    side = corpus.sidecar_path()
    try:
        table = pq.read_table(side, columns=["row_id", *wanted], filters=[("row_id", "in", [int(r) for r in row_ids])])
    except (OSError, pa.ArrowInvalid, KeyError) as e:
        raise CurateError(f"{side}: cannot read the row sidecar ({type(e).__name__})") from None
    return {int(rec.pop("row_id")): rec for rec in table.to_pylist()}


def label_names(values: pa.Array) -> list[str]:
    """A label column's values as class names (missing values named `MISSING_LABEL`)."""
    if pa.types.is_dictionary(values.type):
        values = values.cast(values.type.value_type)
    return [MISSING_LABEL if v is None else str(v) for v in values.to_pylist()]
