"""Repetition features, structure vectors, the FAISS neighbour index, `curate explain/index/neighbors`."""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import faiss
import numpy as np
import pytest

from curate.amounts import parse_amount
from curate.attribution.scores_folder import open_scores
from curate.augment.explain import explain_scores, tail_shares, wilson_interval
from curate.augment.features import (
    DISTANCE_BINS,
    StructureSpec,
    hashed_ngram_profile,
    previous_occurrence,
    repetition_features,
    structure_vectors,
)
from curate.augment.index import IndexParams, build_index, load_index, recall_at_k
from curate.augment.tags import LABELS, tag_rows
from curate.corpus import open_corpus
from curate.errors import CurateError
from curate.minipile import generate_documents
from curate.outputs import INDEX, folder_kind
from curate.tokenize import load_tokenizer, main_document, pack_rows
from corpus_helpers import run_cli
from structure_helpers import BALANCED, minipile_rows, write_corpus, write_scores


# -- repetition features ----------------------------------------------------------------------------

def test_previous_occurrence_matches_brute_force() -> None:
    rows = np.random.default_rng(1).integers(0, 5, size=(40, 37))
    for n in (1, 2, 3, 5):
        dist = previous_occurrence(rows, n)
        assert dist.shape == (40, 37 - n + 1)
        for i in range(40):
            grams = [tuple(rows[i, j : j + n]) for j in range(37 - n + 1)]
            for j, g in enumerate(grams):
                earlier = [jj for jj in range(j) if grams[jj] == g]
                assert dist[i, j] == (j - earlier[-1] if earlier else 0)


def test_repetition_features_on_hand_made_rows() -> None:
    rows = np.array([
        [1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 9, 8],  # "1 2 3 4 5" copied once at distance 5
        [7] * 12,  # one token repeated
        list(range(20, 32)),  # no repeats
        [1, 2, 3, 4, 9, 9, 9, 1, 2, 3, 4, 6],  # "1 2 3 4" at distance 7, plus "9 9" (2-gram)
    ])
    f = repetition_features(rows, orders=(2, 4, 8), span_order=4)
    # 2-grams: row 0 has 11, the 4 starting at 5..8 repeat; row 3: (9,9) at 5 and (1,2),(2,3),(3,4) at 7..9
    np.testing.assert_allclose(f.repeat_share[:, 0], [4 / 11, 10 / 11, 0, 4 / 11], rtol=1e-6)
    np.testing.assert_allclose(f.repeat_share[:, 1], [2 / 9, 8 / 9, 0, 1 / 9], rtol=1e-6)
    np.testing.assert_allclose(f.repeat_share[:, 2], [0, 4 / 5, 0, 0], rtol=1e-6)
    assert f.spans.tolist() == [1, 1, 0, 1]
    assert f.distinct_spans.tolist() == [1, 1, 0, 1]
    assert f.longest.tolist() == [5, 11, 0, 4]
    # a span copied twice: two spans (each copies the one before), one distinct content
    three = repetition_features(np.array([[1, 2, 3, 4, 9, 1, 2, 3, 4, 8, 1, 2, 3, 4, 5, 7, 6, 5, 7, 6]]))
    assert three.spans.tolist() == [2] and three.distinct_spans.tolist() == [1] and three.longest.tolist() == [4]
    hist = f.distance_hist
    assert hist.shape == (4, DISTANCE_BINS)
    assert hist[0, 2] == 1.0 and hist[0].sum() == 1.0  # distance 5 -> bin [4, 8)
    assert hist[1, 0] == 1.0  # distance 1 -> bin [1, 2)
    assert hist[2].sum() == 0.0
    assert hist[3, 2] == 1.0  # distance 7 -> bin [4, 8)


def test_long_distances_fall_in_the_last_bins() -> None:
    rng = np.random.default_rng(0)
    span = rng.integers(1000, 2000, size=30)
    row = np.concatenate([span, rng.integers(3000, 60000, size=3000), span])[None, :]
    f = repetition_features(row)
    assert f.longest[0] == 30 and f.spans[0] == 1
    assert f.distance_hist[0, 11] == 1.0  # distance 3030 >= 2048


