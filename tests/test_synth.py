"""Motif mining and synthetic rows: repeats at the mined distances, fresh content, determinism, `curate synth`."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from curate.augment.motifs import RepeatSpan, content_mask, mine_motifs, repeat_spans, vocab_classes
from curate.augment.synth import synthesize
from curate.augment.tags import tag_rows
from corpus_helpers import run_cli
from curate.corpus import open_corpus
from curate.tokenize import TextTokenizer, load_tokenizer
from curate.default_corpus import train_tokenizer
from mix_helpers import BATCH, make_setup, planted_rows, write_scores, write_token_corpus

ROW_LEN = 257


@pytest.fixture(scope="module")
def planted() -> tuple[np.ndarray, TextTokenizer]:
    return planted_rows(40, ROW_LEN, seed=0)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return make_setup(tmp_path_factory.mktemp("synth"))


def _ngrams(row: np.ndarray, n: int) -> set[tuple[int, ...]]:
    return {tuple(row[i : i + n].tolist()) for i in range(len(row) - n + 1)}


# -- repeated spans ---------------------------------------------------------------------------------

def test_repeat_spans_finds_planted_copies_exactly() -> None:
    rng = np.random.default_rng(0)
    row = rng.integers(1000, 2000, size=200)  # distinct-ish random tokens
    row[120:140] = row[30:50]  # 20 tokens copied from 90 back
    row[180:190] = row[160:170]  # 10 tokens copied from 20 back
    spans = repeat_spans(row, min_len=8)
    assert spans == [RepeatSpan(120, 20, 90), RepeatSpan(180, 10, 20)]
    assert repeat_spans(row, min_len=11) == [RepeatSpan(120, 20, 90)]
    assert repeat_spans(rng.permutation(5000)[:300]) == []


def test_template_tokens_are_kept_and_content_is_marked() -> None:
    texts = ['\\begin{table} <div class="x"> {"name": 12} def foo(x): return x'] * 30 + ["lorem ipsum dolor 42 Foo"] * 30
    tok = train_tokenizer(texts, vocab_size=320)
    vc = vocab_classes(tok)
    row = np.array(tok.encode_batch([texts[0] + " lorem 42"])[0])
    mask = content_mask(row, vc)
    pieces = [tok.decode([t]) for t in row]
    content = {p.strip() for p, m in zip(pieces, mask) if m}
    template = {p.strip() for p, m in zip(pieces, mask) if not m}
    assert {"begin", "div", "class", "name", "def", "return"} <= template  # command, tag, attribute, key, keywords
    assert {"table", "foo", "12", "x", "lorem", "42"} <= content
    assert not any(c in content for c in ("{", "<", '"', ":", "("))


# -- generation -------------------------------------------------------------------------------------

def test_synthetic_rows_repeat_at_the_mined_distances_with_fresh_content(planted) -> None:
    rows, tok = planted
    vc = vocab_classes(tok)
    motifs = mine_motifs(rows, np.arange(len(rows)), np.zeros(len(rows)), tok, vc, min_span=16)
    assert all(m.spans for m in motifs)  # every planted row shows its long repeat
    batch = next(synthesize(motifs, len(motifs), tok, ROW_LEN, seed=7, vc=vc))
    assert batch.rows.shape == (len(motifs), ROW_LEN)
    hits = 0
    for motif, row in zip(motifs, batch.rows):
        assert int(row.max()) < tok.vocab_size
        mined = max(motif.spans, key=lambda s: s.length)
        found = repeat_spans(row, min_len=16)
        if any(abs(s.distance - mined.distance) <= 3 and s.length >= 0.8 * mined.length for s in found):
            hits += 1
        # not a copy: few of the synthetic row's 6-grams occur in its source row
        shared = len(_ngrams(row, 6) & _ngrams(motif.tokens, 6)) / len(_ngrams(row, 6))
        assert shared < 0.1, shared
        assert (row != motif.tokens).mean() > 0.5
    assert hits >= 0.95 * len(motifs), hits


def test_synthetic_rows_without_renaming_would_be_copies(planted) -> None:
    """The control for the test above: with every position marked template, generation reproduces the source."""
    rows, tok = planted
    vc = vocab_classes(tok)
    motifs = mine_motifs(rows[:5], np.arange(5), np.zeros(5), tok, vc)
    for m in motifs:
        m.content[:] = False
    batch = next(synthesize(motifs, 5, tok, ROW_LEN, seed=7, vc=vc))
    assert np.array_equal(batch.rows, rows[:5])


def test_synthesis_is_deterministic_by_seed_and_prefix_stable(planted) -> None:
    rows, tok = planted
    vc = vocab_classes(tok)
    motifs = mine_motifs(rows[:10], np.arange(10), np.zeros(10), tok, vc)

    def gen(n: int, seed: int, chunk: int = 512) -> np.ndarray:
        return np.concatenate([b.rows for b in synthesize(motifs, n, tok, ROW_LEN, seed=seed, vc=vc, chunk_rows=chunk)])

    a = gen(25, seed=1)
    assert np.array_equal(a, gen(25, seed=1, chunk=4))  # chunking does not matter
    assert np.array_equal(a[:12], gen(12, seed=1))  # row i depends on (seed, i) only
    b = gen(25, seed=2)
    assert (a != b).any(axis=1).all()  # every row differs under another seed
    assert len({r.tobytes() for r in a}) == 25  # two rows from one motif differ too (rows 0 and 10, 20)


# -- the command ------------------------------------------------------------------------------------

def test_synth_command_writes_a_corpus_with_provenance(setup, tmp_path, monkeypatch, capsys) -> None:
    out = tmp_path / "synth"
    code, stdout, err = run_cli(["synth", "--scores", setup.scores, "--rows", 40, "--motif-rows", 12, "--seed", 3, "--out", out], monkeypatch, capsys)
    assert code == 0, err
    assert "mined 12 motifs" in stdout
    corpus = open_corpus(out)
    assert (corpus.num_rows, corpus.row_len, corpus.batch_size) == (40, 129, BATCH)
    side = pq.read_table(out / "rows.parquet").to_pydict()
    top12 = set((np.argsort(-setup.window_scores, kind="stable")[:12] + setup.first_row).tolist())
    assert set(side["motif_row_id"]) == top12  # 40 rows cycle through all 12 motifs
    assert side["motif_rank"][:13] == list(range(12)) + [0]
    # every synthetic row of a motif with a long repeat carries a long repeat too
    motifs = json.loads((out / "motifs.json").read_text())["motifs"]
    with_spans = {m["row_id"] for m in motifs if m["spans"]}
    rows = corpus.rows(0, 40)
    carried = [bool(repeat_spans(r)) for r, mid in zip(rows, side["motif_row_id"]) if mid in with_spans]
    assert len(carried) > 20 and np.mean(carried) >= 0.9
    # the structural class survives the fresh content (the tagger reads the template, not the values)
    tags = tag_rows(np.asarray(rows), load_tokenizer(corpus.tokenizer_spec()))
    assert np.mean([t == m for t, m in zip(tags, side["motif_label"])]) >= 0.85
    source = open_corpus(setup.corpus)
    assert not any(np.array_equal(r, source.take([mid])[0]) for r, mid in zip(rows, side["motif_row_id"]))
    # same seed, same bytes; the folder verifies
    again = tmp_path / "again"
    assert run_cli(["synth", "--scores", setup.scores, "--rows", 40, "--motif-rows", 12, "--seed", 3, "--out", again], monkeypatch, capsys)[0] == 0
    assert (again / "synthetic.bin").read_bytes() == (out / "synthetic.bin").read_bytes()
    code, stdout, err = run_cli(["verify", out], monkeypatch, capsys)
    assert code == 0 and stdout.startswith("ok:"), err


@pytest.mark.parametrize("args, message", [
    (["--rows", "0"], "--rows must be at least 1 (got 0)"),
    (["--rows", "5", "--motif-rows", "0"], "--motif-rows must be at least 1 (got 0)"),
])
def test_synth_bad_options_are_one_line(setup, tmp_path, monkeypatch, capsys, args, message) -> None:
    out = tmp_path / "s"
    code, _, err = run_cli(["synth", "--scores", setup.scores, "--out", out, *args], monkeypatch, capsys)
    assert code == 2 and err.strip().splitlines() == [f"error: {message}"]
    assert not out.exists()


def test_synth_needs_a_tokenizer(setup, tmp_path, monkeypatch, capsys) -> None:
    rows = open_corpus(setup.corpus).rows(0, 64)
    folder = tmp_path / "bare"
    write_token_corpus(folder, np.asarray(rows), train_tokenizer(["a b c"] * 5, 300))
    meta = json.loads((folder / "corpus.json").read_text())
    meta.pop("tokenizer")
    (folder / "corpus.json").write_text(json.dumps(meta))
    scores = tmp_path / "scores"
    write_scores(scores, folder, np.arange(64, dtype=float), np.arange(64), batch_size=BATCH)
    code, _, err = run_cli(["synth", "--scores", scores, "--rows", 3, "--out", tmp_path / "o"], monkeypatch, capsys)
    assert code == 2 and "no tokenizer recorded" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
