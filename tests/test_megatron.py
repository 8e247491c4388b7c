"""Megatron MMIDIDX: byte-exact index round trips, the on-disk layout, shard discovery, bad files."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from curate.errors import CurateError
from curate.megatron import (
    CODE_BY_DTYPE,
    MAGIC,
    BinReader,
    MegatronWriter,
    find_bin_files,
    idx_bytes,
    read_idx,
    serialize_idx,
    shard_name,
    token_dtype_for_vocab,
    write_megatron,
)
from corpus_helpers import shard_bin, tree


def parse_idx_like_gpt_neox(path: Path) -> dict:
    """An independent reader of the `.idx` layout (struct + frombuffer, as GPT-NeoX's MMapIndexedDataset does)."""
    data = path.read_bytes()
    assert data[:9] == b"MMIDIDX\x00\x00"
    (version,) = struct.unpack("<Q", data[9:17])
    (code,) = struct.unpack("<B", data[17:18])
    (n,) = struct.unpack("<Q", data[18:26])
    (d,) = struct.unpack("<Q", data[26:34])
    off = 34
    sizes = np.frombuffer(data, dtype=np.int32, count=n, offset=off)
    off += sizes.nbytes
    pointers = np.frombuffer(data, dtype=np.int64, count=n, offset=off)
    off += pointers.nbytes
    doc_idx = np.frombuffer(data, dtype=np.int64, count=d, offset=off)
    off += doc_idx.nbytes
    assert off == len(data)
    return {"version": version, "code": code, "sizes": sizes, "pointers": pointers, "doc_idx": doc_idx}


def test_written_index_round_trips_byte_for_byte(tmp_path: Path) -> None:
    rows = np.arange(37 * 11, dtype=np.int64).reshape(37, 11) % 50277
    bin_path, idx_path = write_megatron(tmp_path / "data", rows, np.uint16)
    original = idx_path.read_bytes()
    idx = read_idx(idx_path)
    assert serialize_idx(idx.dtype, idx.sizes, idx.pointers, idx.doc_idx) == original
    assert idx_bytes(idx.dtype, idx.sizes, idx.doc_idx) == original
    assert len(original) == 34 + 37 * 4 + 37 * 8 + 38 * 8
    assert bin_path.read_bytes() == rows.astype("<u2").tobytes()


def test_index_layout_is_what_gpt_neox_reads(tmp_path: Path) -> None:
    rows = np.arange(5 * 7).reshape(5, 7)
    _, idx_path = write_megatron(tmp_path / "d", rows, np.int32)
    parsed = parse_idx_like_gpt_neox(idx_path)
    assert parsed["version"] == 1
    assert parsed["code"] == 4  # int32
    assert parsed["sizes"].tolist() == [7] * 5
    assert parsed["pointers"].tolist() == [0, 28, 56, 84, 112]
    assert parsed["doc_idx"].tolist() == [0, 1, 2, 3, 4, 5]


def test_arbitrary_index_arrays_round_trip(tmp_path: Path) -> None:
    sizes = np.array([3, 9, 1, 4], dtype=np.int32)
    pointers = np.array([0, 6, 24, 26], dtype=np.int64)
    doc_idx = np.array([0, 2, 4], dtype=np.int64)
    raw = serialize_idx(np.uint16, sizes, pointers, doc_idx)
    (tmp_path / "x.idx").write_bytes(raw)
    idx = read_idx(tmp_path / "x.idx")
    assert idx.dtype == np.uint16
    assert idx.sizes.tolist() == sizes.tolist()
    assert idx.pointers.tolist() == pointers.tolist()
    assert idx.doc_idx.tolist() == doc_idx.tolist()
    assert serialize_idx(idx.dtype, idx.sizes, idx.pointers, idx.doc_idx) == raw


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(0, 25),
    row_len=st.integers(1, 17),
    code=st.sampled_from(sorted(CODE_BY_DTYPE.values())),
    seed=st.integers(0, 2**16),
)
def test_round_trip_property(tmp_path_factory, n: int, row_len: int, code: int, seed: int) -> None:
    from curate.corpus import open_corpus
    from curate.megatron import DTYPE_BY_CODE

    dtype = DTYPE_BY_CODE[code]
    info = np.iinfo(dtype)
    rng = np.random.default_rng(seed)
    rows = rng.integers(max(info.min, -1000), min(info.max, 70000), size=(n, row_len), endpoint=True).astype(dtype)
    folder = tmp_path_factory.mktemp("prop")
    _, idx_path = write_megatron(folder / "c", rows, dtype)
    raw = idx_path.read_bytes()
    idx = read_idx(idx_path)
    assert serialize_idx(idx.dtype, idx.sizes, idx.pointers, idx.doc_idx) == raw
    corpus = open_corpus(idx_path)
    assert corpus.num_rows == n and corpus.dtype == dtype
    if n:
        assert np.array_equal(corpus.rows(0, n), rows)
        # re-write what was read: identical bytes
        bin2, idx2 = write_megatron(folder / "again", np.asarray(corpus.rows(0, n)), dtype)
        assert idx2.read_bytes() == raw
        assert bin2.read_bytes() == (folder / "c.bin").read_bytes()