def test_structure_vectors_are_unit_norm_and_seeded() -> None:
    rows = np.random.default_rng(2).integers(0, 300, size=(64, 65))
    spec = StructureSpec()
    v = structure_vectors(rows, spec)
    assert v.dtype == np.float32 and v.shape == (64, spec.dim)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)
    assert np.array_equal(v, structure_vectors(rows, spec))
    other = hashed_ngram_profile(rows, seed=1)
    assert not np.allclose(other, hashed_ngram_profile(rows, seed=0))
    assert StructureSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec


def test_hidden_state_vectors_are_mean_pooled_and_normalised() -> None:
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from curate.augment.features import combine_vectors, hidden_state_vectors

    torch.manual_seed(0)
    cfg = GPTNeoXConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64)
    model = GPTNeoXForCausalLM(cfg)
    rows = np.random.default_rng(0).integers(0, 64, size=(6, 17))
    v = hidden_state_vectors(model, rows, batch_rows=4)
    assert v.shape == (6, 32) and v.dtype == np.float32
    with torch.no_grad():
        h = model(input_ids=torch.as_tensor(rows), output_hidden_states=True).hidden_states[-1].mean(dim=1).numpy()
    np.testing.assert_allclose(v, h / np.linalg.norm(h, axis=1, keepdims=True), rtol=1e-4, atol=1e-5)
    both = combine_vectors(structure_vectors(rows), v, hidden_weight=0.25)
    assert both.shape == (6, StructureSpec().dim + 32)
    np.testing.assert_allclose(np.linalg.norm(both[:, -32:], axis=1), 0.5, rtol=1e-5)  # sqrt(0.25)
    with pytest.raises(CurateError, match="vocabulary"):
        hidden_state_vectors(model, rows + 64)


# -- a labelled corpus and its index ----------------------------------------------------------------

@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    data = minipile_rows(n_docs=2600, seed=5, row_len=65)
    return write_corpus(tmp_path_factory.mktemp("struct") / "corpus", data)


@pytest.fixture(scope="module")
def labels(corpus_dir: Path) -> list[str]:
    return json.loads((corpus_dir / "labels.json").read_text())


@pytest.fixture(scope="module")
def ivf(corpus_dir: Path, tmp_path_factory):
    out = tmp_path_factory.mktemp("ivf") / "index"
    return build_index(corpus_dir, out, params=IndexParams(kind="ivf", seed=3))


