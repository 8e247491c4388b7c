"""`curate tokenizer train` (`curate/commands/tokenizer.py`, `curate/tokenize.py train_tokenizer`) and `curate corpus
ingest --vocab` on a folder of raw text files (`curate/ingest.py read_text_dir`)."""
from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

from curate.corpus import open_corpus
from curate.tokenize import EOT_TOKEN, load_tokenizer
from curate.training.recipes import REFERENCE_RUN
from tests.corpus_helpers import run_cli

ROOT = Path(__file__).resolve().parents[1]
RAW = ROOT / "tests" / "fixtures" / "raw_text"
DOMAINS = {"latex", "python", "prose", "troff", "xml"}


def raw_folder(tmp_path: Path) -> Path:
    """The raw text fixture plus a binary file and a gzipped man page."""
    folder = tmp_path / "raw"
    shutil.copytree(RAW, folder)
    (folder / "prose" / "figure.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (folder / "troff" / "short.1.gz").write_bytes(gzip.compress(b".TH SHORT 1\n.SH NAME\nshort \\- a short page\n"))
    return folder


def test_tokenizer_train_is_deterministic_and_loadable(tmp_path, monkeypatch, capsys):
    folder = raw_folder(tmp_path)
    code, out, err = run_cli(["tokenizer", "train", folder, "--vocab", 320, "--out", tmp_path / "tok"], monkeypatch, capsys)
    assert code == 0, err
    assert "BPE of 320 tokens trained on 16 documents" in out and "skipped 1 binary or non-UTF-8 file" in out
    tok_file = tmp_path / "tok" / "tokenizer.json"
    # the same input and vocabulary in another process: the same bytes
    proc = subprocess.run([sys.executable, "-m", "curate.cli", "tokenizer", "train", str(folder), "--vocab", "320",
                           "--out", str(tmp_path / "again")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "again" / "tokenizer.json").read_bytes() == tok_file.read_bytes()
    tok = load_tokenizer(tmp_path / "tok")
    assert tok.vocab_size == 320 and tok.eot_id == 0 and tok.tok.id_to_token(0) == EOT_TOKEN
    text = "\\begin{itemize} <para>ünïcode ✓</para>\tdef f(x):\n"
    assert tok.decode(tok.encode_batch([text])[0]) == text  # every byte encodes
    config = json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())
    assert config["pad_token"] == EOT_TOKEN and config["eos_token"] == EOT_TOKEN  # in-vocabulary pad
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    assert hf.pad_token_id == 0 and len(hf) == 320
    # a JSONL input (the text field) trains the same way; replacing the folder is allowed
    with open(tmp_path / "docs.jsonl", "w") as fh:
        for f in sorted(p for p in RAW.rglob("*") if p.is_file()):
            fh.write(json.dumps({"text": f.read_text(), "domain": f.parent.name}) + "\n")
    code, out, err = run_cli(["tokenizer", "train", tmp_path / "docs.jsonl", "--vocab", 300, "--out", tmp_path / "tok"],
                             monkeypatch, capsys)
    assert code == 0, err
    assert "trained on 15 documents" in out


def test_tokenizer_train_bad_input_is_one_line(tmp_path, monkeypatch, capsys):
    folder = raw_folder(tmp_path)
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "a.dat").write_bytes(b"\x00\x01\x02")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("keep")
    cases = [
        ([folder, "--vocab", 200, "--out", tmp_path / "o1"], "--vocab must be at least 257"),
        ([tmp_path / "missing", "--vocab", 300, "--out", tmp_path / "o2"], "no such file or folder"),
        ([tmp_path / "bin", "--vocab", 300, "--out", tmp_path / "o3"], "no text files (all 1 files are binary"),
        ([folder, "--vocab", 300, "--out", tmp_path / "taken"], "is not a curate tokenizer folder"),
        ([folder, "--vocab", 300, "--out", folder], "is an input of this command"),
    ]
    for args, message in cases:
        code, out, err = run_cli(["tokenizer", "train", *args], monkeypatch, capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (args, err)
    assert not any((tmp_path / name).exists() for name in ("o1", "o2", "o3"))
    # a vocabulary the text cannot fill is said, not padded
    code, out, err = run_cli(["tokenizer", "train", folder / "prose", "--vocab", 5000, "--out", tmp_path / "o4"], monkeypatch, capsys)
    assert code == 0 and "fewer than --vocab 5,000: no other pair of tokens occurs twice" in out, (out, err)
    assert load_tokenizer(tmp_path / "o4").vocab_size < 5000
    assert (tmp_path / "taken" / "mine.txt").read_text() == "keep"


def test_ingest_raw_folder_with_vocab(tmp_path, monkeypatch, capsys):
    folder = raw_folder(tmp_path)
    out_dir = tmp_path / "corpus"
    code, out, err = run_cli(["corpus", "ingest", folder, "--vocab", 300, "--seq-len", 32, "--out", out_dir], monkeypatch, capsys)
    assert code == 0, err
    assert "from 16 documents" in out and "skipped 1 binary or non-UTF-8 file" in out
    corpus = open_corpus(out_dir)
    assert corpus.batch_size == REFERENCE_RUN["batch_size"]  # the default recipe's batch size, not 1,024
    assert corpus.meta is not None and corpus.meta.vocab_size == 300
    side = pq.read_table(out_dir / "rows.parquet").to_pydict()
    assert set(side["domain"]) == DOMAINS and len(side["domain"]) == corpus.num_rows
    assert all(src.split("/")[0] == dom for src, dom in zip(side["source"], side["domain"]))
    # the trained tokenizer is saved in the corpus and is the one `tokenizer train` makes
    run_cli(["tokenizer", "train", folder, "--vocab", 300, "--out", tmp_path / "tok"], monkeypatch, capsys)
    assert (out_dir / "tokenizer.json").read_bytes() == (tmp_path / "tok" / "tokenizer.json").read_bytes()
    for args, message in (
        (["--tokenizer", tmp_path / "tok", "--vocab", 300], "give --tokenizer or --vocab (to train one on INPUT), not both"),
        ([], "give --tokenizer or --vocab"),
        (["--vocab", 10], "--vocab must be at least 257"),
        (["--vocab", 300, "--heldout-rows", 100_000], "100000 held-out rows leave no training row"),
        (["--vocab", 300, "--heldout-rows", -1], "--heldout-rows must be at least 0"),
    ):
        code, out, err = run_cli(["corpus", "ingest", folder, "--seq-len", 32, "--out", tmp_path / "bad", *args], monkeypatch, capsys)
        assert code == 2 and err.strip().splitlines() == [f"error: {err.strip()[7:]}"] and message in err, err
    assert not (tmp_path / "bad").exists()
