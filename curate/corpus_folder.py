"""The one writer of a corpus folder (what `open_corpus` reads and `curate` writes): `<prefix>.bin`/`<prefix>.idx`
(Megatron rows in training order), a per-row sidecar Parquet, `tokenizer.json` and `corpus.json` (`CorpusMeta`).

`curate corpus ingest` (`curate.ingest`), `curate synth` (`augment/synth.py`) and `curate build-mix`
(`augment/mix_writer.py`) all write their corpus folders through `CorpusFolderWriter`. The caller makes the
folder atomic (`atomic_dir`); the data files appear by rename only on a clean close of the row stream.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from curate.atomic import write_json
from curate.corpus import METADATA_FILE, CorpusMeta
from curate.megatron import MegatronWriter
from curate.parquet_io import write_table_parquet
from curate.tokenize import TextTokenizer

TOKENIZER_FILE = "tokenizer.json"


class CorpusFolderWriter:
    """Streams rows into `folder/<prefix>.bin/.idx` (inside `with`), then writes the sidecar, tokenizer and corpus.json."""

    def __init__(self, folder: str | Path, prefix: str, dtype: np.dtype) -> None:
        self.folder = Path(folder)
        self.prefix = prefix
        self.rows_writer = MegatronWriter(self.folder / prefix, dtype)

    @property
    def data_file(self) -> str:
        """The index file's name, as `corpus.json`'s `data` field records it."""
        return f"{self.prefix}.idx"

    @property
    def bin_file(self) -> str:
        return f"{self.prefix}.bin"

    @property
    def dtype(self) -> np.dtype:
        return self.rows_writer.dtype

    @property
    def rows(self) -> int:
        """Rows written so far."""
        return self.rows_writer.rows

    def __enter__(self) -> "CorpusFolderWriter":
        self.rows_writer.__enter__()
        return self

    def add_rows(self, rows: np.ndarray) -> None:
        """Append an (n, row_len) block of token ids."""
        self.rows_writer.add_rows(rows)

    def __exit__(self, exc_type, exc, tb) -> None:
        self.rows_writer.__exit__(exc_type, exc, tb)

    def write_sidecar(self, name: str, columns: dict[str, object], metadata: dict | None = None) -> Path:
        """The per-row Parquet sidecar `name` (row_id, step, provenance and label columns)."""
        path = self.folder / name
        write_table_parquet(path, columns, metadata=metadata)
        return path

    def write_tokenizer(self, spec: str | None, tokenizer: TextTokenizer | None = None) -> str | None:
        """`tokenizer.json` copied in when `spec` is a tokenizer file, else saved from `tokenizer` when one is given;
        returns what corpus.json records: the copied file's name, else `spec` as it is (a name, or None)."""
        if spec and Path(spec).is_file():
            shutil.copyfile(spec, self.folder / TOKENIZER_FILE)
            return TOKENIZER_FILE
        if tokenizer is not None:
            tokenizer.tok.save(str(self.folder / TOKENIZER_FILE))
            return TOKENIZER_FILE
        return spec

    def write_meta(
        self,
        batch_size: int,
        vocab_size: int | None,
        tokenizer: str | None,
        sidecar: str | None,
        eot_id: int | None,
        extra: dict | None = None,
    ) -> CorpusMeta:
        """`corpus.json`: the data file, batch size, vocabulary, tokenizer and sidecar, and the writer's own fields."""
        meta = CorpusMeta(
            data=self.data_file,
            batch_size=int(batch_size),
            vocab_size=vocab_size,
            tokenizer=tokenizer,
            sidecar=sidecar,
            eot_id=eot_id,
            extra=dict(extra or {}),
        )
        write_json(self.folder / METADATA_FILE, meta.to_json())
        return meta

