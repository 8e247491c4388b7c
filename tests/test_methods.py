"""`curate score --method`: the baselines (gradient-dot, copy-share, loss) are the numbers their definitions give,
written as the same scores folder as MDA (so build-mix and explain take them), and a folder of one method is
never resumed by another.

The exactness checks run in process on a tiny float64 GPT-NeoX; the pipeline checks share one local Ray (2 CPUs).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from curate.atomic import write_json
from curate.attribution.ekfac import IdentityCurvature
from curate.attribution.heads import MODES, HeadGeometry, HeadRef, slice_head_grads
from curate.attribution.influence import HeadInfluenceScorer, probe_gradients
from curate.attribution.probes import build_probes, induction_probe
from curate.attribution.score_table import ScoreTable, top_indices
from curate.attribution.scoring import row_loss, score_corpus
from curate.augment.features import repetition_features
from curate.corpus import open_corpus
from curate.errors import CurateError
from curate.pipelines.score_job import ScoreRequest, resolve_job
from curate.pipelines.copy_share import copy_share
from curate.pipelines.score_run import run_job
from tests.corpus_helpers import run_cli
from tests.score_helpers import build_tiny_corpus, build_tiny_model
from tests.test_influence import V, copy_rows, make_config, make_model, per_row_grads

HEADS = [HeadRef(0, 1), HeadRef(1, 0), HeadRef(1, 1)]


def tiny_corpus(folder: Path, rows: torch.Tensor, batch_size: int = 4):
    folder.mkdir(parents=True)
    np.save(folder / "rows.npy", rows.numpy().astype(np.uint16))
    write_json(folder / "corpus.json", {"data": "rows.npy", "batch_size": batch_size, "vocab_size": V})
    return open_corpus(folder)


def probe_grad_autograd(model, probes: torch.Tensor, head: HeadRef, mode: str) -> torch.Tensor:
    """grad f_probe w.r.t. one head's blocks, flattened in MODES order: autograd on the full weights, then sliced."""
    attn = model.gpt_neox.layers[head.layer].attention
    weights = [attn.query_key_value.weight, attn.dense.weight]
    g_qkv, g_dense = torch.autograd.grad(induction_probe(model, probes), weights)
    blocks = slice_head_grads(HeadGeometry.of(model), g_qkv, g_dense, head.head, mode)
    return torch.cat([blocks[b].reshape(-1) for b in MODES[mode]])


# --------------------------------------------------------------------------- gradient-dot


@pytest.mark.parametrize("mode", ["qk", "qkvo"])
def test_gradient_dot_is_minus_the_row_gradient_dot_the_probe_gradient(tmp_path, mode: str) -> None:
    """score(row, head) = - grad_head L(row) . grad_head f_probe, exact (float64) against per-row autograd."""
    model = make_model(seed=1)
    rows = copy_rows(10, torch.Generator().manual_seed(5), 13)
    corpus = tiny_corpus(tmp_path / "c", rows)
    probes = build_probes(make_config(), n=4, half_len=6, seed=1)
    table = score_corpus(model, corpus, None, "induction", HEADS, mode, batch_rows=3, probes=probes, curvature="identity")
    assert table.heads == HEADS and table.meta["curvature"] == "identity"
    row_grads = per_row_grads(model, rows, rows[:, 1:], HEADS, mode)
    for j, h in enumerate(HEADS):
        expected = -(row_grads[h] @ probe_grad_autograd(model, probes, h, mode)).numpy()
        assert np.abs(expected).max() > 1e-6
        np.testing.assert_allclose(table.head_scores[:, j], expected, rtol=0, atol=1e-10 * max(1.0, np.abs(expected).max()))
    np.testing.assert_array_equal(table.score, table.head_scores.sum(1))


def test_gradient_dot_is_the_ekfac_score_with_the_identity_as_curvature(tmp_path) -> None:
    model = make_model(seed=2)
    rows = copy_rows(8, torch.Generator().manual_seed(9), 13)
    corpus = tiny_corpus(tmp_path / "c", rows)
    probes = build_probes(make_config(), n=4, half_len=6, seed=2)
    pg = probe_gradients(model, lambda m, h: induction_probe(m, probes), HEADS, "qkvo", shared=True)
    identity = IdentityCurvature("qkvo").precondition(pg)
    assert all(torch.equal(identity[h][b], pg[h][b]) for h in HEADS for b in MODES["qkvo"])
    direct = HeadInfluenceScorer(model, None, identity, HEADS, "qkvo", dtype=torch.float64).score_batch(rows)[1]
    table = score_corpus(model, corpus, None, "induction", HEADS, "qkvo", batch_rows=8, probes=probes, curvature="identity")
    np.testing.assert_array_equal(table.head_scores, direct)
    assert np.abs(direct).max() > 0