def test_ivf_recall_at_defaults(ivf, corpus_dir: Path) -> None:
    """IVF at default settings reaches recall@10 >= 0.9 (nprobe tuned at build) and says so in index.json."""
    info = json.loads((ivf.folder / "index.json").read_text())
    n = open_corpus(corpus_dir).num_rows
    assert info["kind"] == "ivf" and info["num_rows"] == n > 5000
    assert info["nlist"] == min(round(4 * math.sqrt(n)), n // 39)
    assert info["recall"] >= 0.9 and info["recall_k"] == 10
    assert info["recall_curve"][str(info["nprobe"])] == round(info["recall"], 4)
    assert info["nprobe"] < info["nlist"]  # it is approximate, not an exhaustive scan
    # independently: fresh queries, against an exact index over the same vectors
    corpus = open_corpus(corpus_dir)
    vectors = ivf.vectors(corpus.rows(0, n))
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    queries = ivf.vectors(corpus.take(np.random.default_rng(99).choice(n, 150, replace=False)))
    assert recall_at_k(ivf.index, exact, queries, k=10) >= 0.85


def test_index_reload_gives_identical_results(ivf, corpus_dir: Path, tmp_path: Path) -> None:
    corpus = open_corpus(corpus_dir)
    queries = ivf.vectors(corpus.rows(100, 140))
    loaded = load_index(ivf.folder)
    assert loaded.index.nprobe == ivf.index.nprobe
    s1, i1 = ivf.search(queries, 10)
    s2, i2 = loaded.search(queries, 10)
    assert np.array_equal(i1, i2) and np.array_equal(s1, s2)
    again = build_index(corpus_dir, tmp_path / "again", params=IndexParams(kind="ivf", seed=3))
    digest = lambda p: hashlib.sha256((p / "index.faiss").read_bytes()).hexdigest()  # noqa: E731
    assert digest(again.folder) == digest(ivf.folder)


def test_flat_index_is_exact_and_latex_neighbours_are_latex(corpus_dir: Path, labels: list[str], tmp_path: Path) -> None:
    idx = build_index(corpus_dir, tmp_path / "flat")
    assert idx.info["kind"] == "flat" and idx.info["recall"] == 1.0
    corpus = open_corpus(corpus_dir)
    lab = np.array(labels)
    latex = np.flatnonzero(lab == "latex")[:60]
    _, nb = idx.neighbors_of_rows(corpus.take(latex), k=10, exclude_ids=latex)
    assert all(latex[q] not in nb[q] for q in range(len(latex)))
    share = float(np.mean(lab[nb] == "latex"))
    base = float(np.mean(lab == "latex"))
    assert share >= 0.7 and share > 4 * base, (share, base)
    # a control: neighbours of prose rows are not LaTeX
    prose = np.flatnonzero(lab == "prose")[:60]
    _, nbp = idx.neighbors_of_rows(corpus.take(prose), k=10, exclude_ids=prose)
    assert float(np.mean(lab[nbp] == "latex")) < 0.1


def test_queries_from_another_corpus(corpus_dir: Path, labels: list[str], tmp_path: Path) -> None:
    """Rows outside the indexed corpus (another seed of the generator, same tokenizer) find structural kin."""
    idx = build_index(corpus_dir, tmp_path / "flat")
    tok = load_tokenizer(corpus_dir / "tokenizer.json")
    docs = list(generate_documents(400, seed=77, cfg=BALANCED))
    rows, owners = pack_rows(tok.encode_batch([d.text for d in docs]), 65, tok.eot_id)
    theirs = [docs[i].domain for i in main_document(owners)]
    pick = [i for i, label in enumerate(theirs) if label in ("xml", "json")][:40]
    _, nb = idx.neighbors_of_rows(rows[pick], k=5)
    lab = np.array(labels)
    agree = np.mean([lab[j] == theirs[q] for qi, q in enumerate(pick) for j in nb[qi]])
    assert agree >= 0.7


def test_bad_index_inputs(tmp_path: Path, corpus_dir: Path) -> None:
    with pytest.raises(CurateError, match="no structure index"):
        load_index(tmp_path)
    with pytest.raises(CurateError, match="index kind"):
        IndexParams(kind="hnsw-ish")
    with pytest.raises(CurateError, match="nlist"):
        build_index(corpus_dir, tmp_path / "x", params=IndexParams(kind="ivf", nlist=10**7))
    assert not (tmp_path / "x").exists()


# -- explain on a synthetic scores folder ------------------------------------------------------------

@pytest.fixture(scope="module")
def scores_dir(corpus_dir: Path, labels: list[str], tmp_path_factory) -> Path:
    """Scores over a window of rows [320, 3520): repeat and latex rows score high, the rest noise."""
    rng = np.random.default_rng(8)
    row_ids = np.arange(320, 3520)
    boost = np.array([2.5 if labels[i] in ("repeat", "latex") else 0.0 for i in row_ids])
    scores = rng.normal(0.0, 1.0, size=len(row_ids)) + boost
    return write_scores(tmp_path_factory.mktemp("scores") / "induction", corpus_dir, scores, row_ids, shard_rows=700)


def _hand_enrichment(scores_dir: Path, corpus_dir: Path, k: int):
    import pyarrow.parquet as pq

    table = pq.read_table(scores_dir / "shards")
    ids = table.column("row_id").to_numpy()
    score = table.column("score").to_numpy()
    order = np.lexsort((ids, -score))
    top_ids = ids[order[:k]]
    corpus = open_corpus(corpus_dir)
    tok = load_tokenizer(corpus_dir / "tokenizer.json")
    top_tags = tag_rows(corpus.take(top_ids), tok)
    base_tags = tag_rows(corpus.take(np.sort(ids)), tok)
    return ids, score, top_ids, top_tags, base_tags


def test_explain_equals_hand_computation(scores_dir: Path, corpus_dir: Path) -> None:
    report = explain_scores(scores_dir, top="10%")
    n = 3200
    k = 320
    assert report.num_rows == n and report.top_k == k and report.base_rows == n and not report.base_sampled
    ids, score, top_ids, top_tags, base_tags = _hand_enrichment(scores_dir, corpus_dir, k)
    assert report.top_row_ids == top_ids[:20].tolist()
    by_label = {c.label: c for c in report.classes}
    assert set(by_label) == set(LABELS)
    z = 1.959963984540054
    for label in LABELS:
        tc = top_tags.count(label)
        bc = base_tags.count(label)
        c = by_label[label]
        assert (c.top.count, c.base_count) == (tc, bc)
        assert c.top.share == pytest.approx(tc / k) and c.base_share == pytest.approx(bc / n)
        p = tc / k
        centre = (p + z * z / (2 * k)) / (1 + z * z / k)
        half = z * math.sqrt(p * (1 - p) / k + z * z / (4 * k * k)) / (1 + z * z / k)
        if bc:
            assert c.top.ratio == pytest.approx((tc / k) / (bc / n))
            assert c.top.ci_low == pytest.approx(max(0.0, centre - half) / (bc / n))
            assert c.top.ci_high == pytest.approx(min(1.0, centre + half) / (bc / n))
    # the boosted classes are enriched, a control class is depleted
    assert by_label["repeat"].top.ci_low > 1.5 and by_label["latex"].top.ci_low > 1.5
    assert by_label["json"].top.ratio < 0.5
    # the boosted classes are depleted in the bottom tail: no size effect flagged
    assert by_label["repeat"].bottom.ratio < 1.0 and not any(c.size_effect for c in report.classes)
    # tail weight: positive influence carried by the top 1% and 10%
    pos = np.clip(score, 0, None)
    srt = np.sort(score)[::-1]
    assert report.tail_share["top"]["top_1%"] == pytest.approx(np.clip(srt[:32], 0, None).sum() / pos.sum())
    assert report.tail_share["top"]["top_10%"] == pytest.approx(np.clip(srt[:320], 0, None).sum() / pos.sum())


def test_explain_bottom_tail_head_column_and_sampled_base(scores_dir: Path) -> None:
    folder = open_scores(scores_dir)
    best = folder.top_rows(5, "score", "bottom")
    assert np.all(np.diff(best.values) >= 0)  # lowest first
    shares = tail_shares(folder, "score", "bottom")
    assert 0 < shares["top_1%"] < shares["top_10%"] <= 1
    report = explain_scores(scores_dir, top="50", head="1.2", base_sample=1000, seed=4)
    assert report.column == "head_1_2" and report.top_k == 50
    assert report.base_sampled and report.base_rows == 1000
    assert sum(c.base_count for c in report.classes) == 1000


def test_wilson_and_parse_top() -> None:
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson_interval(5, 10)
    assert (lo, hi) == (pytest.approx(0.2366, abs=1e-4), pytest.approx(0.7634, abs=1e-4))
    assert parse_amount("10%", 3200) == 320 and parse_amount("0.01%", 3200) == 1 and parse_amount("7", 10) == 7
    assert parse_amount("33%", 10) == 4
    for bad in ("0", "-3", "0%", "101%", "abc", "11", "nan%", ""):
        with pytest.raises(CurateError, match="top"):
            parse_amount(bad, 10, "top")


# -- the commands ------------------------------------------------------------------------------------

def one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]


