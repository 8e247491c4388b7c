"""`curate corpus ...` through the real entry point: outputs, and every bad input as exit 2 + one line."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from curate.corpus import open_corpus
from curate.megatron import write_megatron
from curate.tokenize import load_tokenizer
from corpus_helpers import patterned_rows, random_texts, run_cli, shard_bin, train_tiny_tokenizer, tree


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """tokenizer.json + docs.jsonl (with a `domain` label) in one folder."""
    root = tmp_path_factory.mktemp("inputs")
    train_tiny_tokenizer(root / "tokenizer.json")
    texts = random_texts(150, seed=4)
    with open(root / "docs.jsonl", "w") as fh:
        for i, t in enumerate(texts):
            fh.write(json.dumps({"text": t, "domain": ["Github", "ArXiv"][i % 2]}) + "\n")
    return root


@pytest.fixture(scope="module")
def corpus_dir(inputs: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("built") / "corpus"
    code = subprocess.run(
        [sys.executable, "-m", "curate.cli", "corpus", "ingest", str(inputs / "docs.jsonl"), "--tokenizer",
         str(inputs / "tokenizer.json"), "--seq-len", "31", "--out", str(out), "--seed", "5", "--batch-size", "8"],
        capture_output=True, text=True, timeout=120,
    )
    assert code.returncode == 0, code.stderr
    assert code.stdout.startswith(f"wrote {out}: ")
    return out


def test_ingest_saves_its_options_and_replays_them(corpus_dir: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """command.json holds the resolved options; `curate replay` with another --out writes the same corpus."""
    from curate.outputs import CORPUS, folder_kind

    saved = json.loads((corpus_dir / "command.json").read_text())
    assert saved["command"] == "ingest"
    opts = saved["options"]
    assert (opts["seq_len"], opts["seed"], opts["batch_size"], opts["out"]) == (31, 5, 8, ".")  # paths folder-relative
    assert {"out", "input_path", "workspace"} <= set(saved["paths"])
    absolute = {k: str((corpus_dir / v).resolve()) if k in saved["paths"] else v for k, v in opts.items()}
    again = tmp_path / "again"
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "command.json").write_text(json.dumps({"command": "ingest", "options": {**absolute, "out": str(again)}}))
    assert folder_kind(tmp_path / "cfg") == CORPUS  # a folder holding only ingest's options counts as a corpus
    code, _, err = run_cli(["replay", tmp_path / "cfg"], monkeypatch, capsys)
    assert code == 0, err
    for name in ("corpus.bin", "corpus.idx", "rows.parquet"):
        assert (again / name).read_bytes() == (corpus_dir / name).read_bytes()
    assert json.loads((again / "command.json").read_text())["options"]["out"] == "."


def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]


# -- working commands -------------------------------------------------------------------------------

def test_info_json(corpus_dir: Path, monkeypatch, capsys) -> None:
    code, out, err = run_cli(["corpus", "info", corpus_dir, "--json"], monkeypatch, capsys)
    assert code == 0, err
    info = json.loads(out)
    corpus = open_corpus(corpus_dir)
    rows = np.asarray(corpus.rows(0, corpus.num_rows))
    assert info["rows"] == corpus.num_rows and info["row_len"] == 32 and info["dtype"] == "uint16"
    assert info["batch_size"] == 8 and info["steps"] == corpus.num_rows // 8
    assert info["leftover_rows"] == corpus.num_rows % 8
    assert (info["token_id_min"], info["token_id_max"]) == (int(rows.min()), int(rows.max()))
    assert info["token_id_range_exact"] is True
    assert info["bytes_per_step"] == 8 * 64
    assert info["shards"] == 1 and info["eot_id"] == 0
    code, out, _ = run_cli(["corpus", "info", corpus_dir, "--json", "--batch-size", "4"], monkeypatch, capsys)
    assert json.loads(out)["steps"] == corpus.num_rows // 4


def test_info_table_on_the_workspace_default(corpus_dir: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    ws = tmp_path / "ws"
    shutil.copytree(corpus_dir, ws / "default" / "corpus")
    code, out, err = run_cli(["corpus", "info", "--workspace", ws], monkeypatch, capsys)
    assert code == 0, err
    assert "megatron" in out and "uint16" in out and "8 rows" in out
    monkeypatch.setenv("CURATE_WORKSPACE", str(tmp_path / "empty-ws"))
    code, _, err = run_cli(["corpus", "info"], monkeypatch, capsys)
    assert code == 2 and "default corpus" in one_error_line(err)


def test_show_decodes_the_step_batch(corpus_dir: Path, inputs: Path, monkeypatch, capsys) -> None:
    code, out, err = run_cli(["corpus", "show", corpus_dir, "--step", "3", "--rows", "2:5", "--json"], monkeypatch, capsys)
    assert code == 0, err
    records = json.loads(out)
    corpus = open_corpus(corpus_dir)
    tok = load_tokenizer(inputs / "tokenizer.json")
    side = pq.read_table(corpus.sidecar_path()).to_pydict()
    assert [r["row_id"] for r in records] == [26, 27, 28]
    assert [r["position"] for r in records] == [2, 3, 4]
    for r in records:
        ids = corpus.rows(r["row_id"], r["row_id"] + 1)[0]
        assert r["token_ids"] == ids.tolist()
        assert r["text"] == tok.decode(ids)
        assert r["labels"]["domain"] == side["domain"][r["row_id"]]
        assert r["labels"]["doc_id"] == side["doc_id"][r["row_id"]]
    code, out, _ = run_cli(["corpus", "show", corpus_dir, "--step", "0", "--rows", "1", "--raw"], monkeypatch, capsys)
    assert code == 0
    assert " ".join(map(str, corpus.rows(1, 2)[0].tolist())) in out


@pytest.mark.parametrize("fmt, out_name", [("megatron", "m/exported"), ("parquet", "e.parquet"), ("npy", "e.npy")])
def test_export_steps_round_trip(corpus_dir: Path, tmp_path: Path, fmt: str, out_name: str, monkeypatch, capsys) -> None:
    code, out, err = run_cli(
        ["corpus", "export", corpus_dir, "--to", fmt, "--out", tmp_path / out_name, "--steps", "2:5"], monkeypatch, capsys
    )
    assert code == 0, err
    source = open_corpus(corpus_dir)
    exported = open_corpus(tmp_path / out_name)
    assert exported.num_rows == 24
    assert np.array_equal(exported.rows(0, 24), source.rows(16, 40))
    assert exported.dtype == np.uint16
    if fmt == "parquet":
        table = pq.read_table(tmp_path / out_name).to_pydict()
        side = pq.read_table(source.sidecar_path()).to_pydict()
        assert table["row_id"] == list(range(16, 40)) and table["step"] == [r // 8 for r in range(16, 40)]
        assert table["domain"] == side["domain"][16:40]
        assert exported.batch_size == 8
    if fmt == "megatron":
        assert (tmp_path / "m" / "exported.idx").is_file()


def test_export_whole_corpus_to_megatron_is_byte_identical(corpus_dir: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    code, _, err = run_cli(["corpus", "export", corpus_dir, "--to", "megatron", "--out", tmp_path / "copy.bin"], monkeypatch, capsys)
    assert code == 0, err
    assert (tmp_path / "copy.bin").read_bytes() == (corpus_dir / "corpus.bin").read_bytes()
    assert (tmp_path / "copy.idx").read_bytes() == (corpus_dir / "corpus.idx").read_bytes()


# -- bad inputs: exit 2, one `error:` line, nothing written ---------------------------------------------

@pytest.fixture()
def megatron_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "mega"
    write_megatron(folder / "document", patterned_rows(40, 9, 500, seed=1), np.uint16)
    return folder


def _corrupt(folder: Path, case: str) -> Path:
    idx, bin_ = folder / "document.idx", folder / "document.bin"
    if case == "bad magic":
        raw = bytearray(idx.read_bytes())
        raw[:9] = b"NOTMEGATR"
        idx.write_bytes(bytes(raw))
    elif case == "unknown dtype code":
        raw = bytearray(idx.read_bytes())
        raw[17] = 7
        idx.write_bytes(bytes(raw))
    elif case == "truncated data":
        bin_.write_bytes(bin_.read_bytes()[:-18 * 3])
    elif case == "not a whole number of rows":
        bin_.write_bytes(bin_.read_bytes() + b"\x00\x00\x00")
    elif case == "missing shard":
        shards = shard_bin(bin_, folder, "document", 100)
        bin_.unlink()
        shards[3].unlink()
    return idx


@pytest.mark.parametrize(
    "case, expected",
    [
        ("bad magic", "bad magic"),
        ("unknown dtype code", "unknown dtype code 7"),
        ("truncated data", "truncated data: 666 bytes, the index needs 720"),
        ("not a whole number of rows", "data size 723 bytes is not a whole number of rows (18 bytes each)"),
        ("missing shard", "missing shard file(s) document-00003-of-00007.bin"),
    ],
)
@pytest.mark.parametrize("command", ["info", "export"])
def test_bad_megatron_files(megatron_dir: Path, tmp_path: Path, case: str, expected: str, command: str, monkeypatch, capsys) -> None:
    idx = _corrupt(megatron_dir, case)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    args = ["corpus", "info", idx] if command == "info" else ["corpus", "export", idx, "--to", "npy", "--out", out_dir / "x.npy"]
    code, out, err = run_cli(args, monkeypatch, capsys)
    assert code == 2
    line = one_error_line(err)
    assert expected in line and "document" in line
    assert tree(out_dir) == []


def test_token_ids_outside_the_vocabulary(megatron_dir: Path, monkeypatch, capsys) -> None:
    rows = open_corpus(megatron_dir).rows(0, 40)
    r, c = np.argwhere(rows >= 300)[0]
    code, _, err = run_cli(["corpus", "info", megatron_dir, "--vocab-size", "300"], monkeypatch, capsys)
    assert code == 2
    line = one_error_line(err)
    assert f"token id {rows[r, c]} at row {r} is outside the model's vocabulary (size 300)" in line
    code, _, err = run_cli(["corpus", "info", megatron_dir, "--vocab-size", "500"], monkeypatch, capsys)
    assert code == 0, err


@pytest.mark.parametrize(
    "body, expected",
    [
        ('{"text": "the cat"}\n{"text": oops}\n', "docs.jsonl:2: not valid JSON"),
        ('{"text": "the cat"}\n{"title": "x"}\n', "docs.jsonl:2: no 'text' string field"),
        ("", "docs.jsonl: no documents (empty input)"),
        ("\n\n", "docs.jsonl: no documents (empty input)"),
        ('{"text": "the cat"}\n', "do not fill one row of 32 tokens"),
    ],
)
def test_bad_ingest_inputs(inputs: Path, tmp_path: Path, body: str, expected: str, monkeypatch, capsys) -> None:
    (tmp_path / "docs.jsonl").write_text(body)
    out_dir = tmp_path / "work"
    out_dir.mkdir()
    args = ["corpus", "ingest", tmp_path / "docs.jsonl", "--tokenizer", inputs / "tokenizer.json", "--seq-len", "31", "--out", out_dir / "c"]
    code, out, err = run_cli(args, monkeypatch, capsys)
    assert code == 2
    assert expected in one_error_line(err)
    assert tree(out_dir) == []


def test_ingest_bad_tokenizer_and_missing_input(inputs: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    (tmp_path / "tok.json").write_text("{not json")
    args = ["corpus", "ingest", inputs / "docs.jsonl", "--tokenizer", tmp_path / "tok.json", "--seq-len", "31", "--out", tmp_path / "c"]
    code, _, err = run_cli(args, monkeypatch, capsys)
    assert code == 2 and "tok.json: not a tokenizers JSON file" in one_error_line(err)
    args = ["corpus", "ingest", tmp_path / "nope.jsonl", "--tokenizer", inputs / "tokenizer.json", "--seq-len", "31", "--out", tmp_path / "c"]
    code, _, err = run_cli(args, monkeypatch, capsys)
    assert code == 2 and "nope.jsonl: no such file or folder" in one_error_line(err)
    assert tree(tmp_path) == ["tok.json"]


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--steps", "1:3", "--rows", "0:4"], "--steps and --rows exclude each other"),
        (["--steps", "0:999"], "--steps '0:999': past the end"),
        (["--rows", "5:2"], "--rows '5:2': empty range"),
        (["--rows", "a:b"], "expected a:b with whole numbers"),
        (["--to-fix"], "No such option"),
    ],
)
def test_bad_export_ranges(corpus_dir: Path, tmp_path: Path, extra: list[str], expected: str, monkeypatch, capsys) -> None:
    args = ["corpus", "export", corpus_dir, "--to", "npy", "--out", tmp_path / "x.npy", *extra]
    code, _, err = run_cli(args, monkeypatch, capsys)
    assert code == 2
    assert expected in one_error_line(err)
    assert tree(tmp_path) == []


def test_export_refuses_to_overwrite_its_source(megatron_dir: Path, monkeypatch, capsys) -> None:
    before = (megatron_dir / "document.bin").read_bytes()
    code, _, err = run_cli(["corpus", "export", megatron_dir, "--to", "megatron", "--out", megatron_dir / "document"], monkeypatch, capsys)
    assert code == 2 and "would overwrite the corpus being exported" in one_error_line(err)
    assert (megatron_dir / "document.bin").read_bytes() == before


def test_show_step_past_the_end(corpus_dir: Path, monkeypatch, capsys) -> None:
    code, _, err = run_cli(["corpus", "show", corpus_dir, "--step", "9999"], monkeypatch, capsys)
    assert code == 2 and "--step 9999: the corpus has steps 0.." in one_error_line(err)


def test_console_script_exit_code(tmp_path: Path) -> None:
    (tmp_path / "x.idx").write_bytes(b"garbage-garbage-garbage-garbage-garbage")
    proc = subprocess.run([sys.executable, "-m", "curate.cli", "corpus", "info", str(tmp_path / "x.idx")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "bad magic" in one_error_line(proc.stderr) and proc.stdout == ""


def test_big_corpora_sample_the_id_range_unless_exact(megatron_dir: Path, monkeypatch, capsys) -> None:
    import curate.commands.corpus as corpus_cmd

    rows = open_corpus(megatron_dir).rows(0, 40)
    monkeypatch.setattr(corpus_cmd, "EXACT_SCAN_MAX_TOKENS", 100)
    monkeypatch.setattr(corpus_cmd, "SAMPLED_STEPS", 3)
    code, out, err = run_cli(["corpus", "info", megatron_dir, "--json", "--batch-size", "2"], monkeypatch, capsys)
    assert code == 0, err
    info = json.loads(out)
    sampled = rows[[0, 1, 19, 20, 38, 39]]  # 3 evenly spaced batches of 2 rows
    assert info["token_id_range_exact"] is False
    assert (info["token_id_min"], info["token_id_max"]) == (int(sampled.min()), int(sampled.max()))
    code, out, _ = run_cli(["corpus", "info", megatron_dir, "--json", "--exact"], monkeypatch, capsys)
    info = json.loads(out)
    assert info["token_id_range_exact"] is True
    assert (info["token_id_min"], info["token_id_max"]) == (int(rows.min()), int(rows.max()))
