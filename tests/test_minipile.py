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
from curate.default_corpus import DefaultCorpusSpec, build_default_corpus, train_tokenizer
from curate.errors import CurateError
from curate.minipile import DOMAINS, MixtureConfig, generate_documents
from curate.tokenize import load_tokenizer
from curate.workspace import default_corpus_dir

N_DOCS = 3000


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
        ("latex", r"\\(begin|section|label|cite|eqref|item)\b"),
        ("xml", r"</?[A-Za-z][\w-]*[ >]|<\?xml"),
        ("code", r"\bdef \w+\(|\bstatic \w+ \w+\(|#include"),
        ("json", r'\{"id": "'),
        ("table", r"^\| .* \|$|^[^,\n]+(,[^,\n]+){3}$|^[-*] \*\*"),
    ],
)
def test_structured_domains_look_like_the_real_thing(docs, domain, pattern):
    texts = [d.text for d in docs if d.domain == domain]
    assert texts
    hits = sum(bool(re.search(pattern, t, flags=re.M)) for t in texts)
    assert hits == len(texts)


def test_prose_is_sentences_of_a_large_zipfian_vocabulary(docs):
    words = [w.strip(".,;?!").lower() for d in docs if d.domain == "prose" for w in d.text.split()]
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


def test_long_exact_repeats_recur_at_varying_distances(docs):
    structured = [d for d in docs if d.domain in ("latex", "xml", "code", "json", "table")]
    distances = [x for d in structured for x in _long_repeat_distances(d.text)]
    assert len(distances) > 200
    values = np.array(distances)
    # no fixed offset: many distinct distances, spread over a wide range
    assert len(set(distances)) > 100
    assert np.percentile(values, 90) > 3 * np.percentile(values, 10)
    assert Counter(distances).most_common(1)[0][1] < 0.1 * len(distances)


def test_copy_signal_varies_between_documents(docs):
    spans = np.array([d.copy_spans for d in docs if d.domain != "prose"])
    assert (spans == 0).mean() > 0.2  # many documents carry no long span
    assert (spans >= 3).mean() > 0.1  # a tail of strong catalysts
    assert all(d.copy_spans == 0 for d in docs if d.domain == "prose")
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


def _main_piece(row: np.ndarray, eot: int) -> list[int]:
    """The tokens of the document owning most of the row (a document owns its trailing end-of-text)."""
    pieces: list[list[int]] = [[]]
    for t in row.tolist():
        if t == eot:
            pieces[-1].append(t)
            pieces.append([])
        else:
            pieces[-1].append(t)
    best = max(range(len(pieces)), key=lambda i: (len(pieces[i]), -i))
    return [t for t in pieces[best] if t != eot]


def test_default_corpus_build_is_deterministic_and_labelled(tmp_path):
    a = build_default_corpus(tmp_path / "a", seed=7, progress=False, spec=SMALL)
    b = build_default_corpus(tmp_path / "b", seed=7, progress=False, spec=SMALL)
    assert a == default_corpus_dir(tmp_path / "a")
    assert _digest(a) == _digest(b)  # same seed, same bytes (tokens, sidecar, tokenizer, metadata)
    c = build_default_corpus(tmp_path / "c", seed=8, progress=False, spec=SMALL)
    assert (c / "corpus.bin").read_bytes() != (a / "corpus.bin").read_bytes()

    corpus = open_corpus(a)
    meta = json.loads((a / "corpus.json").read_text())
    assert corpus.row_len == 65 and corpus.batch_size == 8
    assert meta["heldout_start"] == 400 and corpus.num_rows >= 440
    assert meta["heldout_rows"] == corpus.num_rows - 400
    assert meta["build"]["seed"] == 7 and meta["build"]["mixture"]["spans_mean"] == SMALL.mixture.spans_mean

    # each row's `domain` is the domain of the document that supplies most of its tokens
    side = pq.read_table(a / "rows.parquet").to_pydict()
    docs = list(generate_documents(max(side["doc_id"]) + 1, seed=7, cfg=SMALL.mixture))
    tok = load_tokenizer(a / "tokenizer.json")
    rows = corpus.rows(0, corpus.num_rows)
    for r in range(0, corpus.num_rows, 7):
        doc = docs[side["doc_id"][r]]
        assert side["domain"][r] == doc.domain
        assert side["copy_spans"][r] == doc.copy_spans
        assert tok.decode(_main_piece(rows[r], tok.eot_id)) in doc.text
    assert Counter(side["domain"]).keys() == set(DOMAINS)


def test_default_corpus_is_reused_rebuilt_with_force_and_guarded(tmp_path):
    out = build_default_corpus(tmp_path, seed=1, progress=False, spec=SMALL)
    stamp = (out / "corpus.bin").stat().st_mtime_ns
    assert build_default_corpus(tmp_path, seed=1, progress=False, spec=SMALL) == out
    assert (out / "corpus.bin").stat().st_mtime_ns == stamp  # untouched
    with pytest.raises(CurateError, match="--force"):
        build_default_corpus(tmp_path, seed=2, progress=False, spec=SMALL)
    build_default_corpus(tmp_path, seed=2, force=True, progress=False, spec=SMALL)
    assert json.loads((out / "corpus.json").read_text())["build"]["seed"] == 2
