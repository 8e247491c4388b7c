"""Test helpers for structure tags and the neighbour index: a small labelled corpus from the
embedded mini-Pile generator, and a synthetic scores folder over it."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.attribution.heads import HeadRef
from curate.attribution.score_table import grad_norm_column
from curate.corpus import CorpusMeta, open_corpus
from curate.corpus_digest import content_digest
from curate.default_corpus import train_tokenizer
from curate.megatron import write_megatron
from curate.minipile import BALANCED_SHARES, MixtureConfig, generate_documents
from curate.tokenize import TextTokenizer, main_document, pack_rows


BALANCED = MixtureConfig(shares=dict(BALANCED_SHARES))


@dataclass
class LabelledRows:
    """Packed rows of generated documents, each labelled with its main document's domain."""

    rows: np.ndarray
    labels: list[str]
    tokenizer: TextTokenizer


def minipile_rows(n_docs: int, seed: int, row_len: int = 129, vocab_size: int = 512) -> LabelledRows:
    """Generated documents of every class (the balanced mixture), the default corpus's BPE trained on them,
    packed in generation order."""
    docs = list(generate_documents(n_docs, seed, BALANCED))
    tokenizer = train_tokenizer([d.text for d in docs[: min(n_docs, 1500)]], vocab_size)
    ids = tokenizer.encode_batch([d.text for d in docs])
    rows, owners = pack_rows(ids, row_len, tokenizer.eot_id)
    labels = [docs[i].domain for i in main_document(owners)]
    return LabelledRows(rows, labels, tokenizer)


def write_corpus(folder: Path, data: LabelledRows, batch_size: int = 32) -> Path:
    """A corpus folder: corpus.bin/.idx (uint16), tokenizer.json, corpus.json, labels.json."""
    folder.mkdir(parents=True, exist_ok=True)
    write_megatron(folder / "corpus", data.rows, np.uint16)
    data.tokenizer.tok.save(str(folder / "tokenizer.json"))
    meta = CorpusMeta(
        data="corpus.idx", batch_size=batch_size, vocab_size=data.tokenizer.vocab_size,
        tokenizer="tokenizer.json", eot_id=data.tokenizer.eot_id,
    )
    (folder / "corpus.json").write_text(json.dumps(meta.to_json()))
    (folder / "labels.json").write_text(json.dumps(data.labels))
    return folder


def write_scores(folder: Path, corpus: Path, scores: np.ndarray, row_ids: np.ndarray, batch_size: int = 32,
                 shard_rows: int = 1000, heads: tuple[str, ...] = ("1.2",), grad_norms: np.ndarray | None = None) -> Path:
    """A scores folder as the scoring pipeline writes it: summary.json + shards/*.parquet. `grad_norms`: each row's
    gradient norm over all heads (`grad_norm`), split evenly over the heads' `grad_norm_L_H` columns."""
    (folder / "shards").mkdir(parents=True, exist_ok=True)
    row_ids = np.asarray(row_ids, dtype=np.int64)
    for a in range(0, len(row_ids), shard_rows):
        ids = row_ids[a : a + shard_rows]
        cols = {
            "row_id": pa.array(ids, pa.int64()),
            "step": pa.array(ids // batch_size, pa.int64()),
            "loss": pa.array(np.full(len(ids), 2.5, np.float32), pa.float32()),
        }
        for i, h in enumerate(heads):
            cols[HeadRef.parse(h).column] = pa.array(scores[a : a + shard_rows] * (i + 1) / len(heads), pa.float64())
        cols["score"] = pa.array(scores[a : a + shard_rows], pa.float64())
        if grad_norms is not None:
            norms = np.asarray(grad_norms[a : a + shard_rows], dtype=np.float64)
            for h in heads:
                cols[grad_norm_column(HeadRef.parse(h))] = pa.array(norms / np.sqrt(len(heads)), pa.float64())
            cols["grad_norm"] = pa.array(norms, pa.float64())
        pq.write_table(pa.table(cols), folder / "shards" / f"rows-{a:09d}.parquet")
    window = [int(row_ids.min() // batch_size), int(row_ids.max() // batch_size + 1)]
    summary = {"corpus": str(corpus), "corpus_digest": content_digest(open_corpus(corpus)), "circuit": "induction", "heads": list(heads),
               "window": window, "batch_size": batch_size}
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder
