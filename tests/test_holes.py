"""Smaller holes: an index listing 0 rows beside data, a killed writer's temporaries, checkpoint tokenizers."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from curate.atomic import atomic_dir, atomic_path, clean_stale_temps
from curate.corpus import open_corpus
from curate.errors import CurateError
from curate.megatron import write_megatron


def test_an_index_of_zero_rows_beside_data_is_refused(tmp_path) -> None:
    bin_, idx = write_megatron(tmp_path / "empty", np.zeros((0, 5), np.uint16), np.uint16)
    assert open_corpus(idx).num_rows == 0  # a truly empty corpus still opens
    bin_.write_bytes(b"\0" * 40)
    with pytest.raises(CurateError, match="40 bytes of data, but the index empty.idx lists 0 sequences"):
        open_corpus(idx)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_the_next_writer_removes_a_killed_writers_temporaries_only(tmp_path) -> None:
    dead, alive = _dead_pid(), os.getppid()
    stale_dir = tmp_path / f".m.{dead}-abcd1234.tmp"
    stale_dir.mkdir()
    (stale_dir / "mix.bin").write_bytes(b"half")
    stale_old = tmp_path / f".m.old-{dead}"
    stale_old.mkdir()
    live_dir = tmp_path / f".m.{alive}-abcd1234.tmp"  # a writer still running: left alone
    live_dir.mkdir()
    legacy = tmp_path / ".m.k2j4h6g8.tmp"  # an older curate's temporary (no pid), made before this process
    legacy.mkdir()
    os.utime(legacy, (1, 1))
    other = tmp_path / f".mm.{dead}-abcd1234.tmp"  # another output's temporary
    other.mkdir()
    with atomic_dir(tmp_path / "m") as tmp:
        (tmp / "x").write_text("x")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m", live_dir.name, other.name])
    # files too
    stale_file = tmp_path / f".f.bin.{dead}-zz99yy88.tmp"
    stale_file.write_bytes(b"half")
    with atomic_path(tmp_path / "f.bin") as tmp:
        tmp.write_bytes(b"whole")
    assert not stale_file.exists() and (tmp_path / "f.bin").read_bytes() == b"whole"
    assert clean_stale_temps(tmp_path / "m") == []


def test_a_checkpoint_pads_with_an_in_vocabulary_token(tmp_path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from corpus_helpers import train_tiny_tokenizer
    from score_helpers import build_tiny_model
    from curate.training.checkpoints import save_checkpoint
    from curate.training.models import load_model

    tok_file = train_tiny_tokenizer(tmp_path / "tok.json", vocab_size=256, seed=0)
    tok_file = Path(tok_file) if not isinstance(tok_file, Path) else tok_file
    if not tok_file.is_file():
        tok_file = tmp_path / "tok.json"
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(tok_file)).get_vocab_size()
    model = load_model(build_tiny_model(tmp_path / "m", vocab_size=vocab))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ckpt = save_checkpoint(tmp_path / "run", 1, model, opt, {"plan_hash": "p", "spec_hash": "s"}, tokenizer_file=tok_file)
    tok = AutoTokenizer.from_pretrained(ckpt)
    assert len(tok) == vocab and tok.pad_token == "<|endoftext|>" and tok.pad_token_id < vocab
    enc = tok(["the cat sat on the mat", "a"], padding=True, return_tensors="pt")
    out = AutoModelForCausalLM.from_pretrained(ckpt)(**enc)
    assert out.logits.shape[:2] == enc["input_ids"].shape and torch.isfinite(out.logits).all()