def test_cli_explain_json_matches_function(scores_dir: Path, monkeypatch, capsys) -> None:
    args = ["--base-sample", "800", "--seed", "2"]
    code, out, err = run_cli(["explain", scores_dir, "--tail-rows", "5%", "--json", *args], monkeypatch, capsys)
    assert code == 0, err
    got = json.loads(out)
    want = explain_scores(scores_dir, top="5%", base_sample=800, seed=2).to_json()
    assert got == json.loads(json.dumps(want))
    monkeypatch.setenv("COLUMNS", "250")  # rich wraps to the terminal width
    code, out, err = run_cli(["explain", scores_dir, "--tail-rows", "5%", *args], monkeypatch, capsys)
    assert code == 0, err
    assert "the 160 highest (top) and 160 lowest (bottom) rows by score of 3,200" in out and "a seeded sample of 800" in out
    assert "10% highest rows carry" in out and "10% lowest rows carry" in out
    c = {c["label"]: c for c in want["classes"]}["repeat"]
    repeat_line = next(line for line in out.splitlines() if "│ repeat" in line)
    assert f"{c['top']['count']:,}" in repeat_line and f"{c['top']['ratio']:.2f}" in repeat_line
    assert "size: row length only" in out
    # --tail bottom: the bottom tail's table first, each table titled by its own tail
    code, out, err = run_cli(["explain", scores_dir, "--tail-rows", "5%", "--tail", "bottom", *args], monkeypatch, capsys)
    assert code == 0, err
    titles = [line.strip() for line in out.splitlines() if line.strip() in ("top tail", "bottom tail")]
    assert titles == ["bottom tail", "top tail"]
    # an 80-column terminal folds cells but keeps every class and every column
    monkeypatch.setenv("COLUMNS", "80")
    code, out, err = run_cli(["explain", scores_dir, "--tail-rows", "5%", *args], monkeypatch, capsys)
    assert code == 0, err
    assert max(len(line) for line in out.splitlines()) <= 80 and "…" not in out
    for label in {c["label"] for c in want["classes"]}:
        assert sum(f"│ {label}" in line for line in out.splitlines()) >= 2, label  # in both tails' tables