# --------------------------------------------------------------------------- copy-share and loss


def direct_copy_share(row: np.ndarray, n: int = 4) -> float:
    """Share of the row's n-grams equal to an n-gram starting earlier in the row, counted by hand."""
    grams = [tuple(int(t) for t in row[p : p + n]) for p in range(len(row) - n + 1)]
    seen: set = set()
    repeats = 0
    for g in grams:
        repeats += g in seen
        seen.add(g)
    return repeats / len(grams) if grams else 0.0


def test_copy_share_is_the_share_of_repeated_4grams() -> None:
    gen = torch.Generator().manual_seed(3)
    rows = copy_rows(40, gen, 33).numpy().astype(np.uint16)
    rows[0] = 7  # one token repeated: every 4-gram after the first repeats
    rows[1, :] = np.arange(33) % V  # no 4-gram repeats (33 - 3 = 30 distinct 4-grams < V)
    loss, share = copy_share(None, rows)
    assert share.dtype == np.float64 and np.isnan(loss).all()
    expected = np.array([direct_copy_share(r) for r in rows])
    np.testing.assert_array_equal(share, expected.astype(np.float32).astype(np.float64))
    assert share[0] == np.float32(29 / 30) and share[1] == 0.0 and share[3] > 0  # odd rows carry a copied span
    np.testing.assert_array_equal(share, repetition_features(rows).repeat_share[:, 1])  # orders (2, 4, 8): n = 4
    assert copy_share(None, rows[:, :3])[1].tolist() == [0.0] * 40  # shorter than a 4-gram


def test_loss_is_the_rows_mean_next_token_loss() -> None:
    model = make_model(seed=3)
    rows = copy_rows(6, torch.Generator().manual_seed(4), 13)
    loss, score = row_loss(model, rows.numpy())
    logits = model(input_ids=rows[:, :-1]).logits
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, V), rows[:, 1:].reshape(-1), reduction="none").view(6, -1).mean(1)
    np.testing.assert_array_equal(loss, expected.detach().numpy().astype(np.float32))  # the float32 `loss` column
    np.testing.assert_array_equal(score, loss.astype(np.float64))  # score = that column


# --------------------------------------------------------------------------- the pipeline


WINDOW = "0:8"  # 64 rows
PIPE_HEADS = "1.0,1.2"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("methods")
    return {"base": base, "corpus": build_tiny_corpus(base / "corpus"), "model": build_tiny_model(base / "model")}


def request(tiny: dict, out: Path, method: str, **kw) -> ScoreRequest:
    args = dict(corpus=str(tiny["corpus"]), model=str(tiny["model"]), heads=PIPE_HEADS, window=WINDOW, out=out, workers=2,
                batch_rows=4, shard_rows=16, fit_rows=32, top="10%", progress=False, method=method)
    args.update(kw)
    return ScoreRequest(**args)


def all_scores(out: Path) -> ScoreTable:
    return ScoreTable.concat([ScoreTable.from_parquet(p) for p in sorted((out / "shards").glob("*.parquet"))])


def test_gradient_dot_on_ray_equals_the_in_process_path(ray_address, tiny) -> None:
    out = tiny["base"] / "gradient-dot"
    job = resolve_job(request(tiny, out, "gradient-dot"))
    summary = run_job(job)
    assert summary["method"] == "gradient-dot" and summary["factors"] == "not used by gradient-dot"
    assert not (out / "factors").exists()  # nothing fitted, nothing cached
    table = all_scores(out)
    assert [str(h) for h in table.heads] == ["1.0", "1.2"]
    assert pq.read_schema(out / "shards" / sorted(p.name for p in (out / "shards").iterdir())[0]).names == [
        "row_id", "step", "loss", "head_1_0", "head_1_2", "score", "grad_norm_1_0", "grad_norm_1_2", "grad_norm"]
    inproc = score_corpus(job.model, job.corpus, job.rows, "induction", job.heads, "qkvo", batch_rows=4, probes=job.probes,
                          curvature="identity")
    np.testing.assert_array_equal(inproc.head_scores, table.head_scores)
    np.testing.assert_array_equal(inproc.grad_norms, table.grad_norms)  # the norms do not depend on the curvature
    np.testing.assert_array_equal(inproc.loss, table.loss)
    assert json.loads((out / "summary.json").read_text())["method"] == "gradient-dot"


