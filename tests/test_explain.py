"""`curate explain --by COLUMN`: enrichment of sidecar label classes in both tails, with intervals, raw and
size-adjusted, on hand-made corpora and score tables with known counts."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from curate.augment.explain import enrichment, explain_scores, expected_share, size_bins
from curate.corpus import CorpusMeta
from curate.errors import CurateError
from curate.labels import label_columns
from curate.corpus import open_corpus
from curate.megatron import write_megatron
from curate.parquet_io import write_table_parquet
from corpus_helpers import run_cli
from structure_helpers import write_scores

ROW_LEN = 24
EOT = 0


def labelled_corpus(folder: Path, lengths: np.ndarray, labels: dict[str, list]) -> Path:
    """Rows whose main document is `lengths[i]` tokens (the rest end-of-text), with a sidecar of label columns."""
    n = len(lengths)
    rows = np.full((n, ROW_LEN), EOT, dtype=np.uint16)
    for i, length in enumerate(lengths):
        rows[i, :length] = 5 + i % 7
    folder.mkdir(parents=True)
    write_megatron(folder / "corpus", rows, np.uint16)
    ids = np.arange(n, dtype=np.int64)
    write_table_parquet(folder / "rows.parquet", {"row_id": ids, "step": ids // 10, "doc_id": ids, **labels,
                                                  "weight": np.ones(n)})
    meta = CorpusMeta(data="corpus.idx", batch_size=10, vocab_size=64, sidecar="rows.parquet", eot_id=EOT)
    (folder / "corpus.json").write_text(json.dumps(meta.to_json()))
    return folder


def test_label_columns_skip_bookkeeping_and_measurements(tmp_path: Path) -> None:
    corpus = labelled_corpus(tmp_path / "c", np.full(10, 4), {"domain": ["a"] * 10, "source": list("xyxyxyxyxy"),
                                                              "spans": [[1, 2]] * 10})
    assert label_columns(open_corpus(corpus)) == ["domain", "source"]


def known_counts(tmp_path: Path) -> tuple[Path, Path]:
    """100 rows: domain a (rows 0-39), b (40-79), c (80-99). Top 10 by score: 6 c + 4 a; bottom 10: 5 c + 5 b.
    Every row's main document is 10 tokens (so the size adjustment changes nothing)."""
    domain = ["a"] * 40 + ["b"] * 40 + ["c"] * 20
    source = ["s1" if i % 2 else "s2" for i in range(100)]
    corpus = labelled_corpus(tmp_path / "corpus", np.full(100, 10), {"domain": domain, "source": source})
    scores = np.zeros(100)
    scores[[80, 81, 82, 83, 84, 85, 0, 1, 2, 3]] = 10.0 + np.arange(10)  # the top 10
    scores[[86, 87, 88, 89, 90, 40, 41, 42, 43, 44]] = -10.0 - np.arange(10)  # the bottom 10
    folder = write_scores(tmp_path / "scores", corpus, scores, np.arange(100), batch_size=10, shard_rows=30)
    return corpus, folder


def test_enrichment_both_tails_exact(tmp_path: Path) -> None:
    corpus, folder = known_counts(tmp_path)
    report = explain_scores(folder, top="10%", by="domain")
    assert (report.by, report.top_k, report.base_rows, report.base_sampled) == ("domain", 10, 100, False)
    assert report.size_measures == ["tokens"]
    c = {x.label: x for x in report.classes}
    assert [x.label for x in report.classes] == ["a", "b", "c"]  # most common first, ties by name
    assert (c["a"].base_count, c["b"].base_count, c["c"].base_count) == (40, 40, 20)
    # Wilson 95% intervals: 6/10 -> [0.312674, 0.831820]; 5/10 -> [0.236593, 0.763407]; 4/10 -> [0.168180, 0.687326];
    # 0/10 -> [0, 0.277533]
    top_c, bottom_c = c["c"].top, c["c"].bottom
    assert (top_c.count, top_c.share, top_c.ratio) == (6, 0.6, pytest.approx(3.0))
    assert (top_c.ci_low, top_c.ci_high) == (pytest.approx(0.312674 / 0.2, abs=1e-5), pytest.approx(0.831820 / 0.2, abs=1e-5))
    assert (bottom_c.count, bottom_c.ratio) == (5, pytest.approx(2.5))
    assert (bottom_c.ci_low, bottom_c.ci_high) == (pytest.approx(0.236593 / 0.2, abs=1e-5), pytest.approx(0.763407 / 0.2, abs=1e-5))
    assert (c["a"].top.count, c["a"].top.ratio) == (4, pytest.approx(1.0))
    assert c["a"].top.ci_low == pytest.approx(0.168180 / 0.4, abs=1e-5)
    assert (c["a"].bottom.count, c["a"].bottom.ratio, c["a"].bottom.ci_low) == (0, 0.0, 0.0)
    assert c["a"].bottom.ci_high == pytest.approx(0.277533 / 0.4, abs=1e-5)
    assert (c["b"].top.count, c["b"].bottom.count, c["b"].bottom.ratio) == (0, 5, pytest.approx(1.25))
    # c is enriched in both tails (lower bounds 1.56 and 1.18): flagged; b only in one, a in none
    assert [x.size_effect for x in report.classes] == [False, False, True]
    # all rows are the same size: the size-matched ratio is the raw ratio
    for x in report.classes:
        for tail in (x.top, x.bottom):
            (adj,) = tail.adjusted
            assert adj.measure == "tokens" and adj.expected_share == pytest.approx(x.base_share)
            assert adj.ratio == pytest.approx(tail.ratio)
    assert report.top_row_ids[:3] == [3, 2, 1] and report.bottom_row_ids[:3] == [44, 43, 42]