def test_cli_index_and_neighbors(scores_dir: Path, corpus_dir: Path, labels: list[str], monkeypatch, capsys) -> None:
    code, out, err = run_cli(["index", scores_dir], monkeypatch, capsys)
    assert code == 0, err
    assert "recall@10: 1.000" in out and (scores_dir / "index" / "index.faiss").is_file()
    latex_row = next(i for i, l in enumerate(labels) if l == "latex" and i > 4000)  # outside the scored window
    code, out, err = run_cli(["neighbors", latex_row, "--scores", scores_dir, "--k", "6", "--json"], monkeypatch, capsys)
    assert code == 0, err
    res = json.loads(out)
    (q,) = res["queries"]
    assert q["row_id"] == latex_row and q["score"] is None and q["tag"] == "latex"
    assert len(q["neighbors"]) == 6 and latex_row not in [nb["row_id"] for nb in q["neighbors"]]
    assert sum(nb["tag"] == "latex" for nb in q["neighbors"]) >= 4
    # over several LaTeX queries, most of the nearest three neighbours are LaTeX rows by the generator's label
    # (measured 9/12; LaTeX is 10% of the rows)
    queries = [i for i, l in enumerate(labels) if l == "latex" and i > 4000][:4]
    nearest = []
    for row in queries:
        code, out, err = run_cli(["neighbors", row, "--scores", scores_dir, "--k", "3", "--json"], monkeypatch, capsys)
        assert code == 0, err
        nearest += [labels[nb["row_id"]] for nb in json.loads(out)["queries"][0]["neighbors"]]
    assert len(nearest) == 12 and nearest.count("latex") >= 9, " ".join(nearest)
    code, out, err = run_cli(["neighbors", "--query-rows", "3", "--scores", scores_dir, "--json"], monkeypatch, capsys)
    assert code == 0, err
    res = json.loads(out)
    best = open_scores(scores_dir).top_rows(3)
    assert [q["row_id"] for q in res["queries"]] == best.row_ids.tolist()
    assert all(len(q["neighbors"]) == 10 for q in res["queries"])
    code, out, err = run_cli(["neighbors", "--query-rows", "2", "--scores", scores_dir, "--k", "2"], monkeypatch, capsys)
    assert code == 0, err
    assert out.count("similarity") == 2


