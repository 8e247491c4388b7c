"""The embedded mini-Pile generator and the default corpus build."""
from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from curate.corpus import open_corpus
from curate.default_corpus import PAD_CHAR, DefaultCorpusSpec, build_default_corpus, fit_documents, train_tokenizer
from curate.errors import CurateError
from curate.minipile import DOMAINS, MixtureConfig, copy_pieces, generate_documents
from curate.tokenize import load_tokenizer
from curate.workspace import default_corpus_dir

N_DOCS = 3000
STRUCTURED = MixtureConfig(shares={"latex": 1, "xml": 1, "code": 1, "json": 1, "table": 1, "prose": 1})


@pytest.fixture(scope="module")
def docs():
    return list(generate_documents(N_DOCS, seed=3))


def test_same_seed_same_text_and_different_seed_different_text(docs):
    again = list(generate_documents(200, seed=3))
    assert [d.text for d in again] == [d.text for d in docs[:200]]
    assert [d.domain for d in again] == [d.domain for d in docs[:200]]
    other = list(generate_documents(200, seed=4))
    assert sum(a.text == b.text for a, b in zip(other, docs[:200])) == 0


def test_documents_are_independent_of_their_neighbours(docs):
    # document i depends only on (seed, i): a slice generated on its own is the same text
    part = list(generate_documents(50, seed=3, start=1000))
    assert [d.text for d in part] == [d.text for d in docs[1000:1050]]


def test_every_domain_present_with_about_its_share(docs):
    shares = MixtureConfig().normalized_shares()
    counts = Counter(d.domain for d in docs)
    assert set(counts) == set(DOMAINS)
    for domain in DOMAINS:
        expected = shares[domain] * N_DOCS
        # 4 binomial standard deviations
        assert abs(counts[domain] - expected) <= 4 * np.sqrt(expected * (1 - shares[domain])), (domain, counts[domain], expected)


def test_custom_shares_are_followed():
    cfg = MixtureConfig(shares={"prose": 1.0, "repeat": 3.0})
    counts = Counter(d.domain for d in generate_documents(800, seed=0, cfg=cfg))
    assert set(counts) == {"prose", "repeat"}
    assert 0.70 <= counts["repeat"] / 800 <= 0.80


@pytest.mark.parametrize(
    "domain, pattern",
    [
        ("latex", r"\\(begin|section|label|cite|eqref|ref|item)\b"),
        ("xml", r"</?[A-Za-z][\w-]*[ >]|<\?xml"),
        ("code", r"\bdef \w+\(|\bstatic \w+ \w+\(|#include|^import \w+"),
        ("json", r'\{"id": "'),
        ("table", r"^\| .* \|$|^[^,\n]+(,[^,\n]+){2}$|^- \*\*"),
    ],
)
def test_structured_domains_look_like_the_real_thing(docs, domain, pattern):
    texts = [d.text for d in docs if d.domain == domain]
    assert texts
    hits = sum(bool(re.search(pattern, t, flags=re.M)) for t in texts)
    assert hits == len(texts)


def test_prose_is_sentences_of_a_large_zipfian_vocabulary():
    docs = list(generate_documents(500, seed=3, cfg=MixtureConfig(shares={"prose": 1.0})))
    words = [w.strip(".,;?!").lower() for d in docs for w in d.text.split()]
    counts = Counter(words)
    assert len(counts) > 2000  # a large vocabulary, not a peaked chain
    top = [c for _, c in counts.most_common(50)]
    # Zipf: frequency of rank 1 vs rank 10 vs rank 50 falls roughly like 1/rank
    assert 5 < top[0] / top[9] < 20
    assert 20 < top[0] / top[49] < 120
    assert all(d.text[0].isupper() for d in docs if d.domain == "prose")


def _long_repeat_distances(text: str, min_len: int = 16) -> list[int]:
    """Distances between occurrences of random tokens (hex, alnum runs) of >= min_len characters."""
    out = []
    for m in set(re.findall(r"[0-9a-z]{%d,}" % min_len, text)):
        pos = [k.start() for k in re.finditer(re.escape(m), text)]
        out += [b - a for a, b in zip(pos, pos[1:])]
    return out


def test_long_exact_repeats_recur_at_varying_distances():
    structured = [d for d in generate_documents(1500, seed=5, cfg=STRUCTURED) if d.domain != "prose"]
    distances = [x for d in structured for x in _long_repeat_distances(d.text)]
    assert len(distances) > 200
    values = np.array(distances)
    # no fixed offset: many distinct distances, spread over a wide range
    assert len(set(distances)) > 100
    assert np.percentile(values, 90) > 3 * np.percentile(values, 10)
    assert Counter(distances).most_common(1)[0][1] < 0.1 * len(distances)