def test_pure_length_effect_is_undone_by_the_size_adjustment(tmp_path: Path) -> None:
    """Scores = row length: the long class fills the top tail and the short class the bottom tail; matched on
    length, both come out near 1."""
    rng = np.random.default_rng(5)
    n = 2000
    klass = np.array(["long", "mid", "short"])[rng.integers(0, 3, size=n)]
    centre = {"long": 16, "mid": 12, "short": 8}
    lengths = np.array([int(np.clip(rng.normal(centre[k], 3.0), 1, ROW_LEN)) for k in klass])
    corpus = labelled_corpus(tmp_path / "corpus", lengths, {"domain": list(klass)})
    folder = write_scores(tmp_path / "scores", corpus, lengths.astype(np.float64), np.arange(n), batch_size=10, shard_rows=500)
    report = explain_scores(folder, top="10%", by="domain")
    c = {x.label: x for x in report.classes}
    assert c["long"].top.ci_low > 1.8 and c["short"].bottom.ci_low > 1.8  # raw: strongly enriched
    assert c["long"].bottom.ratio < 0.3 and c["short"].top.ratio < 0.1
    for label, tail in (("long", "top"), ("short", "bottom")):
        (adj,) = getattr(c[label], tail).adjusted
        assert adj.measure == "tokens" and 0.85 < adj.ratio < 1.15, (label, tail, adj)
    for label in ("long", "mid", "short"):  # matched on length, no class is enriched or depleted beyond chance
        for tail in ("top", "bottom"):
            (adj,) = getattr(c[label], tail).adjusted
            assert adj.ci_low < 1.0 < adj.ci_high, (label, tail, adj)
    assert not any(x.size_effect for x in report.classes)


def test_expected_share_by_bins() -> None:
    # base: sizes 1..10, class x on the sizes 6..10; two bins split at 5.5
    base_labels = ["y"] * 5 + ["x"] * 5
    sizes = np.arange(1, 11)
    edges = size_bins(sizes, bins=2)
    assert edges.tolist() == [5.5]
    # tail rows of size 9, 10 and 2: expected share (1 + 1 + 0) / 3
    assert expected_share("x", base_labels, sizes, np.array([9, 10, 2]), edges) == pytest.approx(2 / 3)
    rep = enrichment({"top": ["x", "x"], "bottom": ["y", "y"]}, base_labels, None,
                     {"top": {"tokens": np.array([9, 10])}, "bottom": {"tokens": np.array([1, 2])}}, {"tokens": sizes})
    x = {c.label: c for c in rep}["x"]
    assert x.top.ratio == pytest.approx(2.0)  # raw: 100% vs. 50%


def test_cli_by_column_and_errors(tmp_path: Path, monkeypatch, capsys) -> None:
    corpus, folder = known_counts(tmp_path)
    monkeypatch.setenv("COLUMNS", "300")
    code, out, err = run_cli(["explain", folder, "--by", "source", "--tail-rows", "10"], monkeypatch, capsys)
    assert code == 0, err
    assert "sidecar column 'source'" in out and "the 10 highest (top) and 10 lowest (bottom) rows" in out
    assert "tokens-matched" in out and "size: row length only" in out
    code, out, err = run_cli(["explain", folder, "--by", "domain", "--json"], monkeypatch, capsys)
    assert code == 0, err
    got = json.loads(out)
    assert got == json.loads(json.dumps(explain_scores(folder, by="domain").to_json()))
    assert [c["size_effect"] for c in got["classes"]] == [False, False, True]
    code, out, err = run_cli(["explain", folder, "--by", "topic"], monkeypatch, capsys)
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        f"error: {corpus}: no label column 'topic' in the row sidecar (label columns: domain, source)"
    ]
    with pytest.raises(CurateError, match="label columns: domain, source"):
        explain_scores(folder, by="weight")  # a float column is a measurement, not a label
