"""Corpus readers: sharded Megatron vs one file, Pythia step arithmetic, .npy and Parquet equal Megatron."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.corpus import CorpusMeta, check_token_ids, natural_key, open_corpus
from curate.errors import CurateError
from curate.megatron import write_megatron
from curate.parquet_io import ParquetRowWriter, write_rows_parquet
from corpus_helpers import patterned_rows, shard_bin, tree

PYTHIA_ROW_LEN = 2049
PYTHIA_BATCH = 1024
PYTHIA_STEP_BYTES = 4_196_352


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory) -> tuple[Path, Path, np.ndarray]:
    """500 rows of 13 uint16 tokens as one .bin, and the same bytes cut into Pythia-named 997-byte shards."""
    root = tmp_path_factory.mktemp("small")
    rows = patterned_rows(500, 13, 50277, seed=3)
    write_megatron(root / "single" / "document", rows, np.uint16)
    shard_dir = root / "sharded"
    shard_bin(root / "single" / "document.bin", shard_dir, "document", 997)
    (shard_dir / "document.idx").write_bytes((root / "single" / "document.idx").read_bytes())
    return root / "single" / "document.idx", shard_dir / "document.idx", rows


def test_sharded_layout_reads_like_the_single_file(small_corpus) -> None:
    single_idx, sharded_idx, rows = small_corpus
    single, sharded = open_corpus(single_idx), open_corpus(sharded_idx)
    assert len(sharded.files) == 1 + 14  # 500 rows x 26 bytes = 13,000 bytes = 13 full shards of 997 + a tail
    assert sharded.num_rows == single.num_rows == 500
    # a row straddles a shard boundary: row 38 covers bytes [988, 1014) and the first shard ends at 997
    assert single.row_byte_range(38) == (988, 1014)
    assert np.array_equal(sharded.rows(0, 500), rows)
    assert np.array_equal(single.rows(0, 500), rows)
    rng = np.random.default_rng(0)
    for _ in range(20):
        ids = rng.integers(0, 500, size=rng.integers(1, 60))
        assert np.array_equal(sharded.take(ids), rows[ids])
        assert np.array_equal(single.take(ids), rows[ids])
    for a, b in [(0, 500), (37, 401), (250, 250)]:
        chunks = list(sharded.iter_chunks(a, b, chunk_rows=64))
        firsts, sizes = [c[0] for c in chunks], [len(c[1]) for c in chunks]
        assert firsts == [a + sum(sizes[:i]) for i in range(len(chunks))] and sum(sizes) == b - a
        assert all(1 <= n <= 64 for n in sizes)
        if chunks:
            assert np.array_equal(np.concatenate([c[1] for c in chunks]), rows[a:b])
    # streaming breaks at shard boundaries: row 38 (bytes 988..1014 across the cut at 997) comes alone
    assert (38, 1) in [(a, len(c)) for a, c in sharded.iter_chunks(chunk_rows=64)]
    sharded.batch_size = 64
    for step in range(sharded.num_steps):
        assert np.array_equal(sharded.step_batch(step), rows[64 * step : 64 * (step + 1)])


def test_every_shard_file_counts(small_corpus) -> None:
    _, sharded_idx, _ = small_corpus
    corpus = open_corpus(sharded_idx)
    assert [f.name for f in corpus.files[1:4]] == [
        "document-00000-of-00013.bin",
        "document-00001-of-00013.bin",
        "document-00002-of-00013.bin",
    ]
    assert open_corpus(sharded_idx.parent / "document-00005-of-00013.bin").num_rows == 500


@pytest.fixture(scope="module")
def pythia_standin(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """3 steps + 5 rows in Pythia's exact format: uint16 rows of 2,049 tokens, shards of 5,000,000 bytes."""
    root = tmp_path_factory.mktemp("pythia")
    rows = patterned_rows(3 * PYTHIA_BATCH + 5, PYTHIA_ROW_LEN, 50277, seed=7)
    write_megatron(root / "single" / "document", rows, np.uint16)
    shard_bin(root / "single" / "document.bin", root / "shards", "document", 5_000_000)
    (root / "shards" / "document.idx").write_bytes((root / "single" / "document.idx").read_bytes())
    return root, rows


