"""Test helpers for the corpus layer: a tiny in-test BPE tokenizer, Pythia-style sharding, CLI runs."""
from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np

from curate.megatron import shard_name

WORDS = (
    "the cat sat on a mat while dogs ran over hills and code like def foo return x "
    "<div> </div> \\begin{table} \\end{table} 1 2 3 | ; = ( )"
).split()


def train_tiny_tokenizer(path: Path, vocab_size: int = 300, seed: int = 0) -> Path:
    """A byte-level BPE tokenizer with `<|endoftext|>` as special token id 0, trained here (no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    rng = random.Random(seed)
    texts = [" ".join(rng.choice(WORDS) for _ in range(40)) for _ in range(300)]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    tok.save(str(path))
    return path


def random_texts(n: int, seed: int, min_words: int = 3, max_words: int = 60) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words))) for _ in range(n)]


def shard_bin(single_bin: Path, out_dir: Path, stem: str, shard_bytes: int) -> list[Path]:
    """Cut one `.bin` into Pythia-named shards `<stem>-000NN-of-000LL.bin` (LL = last index)."""
    data = single_bin.read_bytes()
    pieces = [data[a : a + shard_bytes] for a in range(0, len(data), shard_bytes)]
    last = len(pieces) - 1
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, piece in enumerate(pieces):
        p = out_dir / shard_name(stem, i, last)
        p.write_bytes(piece)
        paths.append(p)
    return paths


def patterned_rows(n: int, row_len: int, vocab: int, seed: int = 0) -> np.ndarray:
    """Rows whose content identifies them (row r starts with r mod vocab), so misalignment shows."""
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, vocab, size=(n, row_len), dtype=np.int64)
    rows[:, 0] = np.arange(n) % vocab
    return rows


def invoke_main(args: list, monkeypatch) -> int:
    """Run the real entry point `curate.cli.main` in-process with these arguments; returns the exit code."""
    from curate.cli import main

    monkeypatch.setattr(sys, "argv", ["curate", *map(str, args)])
    try:
        main()
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def run_cli(args: list, monkeypatch, capsys) -> tuple[int, str, str]:
    """`invoke_main`, output captured by pytest's capsys; returns (exit code, stdout, stderr)."""
    code = invoke_main(args, monkeypatch)
    out = capsys.readouterr()
    return code, out.out, out.err


def run_cli_redirected(args: list, monkeypatch) -> tuple[int, str, str]:
    """`invoke_main` without capsys (usable from a module fixture): output captured by redirecting."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = invoke_main(args, monkeypatch)
    return code, out.getvalue(), err.getvalue()


def tree(folder: Path) -> list[str]:
    """Every path under `folder` (relative, sorted), hidden temporaries included."""
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def digest(root: Path) -> dict[str, str]:
    """sha256 of every file under `root` (hidden ones included), keyed by relative path."""
    import hashlib

    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}
