"""`curate explain --by COLUMN`: enrichment of sidecar label classes in both tails, with intervals, raw and
size-adjusted, on hand-made corpora and score tables with known counts."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.augment.explain import NO_GRADIENT_NOTE, RESCORE_NOTE, enrichment, explain_scores, expected_share, size_bins
from curate.corpus import CorpusMeta
from curate.errors import CurateError
from curate.labels import label_columns, label_names, read_labels
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


def magnitude_folder(tmp_path: Path, with_norms: bool = True, heads: tuple[str, ...] = ("1.2",)) -> tuple[Path, Path]:
    """3,000 rows of three classes, score = gradient norm x a random direction term: `big` rows have 10x the gradient
    norm and a zero-mean direction (random sign), `builder` rows an ordinary norm and a direction of mean +1, `plain`
    rows an ordinary norm and a zero-mean direction."""
    rng = np.random.default_rng(3)
    n = 3000
    klass = np.array(["big", "builder", "plain"])[rng.permutation(np.arange(n) % 3)]
    norm = rng.uniform(0.8, 1.2, size=n) * np.where(klass == "big", 10.0, 1.0)
    direction = rng.normal(size=n) + (klass == "builder")
    corpus = labelled_corpus(tmp_path / "corpus", np.full(n, 10), {"domain": list(klass)})
    folder = write_scores(tmp_path / "scores", corpus, norm * direction, np.arange(n), batch_size=10, shard_rows=700,
                          heads=heads, grad_norms=norm if with_norms else None)
    return corpus, folder


def test_large_gradient_class_is_flagged_magnitude_and_a_true_builder_is_not(tmp_path: Path) -> None:
    _, folder = magnitude_folder(tmp_path)
    report = explain_scores(folder, top="10%", by="domain")
    assert report.normalised_by == "score / grad_norm" and report.normalised_note is None
    assert report.size_measures == ["tokens", "grad_norm"]
    c = {x.label: x for x in report.classes}
    big, builder, plain = c["big"], c["builder"], c["plain"]
    # raw: the large-gradient class fills both tails
    assert big.top.ci_low > 2.5 and big.bottom.ci_low > 2.5 and big.size_effect
    # normalised: its rows are as ordinary as `plain`'s (both share the bottom tail the builder leaves; neither
    # reaches the top): not in both tails
    assert big.normalised.top.ci_high < 1.0 and not big.normalised.both_tails
    assert abs(big.normalised.bottom.ratio - plain.normalised.bottom.ratio) < 0.3
    assert big.magnitude is True
    # the builder is enriched in the normalised top tail (not in the bottom) and not flagged
    assert builder.normalised.top.ci_low > 1.8 and builder.normalised.bottom.ci_high < 1.0
    assert builder.magnitude is False and not builder.size_effect and plain.magnitude is False
    # the normalised tails are exact: the k highest of score / grad_norm, labelled
    normalised = pq_col(folder, "score") / pq_col(folder, "grad_norm")
    names = np.array(label_names(read_labels(open_corpus(tmp_path / "corpus"), ["domain"])["domain"]), dtype=object)
    for tail, order in (("top", np.argsort(-normalised)), ("bottom", np.argsort(normalised))):
        for label in ("big", "builder", "plain"):
            want = int((names[order[: report.top_k]] == label).sum())
            assert getattr(c[label].normalised, tail).count == want, (tail, label)
    # --head: that head's score over that head's norm
    by_head = explain_scores(folder, top="10%", by="domain", head="1.2")
    assert by_head.normalised_by == "head_1_2 / grad_norm_1_2"
    assert [x.magnitude for x in by_head.classes] == [x.magnitude for x in report.classes]


def pq_col(folder: Path, column: str) -> np.ndarray:
    """One column of a scores folder's shards, in row order."""
    return np.concatenate([pq.read_table(f, columns=[column]).column(column).to_numpy() for f in sorted((folder / "shards").glob("*.parquet"))])


def test_cli_prints_the_normalised_view_and_the_magnitude_flag(tmp_path: Path, monkeypatch, capsys) -> None:
    _, folder = magnitude_folder(tmp_path)
    monkeypatch.setenv("COLUMNS", "400")
    code, out, err = run_cli(["explain", folder, "--by", "domain"], monkeypatch, capsys)
    assert code == 0, err
    assert "normalised ratio (95% CI)" in out and "magnitude" in out and "score / grad_norm" in out
    big = [line for line in out.splitlines() if line.strip("│ ").startswith("big")]
    assert len(big) == 2 and all(" yes " in line for line in big)
    code, out, err = run_cli(["explain", folder, "--by", "domain", "--json"], monkeypatch, capsys)
    got = json.loads(out)
    assert got["normalised_by"] == "score / grad_norm"
    by_label = {c["label"]: c for c in got["classes"]}
    assert by_label["big"]["magnitude"] is True and by_label["builder"]["normalised"]["top"]["ci_low"] > 1.8


def test_folders_without_gradient_norms_read_with_one_note(tmp_path: Path, monkeypatch, capsys) -> None:
    _, folder = magnitude_folder(tmp_path, with_norms=False)
    report = explain_scores(folder, top="10%", by="domain")
    assert (report.normalised_by, report.normalised_note) == (None, RESCORE_NOTE)
    assert all(c.normalised is None and c.magnitude is None for c in report.classes)
    assert report.size_measures == ["tokens"]
    monkeypatch.setenv("COLUMNS", "300")
    code, out, err = run_cli(["explain", folder, "--by", "domain"], monkeypatch, capsys)
    assert code == 0, err
    assert "normalised ratio" not in out and out.count("needs a re-score") == 1
    stat = tmp_path / "stat"
    stat.mkdir()
    _, folder = magnitude_folder(stat, with_norms=False, heads=())  # a statistic method: no head columns
    assert explain_scores(folder, top="10%", by="domain").normalised_note == NO_GRADIENT_NOTE
