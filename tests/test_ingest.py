"""Ingest: reading JSONL / text folders, packing provenance, seeded shuffles, the corpus folder."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from curate.corpus import open_corpus
from curate.errors import CurateError
from curate.ingest import ingest_documents, read_documents, read_jsonl, row_documents
from curate.tokenize import load_tokenizer, main_document, pack_rows
from corpus_helpers import random_texts, train_tiny_tokenizer, tree

DOMAINS = ["Github", "ArXiv", "Pile-CC"]


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory) -> Path:
    return train_tiny_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json")


@pytest.fixture(scope="module")
def documents() -> tuple[list[str], dict[str, list]]:
    texts = random_texts(120, seed=11)
    return texts, {"domain": [DOMAINS[i % 3] for i in range(len(texts))], "n": list(range(len(texts)))}


def test_ingest_is_deterministic_and_the_seed_only_reorders(tmp_path: Path, tokenizer_path: Path, documents) -> None:
    texts, fields = documents
    a = ingest_documents(texts, fields, tokenizer_path, 31, tmp_path / "a", seed=3, batch_size=8)
    b = ingest_documents(texts, fields, tokenizer_path, 31, tmp_path / "b", seed=3, batch_size=8)
    c = ingest_documents(texts, fields, tokenizer_path, 31, tmp_path / "c", seed=4, batch_size=8)
    for name in ("corpus.bin", "corpus.idx", "tokenizer.json", "corpus.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert pq.read_table(tmp_path / "a" / "rows.parquet").equals(pq.read_table(tmp_path / "b" / "rows.parquet"))
    assert a.num_rows == b.num_rows == c.num_rows > 20
    rows_a = open_corpus(tmp_path / "a").rows(0, a.num_rows)
    rows_c = open_corpus(tmp_path / "c").rows(0, c.num_rows)
    assert not np.array_equal(rows_a, rows_c)
    # same rows, other order
    assert np.array_equal(np.unique(rows_a, axis=0), np.unique(rows_c, axis=0))


def test_rows_are_the_packed_stream_in_shuffled_order(tmp_path: Path, tokenizer_path: Path, documents) -> None:
    texts, fields = documents
    result = ingest_documents(texts, fields, tokenizer_path, 31, tmp_path / "c", seed=9, batch_size=8)
    tok = load_tokenizer(tokenizer_path)
    packed, owners = pack_rows(tok.encode_batch(texts), 32, tok.eot_id)
    corpus = open_corpus(tmp_path / "c")
    side = pq.read_table(corpus.sidecar_path()).to_pydict()
    order = np.array(side["packed_row"])
    assert sorted(order.tolist()) == list(range(len(packed)))
    assert np.array_equal(np.asarray(corpus.rows(0, corpus.num_rows)), packed[order])
    assert side["row_id"] == list(range(result.num_rows))
    assert side["step"] == [r // 8 for r in range(result.num_rows)]
    assert side["first_doc"] == owners[order, 0].tolist()
    assert side["last_doc"] == owners[order, -1].tolist()
    assert side["doc_id"] == main_document(owners)[order].tolist()
    assert side["domain"] == [fields["domain"][d] for d in side["doc_id"]]
    assert side["n"] == side["doc_id"]
    # un-shuffled, the rows decode to the documents joined by end-of-text separators
    stream = np.asarray(corpus.rows(0, corpus.num_rows))[np.argsort(order)].reshape(-1)
    decoded = tok.decode(stream)
    full = "".join(t + "<|endoftext|>" for t in texts)
    assert full.startswith(decoded) and len(full) - len(decoded) < 32 * 8


def test_corpus_folder_contents(tmp_path: Path, tokenizer_path: Path, documents) -> None:
    texts, fields = documents
    result = ingest_documents(texts, fields, tokenizer_path, 31, tmp_path / "c", seed=1, batch_size=8, source="docs.jsonl")
    assert tree(tmp_path / "c") == ["corpus.bin", "corpus.idx", "corpus.json", "rows.parquet", "tokenizer.json"]
    meta = json.loads((tmp_path / "c" / "corpus.json").read_text())
    tok = load_tokenizer(tokenizer_path)
    assert meta["data"] == "corpus.idx" and meta["batch_size"] == 8 and meta["seq_len"] == 31
    assert meta["vocab_size"] == tok.vocab_size and meta["eot_id"] == tok.eot_id == 0
    assert meta["tokens"] == result.num_rows * 32
    assert meta["tokens"] + meta["dropped_tail_tokens"] == sum(len(d) + 1 for d in tok.encode_batch(texts))
    assert (tmp_path / "c" / "tokenizer.json").read_bytes() == tokenizer_path.read_bytes()
    corpus = open_corpus(tmp_path / "c")
    assert corpus.dtype == np.uint16 and corpus.row_len == 32 and corpus.batch_size == 8
    shipped = load_tokenizer(corpus.tokenizer_spec())
    assert shipped.decode(corpus.rows(0, 1)[0]) == tok.decode(corpus.rows(0, 1)[0])
    assert shipped.encode_batch(texts[:3]) == tok.encode_batch(texts[:3])


def test_pythia_row_length(tmp_path: Path, tokenizer_path: Path) -> None:
    texts = random_texts(200, seed=2, min_words=40, max_words=90)
    result = ingest_documents(texts, None, tokenizer_path, 2048, tmp_path / "p", seed=0, batch_size=2)
    corpus = open_corpus(tmp_path / "p")
    assert corpus.row_len == 2049 and result.num_rows >= 2
    assert corpus.row_bytes == 4098


def test_ingest_replaces_a_corpus_but_not_other_folders(tmp_path: Path, tokenizer_path: Path, documents) -> None:
    texts, fields = documents
    ingest_documents(texts, fields, tokenizer_path, 31, tmp_path / "c", seed=1)
    ingest_documents(texts[:60], None, tokenizer_path, 15, tmp_path / "c", seed=1)
    assert open_corpus(tmp_path / "c").row_len == 16
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    with pytest.raises(CurateError, match="is not empty and is not a curate corpus"):
        ingest_documents(texts, fields, tokenizer_path, 31, tmp_path / "other", seed=1)
    assert tree(tmp_path / "other") == ["notes.txt"]


def test_too_little_text_for_one_row(tmp_path: Path, tokenizer_path: Path) -> None:
    with pytest.raises(CurateError, match=r"do not fill one row of 2049 tokens"):
        ingest_documents(["the cat"], None, tokenizer_path, 2048, tmp_path / "x")
    assert tree(tmp_path) == []


def test_read_jsonl_fields_and_gzip(tmp_path: Path) -> None:
    lines = [
        {"text": "a b", "meta": {"pile_set_name": "Github"}, "id": 1},
        {"text": "c", "id": 2, "tags": ["x", "y"]},
        {"text": "d", "meta": {"pile_set_name": "ArXiv"}},
    ]
    body = "\n".join(json.dumps(x) for x in lines) + "\n\n"
    (tmp_path / "d.jsonl").write_text(body)
    with gzip.open(tmp_path / "d.jsonl.gz", "wt") as fh:
        fh.write(body)
    for name in ("d.jsonl", "d.jsonl.gz"):
        docs = read_documents(tmp_path / name)
        assert docs.texts == ["a b", "c", "d"]
        assert docs.fields == {
            "meta.pile_set_name": ["Github", None, "ArXiv"],
            "id": [1, 2, None],
            "tags": [None, '["x", "y"]', None],
        }


@pytest.mark.parametrize(
    "body, message",
    [
        ('{"text": "ok"}\n{"text": "broken"\n', r"d.jsonl:2: not valid JSON"),
        ('{"text": "ok"}\n\n{"body": "x"}\n', r"d.jsonl:3: no 'text' string field"),
        ('["a"]\n', r"d.jsonl:1: expected a JSON object, got list"),
        ("", r"d.jsonl: no documents \(empty input\)"),
        ('{"text": ""}\n', r"d.jsonl: all 1 documents are empty"),
    ],
)
def test_bad_jsonl(tmp_path: Path, body: str, message: str) -> None:
    (tmp_path / "d.jsonl").write_text(body)
    with pytest.raises(CurateError, match=message):
        read_documents(tmp_path / "d.jsonl")


def test_read_text_folder(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2.txt").write_text("second")
    (tmp_path / "a.md").write_text("first")
    (tmp_path / ".hidden").write_text("skip")
    docs = read_documents(tmp_path)
    assert docs.texts == ["first", "second"] and docs.skipped == 0
    assert docs.fields == {"domain": ["md", "b"], "source": ["a.md", "b/2.txt"]}
    # binary and non-UTF-8 files are skipped and counted; .gz files are read decompressed; a BOM is dropped
    (tmp_path / "b" / "c.bin").write_bytes(b"\xff\xfe\x00")
    (tmp_path / "b" / "latin.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "man" / "man1").mkdir(parents=True)
    (tmp_path / "man" / "man1" / "ls.1.gz").write_bytes(gzip.compress(b".TH LS 1"))
    (tmp_path / "bom.txt").write_bytes("\ufeffhello".encode("utf-8"))
    (tmp_path / "NOTES").write_text("plain")
    docs = read_documents(tmp_path)
    assert docs.texts == ["plain", "first", "second", "hello", ".TH LS 1"] and docs.skipped == 2
    assert docs.fields == {"domain": ["none", "md", "b", "txt", "man"],
                           "source": ["NOTES", "a.md", "b/2.txt", "bom.txt", "man/man1/ls.1.gz"]}
    (tmp_path / "binary").mkdir()
    (tmp_path / "binary" / "x.bin").write_bytes(b"\x00\x01")
    with pytest.raises(CurateError, match=r"binary: no text files \(all 1 files are binary or not UTF-8\)"):
        read_documents(tmp_path / "binary")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CurateError, match="no documents"):
        read_documents(tmp_path / "empty")


def test_jsonl_invalid_utf8(tmp_path: Path) -> None:
    (tmp_path / "d.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "\xff"}\n')
    with pytest.raises(CurateError, match="d.jsonl: not UTF-8 text"):
        read_jsonl(tmp_path / "d.jsonl")


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 30), min_size=1, max_size=40),
    row_len=st.integers(2, 25),
)
def test_row_documents_matches_the_owner_matrix(lengths: list[int], row_len: int) -> None:
    docs = [[7] * n for n in lengths]
    total = sum(n + 1 for n in lengths)
    if total < row_len:
        return
    _, owners = pack_rows(docs, row_len, 0)
    first, last, main = row_documents(np.array(lengths), row_len, owners.shape[0])
    assert np.array_equal(first, owners[:, 0])
    assert np.array_equal(last, owners[:, -1])
    assert np.array_equal(main, main_document(owners))