def test_cli_neighbors_in_another_corpus(scores_dir: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """`curate index SCORES --corpus OTHER --out DIR`, then neighbours of scored rows found in OTHER."""
    other = write_corpus(tmp_path / "other", minipile_rows(n_docs=300, seed=9, row_len=65))
    code, out, err = run_cli(["index", scores_dir, "--corpus", other, "--out", tmp_path / "idx"], monkeypatch, capsys)
    assert code == 0, err
    saved = json.loads((tmp_path / "idx" / "command.json").read_text())  # the resolved options, for `curate replay`
    folder = tmp_path / "idx"  # paths are stored relative to the folder (`paths` names them)
    assert saved["command"] == "index" and {"corpus", "out"} <= set(saved["paths"])
    assert (folder / saved["options"]["corpus"]).resolve() == other.resolve() and saved["options"]["out"] == "."
    info = json.loads((tmp_path / "idx" / "index.json").read_text())
    code, out, err = run_cli(["replay", tmp_path / "idx"], monkeypatch, capsys)  # the same index again, in place
    assert code == 0, err
    again = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert [again[k] for k in ("kind", "num_rows", "dim", "recall")] == [info[k] for k in ("kind", "num_rows", "dim", "recall")]
    (tmp_path / "only-config").mkdir()
    (tmp_path / "only-config" / "command.json").write_text(json.dumps(saved))
    assert folder_kind(tmp_path / "only-config") == INDEX  # a folder `curate index` began is an index folder
    code, out, err = run_cli(["neighbors", "400", "--scores", scores_dir, "--index", tmp_path / "idx", "--k", "4", "--json"],
                             monkeypatch, capsys)
    assert code == 0, err
    res = json.loads(out)
    assert res["same_corpus"] is False and res["same_tokenizer"] is False
    assert res["index_corpus"].startswith(str(other))
    n_other = open_corpus(other).num_rows
    assert all(0 <= nb["row_id"] < n_other for nb in res["queries"][0]["neighbors"])


def test_cli_bad_inputs(scores_dir: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    cases = [
        (["explain", tmp_path / "missing"], "scores folder not found"),
        (["explain", tmp_path], "no summary.json"),
        (["explain", scores_dir, "--tail-rows", "abc"], "--tail-rows 'abc'"),
        (["explain", scores_dir, "--tail-rows", "0%"], "--tail-rows '0%'"),
        (["explain", scores_dir, "--by", "domain"], "no label column 'domain' in the row sidecar (label columns: none"),
        (["explain", scores_dir, "--tail-rows", "999999"], "more rows than"),
        (["explain", scores_dir, "--head", "9.9"], "no scores for head 9.9"),
        (["explain", scores_dir, "--tail", "middle"], "tail 'middle'"),
        (["index", tmp_path / "missing"], "scores folder not found"),
        (["index", scores_dir, "--kind", "lsh"], "index kind"),
        (["neighbors", "--scores", scores_dir], "either ROW_ID or --query-rows"),
        (["neighbors", "3", "--query-rows", "2", "--scores", scores_dir], "either ROW_ID or --query-rows"),
        (["neighbors", "3", "--scores", scores_dir, "--index", tmp_path], "no structure index"),
        (["neighbors", "99999999", "--scores", scores_dir], "outside the scored corpus"),
        (["neighbors", "--query-rows", "x", "--scores", scores_dir], "--query-rows 'x'"),
        (["neighbors", "3", "--scores", scores_dir, "--k", "0"], "k 0"),
    ]
    (tmp_path / "junk.txt").write_text("x")
    for args, needle in cases:
        code, out, err = run_cli(args, monkeypatch, capsys)
        line = one_error_line(err)
        assert code == 2 and needle in line, (args, line)
