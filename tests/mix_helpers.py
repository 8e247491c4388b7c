"""Test helpers for build-mix and synth: a small labelled corpus with a scores folder over a window that
starts after step 0 and ends before the corpus does, and rows with planted long repeats."""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from curate.augment.features import repetition_features
from curate.corpus import CorpusMeta
from curate.megatron import write_megatron
from curate.tokenize import TextTokenizer
from curate.default_corpus import train_tokenizer
from structure_helpers import minipile_rows, write_corpus, write_scores  # noqa: F401 (write_scores re-exported)

BATCH = 16
START_STEP = 2
END_STEP = 50


@dataclass
class MixSetup:
    """A corpus folder, its scores folder (window steps [START_STEP, END_STEP)) and the window's true scores."""

    corpus: Path
    scores: Path
    rows: np.ndarray  # every corpus row
    window_scores: np.ndarray  # score of window row i (window-relative)

    @property
    def first_row(self) -> int:
        return START_STEP * BATCH

    @property
    def stop_row(self) -> int:
        return END_STEP * BATCH


def make_setup(root: Path, seed: int = 3) -> MixSetup:
    """Mini-Pile rows (129 tokens, 512-token BPE); score = longest repeated span + small seeded noise (distinct values)."""
    data = minipile_rows(1000, seed=seed, row_len=129, vocab_size=512)
    assert len(data.rows) >= (END_STEP + 4) * BATCH
    corpus = write_corpus(root / "corpus", data, batch_size=BATCH)
    a, b = START_STEP * BATCH, END_STEP * BATCH
    longest = repetition_features(data.rows[a:b]).longest.astype(np.float64)
    scores = longest + np.random.default_rng(seed).uniform(0.0, 0.5, size=b - a)
    write_scores(root / "scores", corpus, scores, np.arange(a, b), batch_size=BATCH, shard_rows=150)
    return MixSetup(corpus, root / "scores", data.rows, scores)


def pseudo_words(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    syll = ["ka", "lo", "mi", "ru", "te", "po", "sa", "ne", "vi", "do", "gu", "ze", "ba", "fi"]
    return ["".join(rng.choice(syll) for _ in range(rng.randint(1, 3))) for _ in range(n)]


def planted_texts(n: int, seed: int) -> list[str]:
    """Texts of pseudo-words in which one 18-30-word span recurs once, 15-70 words later."""
    rng = random.Random(seed)
    words = pseudo_words(400, seed + 1)
    out = []
    for _ in range(n):
        pre = [rng.choice(words) for _ in range(rng.randint(0, 20))]
        span = [rng.choice(words) for _ in range(rng.randint(18, 30))]
        mid = [rng.choice(words) for _ in range(rng.randint(15, 70))]
        post = [rng.choice(words) for _ in range(300)]
        out.append(" ".join(pre + span + mid + span + post))
    return out


def write_token_corpus(folder: Path, rows: np.ndarray, tokenizer: TextTokenizer, batch_size: int = BATCH) -> Path:
    """A corpus folder (corpus.bin/.idx, tokenizer.json, corpus.json) holding exactly `rows`."""
    folder.mkdir(parents=True, exist_ok=True)
    write_megatron(folder / "corpus", rows, np.uint16)
    tokenizer.tok.save(str(folder / "tokenizer.json"))
    meta = CorpusMeta(data="corpus.idx", batch_size=batch_size, vocab_size=tokenizer.vocab_size,
                      tokenizer="tokenizer.json", eot_id=tokenizer.eot_id)
    (folder / "corpus.json").write_text(json.dumps(meta.to_json()))
    return folder


def planted_rows(n: int, row_len: int, seed: int) -> tuple[np.ndarray, TextTokenizer]:
    """`n` rows of `row_len` tokens, each the start of one planted text, and the BPE trained on them."""
    texts = planted_texts(n, seed)
    tokenizer = train_tokenizer(texts, vocab_size=400)
    ids = tokenizer.encode_batch(texts)
    assert all(len(i) >= row_len for i in ids), min(len(i) for i in ids)
    return np.array([i[:row_len] for i in ids], dtype=np.int64), tokenizer