def test_pythia_step_arithmetic(pythia_standin) -> None:
    root, rows = pythia_standin
    corpus = open_corpus(root / "shards")
    assert [f.name for f in corpus.files] == [
        "document.idx",
        "document-00000-of-00002.bin",
        "document-00001-of-00002.bin",
        "document-00002-of-00002.bin",
    ]
    assert corpus.row_len == 2049 and corpus.dtype == np.uint16 and corpus.batch_size == 1024
    assert corpus.row_bytes == 4098
    assert corpus.num_rows == 3077 and corpus.num_steps == 3
    for step in range(3):
        assert corpus.step_range(step) == (1024 * step, 1024 * (step + 1))
        assert corpus.step_byte_range(step) == (step * PYTHIA_STEP_BYTES, (step + 1) * PYTHIA_STEP_BYTES)
    for r in (0, 1023, 1024, 2047, 2048, 3076):
        assert corpus.step_of_row(r) == r // 1024
    assert np.array_equal(corpus.step_of_row(np.array([5, 1500, 3000])), [0, 1, 2])
    raw = (root / "single" / "document.bin").read_bytes()
    a, b = corpus.step_byte_range(2)
    batch = corpus.step_batch(2)
    assert batch.shape == (1024, 2049)
    assert batch.tobytes() == raw[a:b]
    assert np.array_equal(batch[:, 0], np.arange(2048, 3072) % 50277)
    # step 1 straddles the first 5,000,000-byte shard boundary
    assert corpus.step_byte_range(1)[0] < 5_000_000 < corpus.step_byte_range(1)[1]
    assert np.array_equal(corpus.step_batch(1), rows[1024:2048])
    with pytest.raises(CurateError, match="step 3 is past the end"):
        corpus.step_batch(3)


def test_npy_and_parquet_read_like_megatron(small_corpus, tmp_path: Path) -> None:
    single_idx, _, rows = small_corpus
    mega = open_corpus(single_idx)
    np.save(tmp_path / "rows.npy", rows.astype(np.uint16))
    npy = open_corpus(tmp_path / "rows.npy")
    # three Parquet files whose numeric order differs from their name order, small row groups
    folder = tmp_path / "pq"
    bounds = [(0, 120), (120, 130), (130, 500)]
    for k, (a, b) in zip((2, 10, 100), bounds):
        write_rows_parquet(folder / f"part_{k}.parquet", rows[a:b].astype(np.uint16), np.arange(a, b), 64, row_group_rows=37)
    assert sorted(p.name for p in folder.iterdir()) == ["part_10.parquet", "part_100.parquet", "part_2.parquet"]
    parquet = open_corpus(folder)
    assert parquet.batch_size == 64  # from the files' metadata
    for corpus in (npy, parquet):
        assert (corpus.num_rows, corpus.row_len, corpus.dtype) == (500, 13, np.dtype(np.uint16))
        assert np.array_equal(corpus.rows(0, 500), mega.rows(0, 500))
        ids = np.random.default_rng(5).integers(0, 500, 200)
        assert np.array_equal(corpus.take(ids), mega.take(ids))
        assert np.array_equal(corpus.rows(110, 140), mega.rows(110, 140))