def test_copy_signal_varies_between_documents(docs):
    assert all(d.copy_spans == 0 for d in docs if d.domain == "prose")
    assert all(d.copy_spans >= 1 for d in docs if d.domain == "repeat")  # a repeat document always has a unit
    docs = list(generate_documents(1500, seed=5, cfg=STRUCTURED))
    spans = np.array([d.copy_spans for d in docs if d.domain != "prose"])
    assert (spans == 0).mean() > 0.2  # many documents carry no long span
    assert (spans >= 3).mean() > 0.1  # a tail of strong catalysts
    # the documents with more planned spans really contain more long repeated material
    def repeated_chars(text: str) -> int:
        return sum(len(m) * (text.count(m) - 1) for m in set(re.findall(r"\S{12,}", text)))
    none = np.mean([repeated_chars(d.text) for d in docs if d.domain != "prose" and d.copy_spans == 0])
    strong = np.mean([repeated_chars(d.text) for d in docs if d.domain != "prose" and d.copy_spans >= 3])
    assert strong > 3 * none


def test_bad_mixture_is_one_clear_error():
    with pytest.raises(CurateError, match="unknown domain"):
        MixtureConfig(shares={"poetry": 1.0})
    with pytest.raises(CurateError, match="span_repeats"):
        MixtureConfig(span_repeats=(1, 3))


def test_tokenizer_is_deterministic_and_round_trips(docs):
    texts = [d.text for d in docs[:400]]
    a = train_tokenizer(texts, 300)
    b = train_tokenizer(texts, 300)
    assert a.tok.to_str() == b.tok.to_str()
    assert a.eot_id == 0 and a.vocab_size == 300
    for t in texts[:50]:
        assert a.decode(a.encode_batch([t])[0]) == t


SMALL = DefaultCorpusSpec(vocab_size=300, seq_len=64, batch_size=8, train_rows=400, heldout_rows=40, tokenizer_docs=300)


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_fit_documents_gives_exact_lengths_mostly_without_padding():
    docs = list(generate_documents(600, seed=2))
    tok = train_tokenizer([d.text for d in docs[:300]], 300)
    texts, ids = fit_documents([d.text for d in docs], tok, 64)
    assert all(len(x) == 64 for x in ids)
    assert [len(x) for x in tok.encode_batch(texts)] == [64] * len(texts)
    assert ids == tok.encode_batch(texts)
    padded = [t for t in texts if t.endswith(PAD_CHAR)]
    assert len(padded) < 0.1 * len(texts)
    for d, t in zip(docs, texts):  # a fitted text is a prefix of the document (plus tabs)
        assert d.text.startswith(t.rstrip(PAD_CHAR))


def test_default_corpus_build_is_deterministic_and_labelled(tmp_path):
    a = build_default_corpus(tmp_path / "a", seed=7, progress=False, spec=SMALL)
    b = build_default_corpus(tmp_path / "b", seed=7, progress=False, spec=SMALL)
    assert a == default_corpus_dir(tmp_path / "a")
    assert _digest(a) == _digest(b)  # same seed, same bytes (tokens, sidecar, tokenizer, metadata)
    c = build_default_corpus(tmp_path / "c", seed=8, progress=False, spec=SMALL)
    assert (c / "corpus.bin").read_bytes() != (a / "corpus.bin").read_bytes()

    corpus = open_corpus(a)
    meta = json.loads((a / "corpus.json").read_text())
    assert corpus.row_len == 65 and corpus.batch_size == 8 and corpus.num_rows == 440
    assert meta["heldout_start"] == 400 and meta["heldout_rows"] == 40
    assert meta["build"]["seed"] == 7 and meta["build"]["mixture"]["spans_mean"] == SMALL.mixture.spans_mean

    # every row is [<|endoftext|>, one whole fitted document]: the end-of-text token only at position 0
    rows = corpus.rows(0, corpus.num_rows)
    eot = meta["eot_id"]
    assert (rows[:, 0] == eot).all() and not (rows[:, 1:] == eot).any()

    # each row's labels are those of its document, and its tokens are that document's beginning
    side = pq.read_table(a / "rows.parquet").to_pydict()
    docs = list(generate_documents(440, seed=7, cfg=SMALL.mixture, pieces=_pieces(a)))
    assert sorted(side["doc_index"]) == list(range(440))
    tok = load_tokenizer(a / "tokenizer.json")
    for r in range(corpus.num_rows):
        doc = docs[side["doc_index"][r]]
        assert side["domain"][r] == doc.domain
        assert side["copy_spans"][r] == doc.copy_spans
        assert doc.text.startswith(tok.decode(rows[r, 1:]).rstrip(PAD_CHAR))
    assert set(side["domain"]) == set(DOMAINS)


def _pieces(folder: Path) -> list[str]:
    tok = load_tokenizer(folder / "tokenizer.json")
    return copy_pieces([tok.decode([i]) for i in range(tok.vocab_size) if i != tok.eot_id])


def test_default_corpus_is_reused_rebuilt_with_force_and_guarded(tmp_path):
    out = build_default_corpus(tmp_path, seed=1, progress=False, spec=SMALL)
    stamp = (out / "corpus.bin").stat().st_mtime_ns
    assert build_default_corpus(tmp_path, seed=1, progress=False, spec=SMALL) == out
    assert (out / "corpus.bin").stat().st_mtime_ns == stamp  # untouched
    with pytest.raises(CurateError, match="force a rebuild"):
        build_default_corpus(tmp_path, seed=2, progress=False, spec=SMALL)
    build_default_corpus(tmp_path, seed=2, force=True, progress=False, spec=SMALL)
    assert json.loads((out / "corpus.json").read_text())["build"]["seed"] == 2