def test_token_dtype_rule() -> None:
    assert token_dtype_for_vocab(50304) == np.uint16
    assert token_dtype_for_vocab(65499) == np.uint16
    assert token_dtype_for_vocab(65500) == np.int32
    assert token_dtype_for_vocab(151936) == np.int32


def test_writer_rejects_ids_that_do_not_fit_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(CurateError, match="do not fit uint16"):
        with MegatronWriter(tmp_path / "x", np.uint16) as w:
            w.add_rows(np.zeros((3, 4), dtype=np.int64))
            w.add_rows(np.full((2, 4), 70000, dtype=np.int64))
    assert tree(tmp_path) == []


def test_writer_leaves_nothing_on_an_exception(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with MegatronWriter(tmp_path / "x", np.uint16) as w:
            w.add_rows(np.zeros((3, 4), dtype=np.uint16))
            raise RuntimeError("boom")
    assert tree(tmp_path) == []


def test_writer_replaces_existing_files_atomically(tmp_path: Path) -> None:
    write_megatron(tmp_path / "x", np.ones((2, 3), dtype=np.uint16), np.uint16)
    write_megatron(tmp_path / "x", np.full((4, 3), 7, dtype=np.uint16), np.uint16)
    assert tree(tmp_path) == ["x.bin", "x.idx"]
    assert read_idx(tmp_path / "x.idx").num_sequences == 4


def _bad_idx(tmp_path: Path, mutate) -> Path:
    _, idx_path = write_megatron(tmp_path / "c", np.zeros((4, 3), dtype=np.uint16), np.uint16)
    raw = bytearray(idx_path.read_bytes())
    mutate(raw)
    idx_path.write_bytes(bytes(raw))
    return idx_path


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b.__setitem__(slice(0, 9), b"NOTMAGIC!"), "bad magic"),
        (lambda b: b.__setitem__(17, 6), "unknown dtype code 6"),
        (lambda b: b.__setitem__(slice(9, 17), struct.pack("<Q", 2)), "unsupported index version 2"),
        (lambda b: b.__delitem__(slice(len(b) - 8, len(b))), "does not match its header"),
        (lambda b: b.__delitem__(slice(20, len(b))), "truncated index"),
    ],
)
def test_bad_index_files_fail_with_one_line_naming_the_file(tmp_path: Path, mutate, message: str) -> None:
    idx_path = _bad_idx(tmp_path, mutate)
    with pytest.raises(CurateError) as err:
        read_idx(idx_path)
    text = str(err.value)
    assert message in text and str(idx_path) in text and "\n" not in text


def _touch_shards(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "document.idx").write_bytes(MAGIC)
    for name in names:
        (folder / name).write_bytes(b"\x00\x00")


def test_pythia_shard_naming_is_found_in_order(tmp_path: Path) -> None:
    names = [shard_name("document", i, 20) for i in range(21)]  # Pythia: 00000..00020 of 00020
    _touch_shards(tmp_path, names[::-1])
    assert [p.name for p in find_bin_files(tmp_path / "document.idx")] == names


@pytest.mark.parametrize(
    "names",
    [
        [f"document-{i:05d}-of-00003.bin" for i in range(3)],  # 0..n-1 of n
        [f"document-{i:05d}-of-00003.bin" for i in range(1, 4)],  # 1..n of n
    ],
)
def test_other_shard_numberings_are_accepted(tmp_path: Path, names: list[str]) -> None:
    _touch_shards(tmp_path, names)
    assert [p.name for p in find_bin_files(tmp_path / "document.idx")] == names


def test_a_gap_in_the_shards_names_the_missing_file(tmp_path: Path) -> None:
    names = [shard_name("document", i, 20) for i in range(21) if i not in (7, 12)]
    _touch_shards(tmp_path, names)
    with pytest.raises(CurateError, match=r"missing shard file\(s\) document-00007-of-00020.bin, document-00012-of-00020.bin"):
        find_bin_files(tmp_path / "document.idx")


def test_no_data_file_at_all(tmp_path: Path) -> None:
    _touch_shards(tmp_path, [])
    with pytest.raises(CurateError, match="no data file document.bin"):
        find_bin_files(tmp_path / "document.idx")


def test_bin_reader_reads_across_shard_boundaries(tmp_path: Path) -> None:
    payload = np.random.default_rng(1).integers(0, 256, 1000, dtype=np.uint8)
    (tmp_path / "one.bin").write_bytes(payload.tobytes())
    shards = shard_bin(tmp_path / "one.bin", tmp_path / "sh", "document", 97)
    reader = BinReader(shards)
    assert reader.nbytes == 1000
    for offset, n in [(0, 1000), (90, 20), (96, 1), (97, 97), (5, 300), (999, 1), (400, 0)]:
        assert reader.read(offset, n).tobytes() == payload[offset : offset + n].tobytes()
    with pytest.raises(CurateError, match="past the data end"):
        reader.read(990, 11)