def test_pythia_parquet_mirror_columns(tmp_path: Path) -> None:
    rows = patterned_rows(40, 9, 50277, seed=2).astype(np.uint16)
    for k in range(2):
        part = rows[20 * k : 20 * (k + 1)]
        table = pa.table(
            {
                "uid": pa.array(np.arange(20 * k, 20 * (k + 1)), pa.int64()),
                "batch_idx": pa.array(np.arange(20) // 10 + 2 * k, pa.int64()),
                "token_ids": pa.array([list(map(int, r)) for r in part], pa.list_(pa.uint16())),
            }
        )
        pq.write_table(table, tmp_path / f"batch_{k * 1000}_to_{(k + 1) * 1000}.parquet", row_group_size=6)
    corpus = open_corpus(tmp_path, batch_size=10)
    assert corpus.num_rows == 40 and corpus.num_steps == 4
    assert np.array_equal(corpus.step_batch(3), rows[30:40])
    assert np.array_equal(corpus.take([39, 0, 21, 20, 19]), rows[[39, 0, 21, 20, 19]])


def test_parquet_row_of_the_wrong_length(tmp_path: Path) -> None:
    table = pa.table({"token_ids": pa.array([[1, 2, 3], [4, 5, 6], [7, 8]], pa.list_(pa.int32()))})
    pq.write_table(table, tmp_path / "x.parquet")
    corpus = open_corpus(tmp_path / "x.parquet")
    with pytest.raises(CurateError, match=r"x.parquet: row 2 has 2 tokens, expected 3"):
        corpus.rows(0, 3)


def test_parquet_without_token_ids(tmp_path: Path) -> None:
    pq.write_table(pa.table({"text": ["a"]}), tmp_path / "x.parquet")
    with pytest.raises(CurateError, match="no 'token_ids' column"):
        open_corpus(tmp_path / "x.parquet")


def test_parquet_writer_columns_and_atomicity(tmp_path: Path) -> None:
    rows = patterned_rows(10, 5, 300).astype(np.uint16)
    ids = np.arange(100, 110)
    write_rows_parquet(tmp_path / "a.parquet", rows, ids, batch_size=4, extra={"domain": ["x"] * 5 + ["y"] * 5})
    table = pq.read_table(tmp_path / "a.parquet")
    assert table.column_names == ["row_id", "step", "token_ids", "domain"]
    assert table.column("row_id").to_pylist() == list(range(100, 110))
    assert table.column("step").to_pylist() == [25, 25, 25, 25, 26, 26, 26, 26, 27, 27]
    assert table.column("token_ids").to_pylist() == rows.tolist()
    assert table.schema.metadata[b"curate.batch_size"] == b"4"
    with pytest.raises(RuntimeError):
        with ParquetRowWriter(tmp_path / "b.parquet", 4) as w:
            w.add(rows, ids)
            raise RuntimeError("fail mid-way")
    assert tree(tmp_path) == ["a.parquet"]


def test_corpus_folder_metadata_and_overrides(small_corpus, tmp_path: Path) -> None:
    single_idx, _, rows = small_corpus
    folder = tmp_path / "c"
    write_megatron(folder / "corpus", rows, np.uint16)
    (folder / "tok.json").write_text("{}")
    meta = CorpusMeta(data="corpus.idx", batch_size=50, vocab_size=50277, tokenizer="tok.json", sidecar="rows.parquet", extra={"seed": 3})
    (folder / "corpus.json").write_text(json.dumps(meta.to_json()))
    corpus = open_corpus(folder)
    assert corpus.batch_size == 50 and corpus.num_steps == 10
    assert corpus.tokenizer_spec() == str(folder / "tok.json")
    assert corpus.sidecar_path() == folder / "rows.parquet"
    assert corpus.meta.extra == {"seed": 3}
    assert open_corpus(folder, batch_size=100).num_steps == 5
    with pytest.raises(CurateError, match="batch size must be at least 1"):
        open_corpus(folder, batch_size=0)


def test_vocabulary_checks(small_corpus) -> None:
    single_idx, _, rows = small_corpus
    corpus = open_corpus(single_idx)
    assert corpus.vocab_range() == (int(rows.min()), int(rows.max()))
    check_token_ids(corpus, (0, corpus.num_rows), int(rows.max()) + 1)
    bad_row = int(np.argwhere(rows >= 30000)[0][0])
    with pytest.raises(CurateError, match=f"at row {bad_row} is outside the model's vocabulary \\(size 30000\\)"):
        check_token_ids(corpus, (0, corpus.num_rows), 30000)
    check_token_ids(corpus, (0, bad_row), 30000)  # only the rows asked for are read


def test_check_token_ids_refuses_negative_ids_naming_the_file_and_row(tmp_path: Path) -> None:
    rows = np.arange(40, dtype=np.int64).reshape(8, 5)
    rows[5, 2] = -4
    np.save(tmp_path / "rows.npy", rows)
    corpus = open_corpus(tmp_path / "rows.npy")
    check_token_ids(corpus, (0, 5), 100)
    with pytest.raises(CurateError, match=r"rows\.npy: token id -4 at row 5 is outside the model's vocabulary \(size 100\)"):
        check_token_ids(corpus, (3, 8), 100)


def test_open_corpus_errors(tmp_path: Path) -> None:
    with pytest.raises(CurateError, match="no such file or folder"):
        open_corpus(tmp_path / "nothing")
    with pytest.raises(CurateError, match="index file not found"):
        open_corpus(tmp_path / "nothing.bin")
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(CurateError, match="not a readable .npy file"):
        open_corpus(tmp_path / "bad.npy")
    np.save(tmp_path / "flat.npy", np.arange(5))
    with pytest.raises(CurateError, match="expected a 2-D array"):
        open_corpus(tmp_path / "flat.npy")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CurateError, match="no corpus found"):
        open_corpus(tmp_path / "empty")


def test_natural_order() -> None:
    names = ["batch_10000_to_11000", "batch_0_to_1000", "batch_2000_to_3000", "batch_1000_to_2000"]
    assert sorted(names, key=natural_key) == ["batch_0_to_1000", "batch_1000_to_2000", "batch_2000_to_3000", "batch_10000_to_11000"]
