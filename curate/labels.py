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
    import pyarrow.parquet as pq

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
    import pyarrow.parquet as pq

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


def label_names(values: pa.Array) -> list[str]:
    """A label column's values as class names (missing values named `MISSING_LABEL`)."""
    if pa.types.is_dictionary(values.type):
        values = values.cast(values.type.value_type)
    return [MISSING_LABEL if v is None else str(v) for v in values.to_pylist()]
