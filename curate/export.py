"""Export rows of a corpus to Megatron (.bin/.idx), Parquet (with the sidecar's labels) or .npy, streaming."""
from __future__ import annotations

import enum
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa

from curate.atomic import atomic_path
from curate.corpus import Corpus
from curate.errors import CurateError
from curate.labels import read_labels, value_columns
from curate.megatron import CODE_BY_DTYPE, MegatronWriter, token_dtype_for_vocab
from curate.parquet_io import ParquetRowWriter

EXPORT_CHUNK_ROWS = 4096


class ExportFormat(str, enum.Enum):
    megatron = "megatron"
    parquet = "parquet"
    npy = "npy"
    megatron_order = "megatron-order"  # not rows: megatron-core's index cache that reads a Megatron file in row order


ROW_FORMATS = (ExportFormat.megatron, ExportFormat.parquet, ExportFormat.npy)


def megatron_prefix(out: Path) -> Path:
    """The .bin/.idx prefix of an output path (a .bin or .idx suffix is dropped)."""
    return out.with_suffix("") if out.suffix in (".bin", ".idx") else out


def export_targets(fmt: ExportFormat, out: Path) -> list[Path]:
    """The files an export to `out` writes."""
    if fmt is ExportFormat.megatron:
        prefix = megatron_prefix(out)
        return [prefix.with_name(prefix.name + ".bin"), prefix.with_name(prefix.name + ".idx")]
    return [out]


def sidecar_columns(corpus: Corpus) -> dict[str, pa.Array] | None:
    """The corpus sidecar's columns (but row_id and step) indexed by row id (None when there is no sidecar)."""
    columns = value_columns(corpus)
    return None if columns is None else read_labels(corpus, columns)


def _megatron_dtype(corpus: Corpus) -> np.dtype:
    if corpus.meta and corpus.meta.vocab_size:
        return token_dtype_for_vocab(corpus.meta.vocab_size)
    if corpus.dtype in CODE_BY_DTYPE:
        return corpus.dtype
    hi = corpus.vocab_range()[1] if corpus.num_rows else 0
    return token_dtype_for_vocab(hi + 1)


def export_rows(corpus: Corpus, fmt: ExportFormat, out: Path, start: int, stop: int,
                progress: Callable[[int], None] | None = None) -> list[Path]:
    """Stream rows [start, stop) of `corpus` into `out` (atomically); returns the files written.
    `progress(n)` is called with the number of rows of each chunk written."""
    if fmt not in ROW_FORMATS:
        raise ValueError(f"{fmt.value}: not a row format (curate.megatron_order writes that one)")
    advance = progress or (lambda n: None)
    targets = export_targets(fmt, out)
    sources = {f.resolve() for f in corpus.files}
    for t in targets:
        if t.resolve() in sources:
            raise CurateError(f"{out}: would overwrite the corpus being exported ({t})")
    n = stop - start
    chunks = corpus.iter_chunks(start, stop, chunk_rows=EXPORT_CHUNK_ROWS)
    if fmt is ExportFormat.megatron:
        with MegatronWriter(megatron_prefix(out), _megatron_dtype(corpus)) as writer:
            for _, block in chunks:
                writer.add_rows(block)
                advance(block.shape[0])
    elif fmt is ExportFormat.parquet:
        labels = sidecar_columns(corpus)
        with ParquetRowWriter(out, corpus.batch_size) as writer:
            for a, block in chunks:
                extra = {k: v.slice(a, block.shape[0]) for k, v in labels.items()} if labels else None
                writer.add(block, np.arange(a, a + block.shape[0], dtype=np.int64), extra)
                advance(block.shape[0])
    else:
        with atomic_path(out) as tmp:
            arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=corpus.dtype.newbyteorder("<"), shape=(n, corpus.row_len))
            for a, block in chunks:
                arr[a - start : a - start + block.shape[0]] = block
                advance(block.shape[0])
            arr.flush()
            del arr
    return targets