def test_loss_method_writes_the_loss_as_the_score(ray_address, tiny) -> None:
    out = tiny["base"] / "loss"
    job = resolve_job(request(tiny, out, "loss"))
    summary = run_job(job)
    assert summary["method"] == "loss" and summary["heads"] == ["1.0", "1.2"]  # the circuit's heads, for experiments
    table = all_scores(out)
    assert table.heads == [] and pq.read_schema(out / "shards" / "rows-000000000000-000000000016.parquet").names == [
        "row_id", "step", "loss", "score"]
    rows = job.corpus.rows(0, 64)
    with torch.no_grad():
        logits = job.model(input_ids=torch.from_numpy(rows[:, :-1].astype(np.int64))).logits
    expected = torch.nn.functional.cross_entropy(logits.transpose(1, 2), torch.from_numpy(rows[:, 1:].astype(np.int64)), reduction="none").mean(1)
    np.testing.assert_allclose(table.score, expected.numpy(), rtol=1e-5)
    np.testing.assert_array_equal(table.score, table.loss.astype(np.float64))  # score = loss: higher loss, higher score
    assert summary["top_positive"][0]["score"] == pytest.approx(float(table.score.max()))


def test_copy_share_scores_then_build_mix_and_explain(ray_address, tiny, tmp_path, monkeypatch, capsys) -> None:
    out = tiny["base"] / "copy-share"
    code, _, err = run_cli(["score", "--method", "copy-share", "--corpus", tiny["corpus"], "--model", tiny["model"],
                            "--heads", PIPE_HEADS, "--window", WINDOW, "--out", out, "--workers", "2", "--batch-rows", "4",
                            "--shard-rows", "16", "--ray-address", ray_address, "--quiet", "--json"], monkeypatch, capsys)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "copy-share" and summary["top_k"] == 7
    assert json.loads((out / "command.json").read_text())["options"]["method"] == "copy-share"  # replayable
    table = all_scores(out)
    corpus = open_corpus(tiny["corpus"])
    expected = np.array([direct_copy_share(r) for r in corpus.rows(0, 64)], dtype=np.float32).astype(np.float64)
    np.testing.assert_array_equal(table.score, expected)
    assert np.isnan(table.loss).all() and table.heads == []
    assert summary["top_positive"][0]["loss"] is None

    mix = tmp_path / "mix"
    code, _, err = run_cli(["build-mix", out, "--remove", "10%", "--out", mix], monkeypatch, capsys)
    assert code == 0, err
    plan = json.loads((mix / "plan.json").read_text())
    assert plan["drop"] == sorted(int(r) for r in table.row_id[top_indices(table.score, table.row_id, 7)])

    code, stdout, err = run_cli(["explain", out, "--tail-rows", "10%", "--json"], monkeypatch, capsys)
    assert code == 0, err
    assert json.loads(stdout)
    code, _, err = run_cli(["explain", out, "--head", "1.0"], monkeypatch, capsys)  # no head columns: one error line
    assert code == 2 and err.strip().splitlines() == [f"error: {out}: no scores for head 1.0 (heads scored: none)"]


def test_a_folder_of_one_method_is_not_resumed_by_another(ray_address, tiny) -> None:
    out = tiny["base"] / "copy-share-2"
    run_job(resolve_job(request(tiny, out, "copy-share")))
    for other, changed in (("loss", "method"), ("mda", "factors, method"), ("gradient-dot", "method")):
        with pytest.raises(CurateError, match=f"holds results of a different job \\(changed: {changed}\\)"):
            resolve_job(request(tiny, out, other))
    # the same method resumes (nothing left to score), --force starts over with the other one
    again = run_job(resolve_job(request(tiny, out, "copy-share")))
    assert again["shards_skipped"] == 4 and again["shards_scored"] == 0
    forced = run_job(resolve_job(request(tiny, out, "loss", force=True)))
    assert forced["method"] == "loss" and forced["shards_scored"] == 4


def test_mda_fingerprint_has_no_method_and_each_method_its_own_default_folder(tiny, tmp_path) -> None:
    mda = resolve_job(request(tiny, tmp_path / "a", "mda"))
    assert "method" not in mda.fingerprint and mda.fingerprint["factors"] is not None
    dot = resolve_job(request(tiny, tmp_path / "b", "gradient-dot"))
    assert dot.fingerprint["method"] == "gradient-dot" and dot.fingerprint["factors"] is None
    ws = tmp_path / "ws"
    assert resolve_job(request(tiny, None, "loss", workspace=ws)).out == ws / "default" / "scores" / "induction-loss"
    assert resolve_job(request(tiny, None, "mda", workspace=ws)).out == ws / "default" / "scores" / "induction"
    with pytest.raises(CurateError, match="--method 'tfidf': expected one of mda, gradient-dot, copy-share, loss"):
        resolve_job(request(tiny, tmp_path / "c", "tfidf"))
