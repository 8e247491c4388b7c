"""`curate score --checkpoints ... --aggregate sum|segment` (`pipelines.score_trajectory`): the choice of checkpoints,
the per-row aggregation, and the pipeline against scoring each checkpoint on its own (exact to float tolerance),
resume per checkpoint, and a change of aggregation that rescoring nothing.

The pipeline checks run on a fake training run whose checkpoints are three different tiny GPT-NeoX models, on one
local Ray (2 CPUs)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from curate.attribution.heads import HeadRef
from curate.attribution.score_table import ScoreTable
from curate.attribution.scoring import score_corpus
from curate.errors import CurateError
from curate.pipelines.score_job import ScoreRequest, resolve_job
from curate.pipelines.score_request import parse_checkpoints
from curate.pipelines.score_run import run_job
from curate.pipelines.score_trajectory import aggregate_tables, auto_checkpoints, segment_index
from tests.corpus_helpers import run_cli
from tests.score_helpers import build_tiny_corpus, build_tiny_model

STEPS = [2, 4, 6]
HEADS = "1.0,1.2"


# --------------------------------------------------------------------------- the rules


def test_auto_checkpoints_spread_over_the_window_and_end_at_formation() -> None:
    saved = sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, 512} | set(range(0, 2100, 100)))  # log-spaced, then every 100
    # targets 425, 850, 1275, 1700 -> the nearest checkpoints (850: 800 and 900 tie, the later wins)
    assert auto_checkpoints(saved, 0, 1700, 1700) == [400, 900, 1300, 1700]
    assert auto_checkpoints([0, 100, 200, 300], 0, 300, 300) == [100, 200, 300]
    assert auto_checkpoints([0, 100, 200, 300, 400], 0, 200, 400) == [100, 200, 400]  # formation after the window end
    assert auto_checkpoints(list(range(0, 2100, 100)), 500, 900, None, cap=2) == [700, 900]
    with pytest.raises(CurateError, match="no saved checkpoint"):
        auto_checkpoints([0, 1000], 0, 500, None)


def test_segment_takes_the_first_checkpoint_after_the_consuming_step() -> None:
    # checkpoint stepK = weights after K updates: the row of step s is in checkpoints c >= s + 1
    steps = np.array([0, 1, 2, 3, 5, 6, 9])
    assert segment_index(steps, [2, 4, 6]).tolist() == [0, 0, 1, 1, 2, 2, 2]  # step >= 6: the last checkpoint


def test_parse_checkpoints_and_cheap_checks() -> None:
    assert parse_checkpoints("auto") == "auto" and parse_checkpoints("step1000, step500,500") == [500, 1000]
    for bad in ("step", "1k", ""):
        with pytest.raises(CurateError):
            parse_checkpoints(bad)
    with pytest.raises(CurateError, match="--aggregate 'mean': expected one of sum, segment"):
        ScoreRequest(aggregate="mean").validate()
    with pytest.raises(CurateError, match="--checkpoints 'x': expected auto"):
        ScoreRequest(checkpoints="x").validate()
    with pytest.raises(CurateError, match="--checkpoints: copy-share does not run the model"):
        ScoreRequest(checkpoints="auto", method="copy-share").validate()


def _table(values: np.ndarray, steps: list[int], loss: float) -> ScoreTable:
    n = len(steps)
    return ScoreTable(np.arange(n), np.asarray(steps), np.full(n, loss), values, [HeadRef(1, 0), HeadRef(1, 2)], {"x": 1})


def test_aggregate_sum_and_segment_by_hand() -> None:
    steps = [0, 3, 5]
    a = _table(np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]), steps, 1.0)
    b = _table(np.array([[10.0, 20.0], [30.0, 40.0], [50.0, 60.0]]), steps, 2.0)
    total = aggregate_tables([a, b], [2, 4], "sum")
    assert total.head_scores.tolist() == [[11, 22], [33, 44], [55, 66]] and total.score.tolist() == [33, 77, 121]
    assert total.loss.tolist() == [2.0, 2.0, 2.0] and total.meta["aggregate"] == "sum" and total.meta["checkpoints"] == [2, 4]
    seg = aggregate_tables([a, b], [2, 4], "segment")  # step 0 -> step2, step 3 -> step4, step 5 -> step4 (the last)
    assert seg.head_scores.tolist() == [[1, 2], [30, 40], [50, 60]] and seg.loss.tolist() == [1.0, 2.0, 2.0]
    no_heads = [ScoreTable(np.arange(3), np.asarray(steps), np.zeros(3), np.zeros((3, 0)), [], {}, np.array(v, dtype=float))
                for v in ([1, 2, 3], [4, 5, 6])]
    assert aggregate_tables(no_heads, [2, 4], "segment").score.tolist() == [1, 5, 6]
    with pytest.raises(CurateError, match="different rows"):
        aggregate_tables([a, _table(a.head_scores, [0, 3, 4], 1.0)], [2, 4], "sum")


def test_aggregate_gradient_norms_by_hand() -> None:
    """sum: the root of the summed squares over the checkpoints; segment: the chosen checkpoint's; a table without
    norms (written before they were recorded) leaves the combination without them."""
    steps = [0, 3, 5]
    a, b = _table(np.ones((3, 2)), steps, 1.0), _table(np.ones((3, 2)), steps, 2.0)
    a.grad_norms = np.array([[3.0, 1.0], [0.0, 2.0], [1.0, 1.0]])
    b.grad_norms = np.array([[4.0, 0.0], [5.0, 0.0], [2.0, 3.0]])
    total = aggregate_tables([a, b], [2, 4], "sum")
    np.testing.assert_allclose(total.grad_norms, [[5.0, 1.0], [5.0, 2.0], [np.sqrt(5), np.sqrt(10)]])
    np.testing.assert_allclose(total.grad_norm, [np.sqrt(26), np.sqrt(29), np.sqrt(15)])
    seg = aggregate_tables([a, b], [2, 4], "segment")
    assert seg.grad_norms.tolist() == [[3.0, 1.0], [5.0, 0.0], [2.0, 3.0]]
    assert aggregate_tables([a, _table(np.ones((3, 2)), steps, 2.0)], [2, 4], "sum").grad_norms is None


# --------------------------------------------------------------------------- the pipeline


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    """A finished training run folder: checkpoints step2/4/6 = three different tiny models; the head formed at 5."""
    base = tmp_path_factory.mktemp("trajectory")
    corpus = build_tiny_corpus(base / "corpus")
    run_dir = base / "run"
    for i, s in enumerate(STEPS):
        build_tiny_model(run_dir / "checkpoints" / f"step{s}", seed=10 + i)
    (run_dir / "run.json").write_text(json.dumps({"spec": {"corpus": str(corpus), "plan": None}, "batch_size": 8}))
    emergence = {"induction": {"threshold": 0.3, "emergence_step": 5, "max": 0.6},
                 "previous_token": {"threshold": 0.3, "emergence_step": 2, "max": 0.8}}
    (run_dir / "summary.json").write_text(json.dumps({"complete": True, "emergence": emergence}))
    return {"base": base, "corpus": corpus, "run": run_dir}


def request(run: dict, out: Path, **kw) -> ScoreRequest:
    args = dict(model=str(run["run"]), heads=HEADS, out=out, workers=1, batch_rows=4, shard_rows=16, fit_rows=32,
                progress=False)
    args.update(kw)
    return ScoreRequest(**args)


def scores(out: Path) -> ScoreTable:
    return ScoreTable.concat([ScoreTable.from_parquet(p) for p in sorted((out / "shards").glob("*.parquet"))])


def test_trajectory_equals_each_checkpoint_scored_alone(ray_address, run, monkeypatch, capsys) -> None:
    out = run["base"] / "traj"
    code, _, err = run_cli(["score", "--model", run["run"], "--heads", HEADS, "--checkpoints", "auto", "--out", out,
                            "--workers", "1", "--batch-rows", "4", "--shard-rows", "16", "--fit-rows", "32",
                            "--ray-address", ray_address, "--quiet", "--json"], monkeypatch, capsys)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["window"] == [0, 6] and summary["checkpoint_step"] == 6  # the first checkpoint after formation (5)
    assert summary["trajectory"]["checkpoints"] == STEPS and summary["trajectory"]["aggregate"] == "sum"
    assert summary["trajectory"]["folders"] == [f"checkpoints/step{s}" for s in STEPS]
    assert json.loads((out / "command.json").read_text())["options"]["checkpoints"] == "auto"
    for s in STEPS:  # one EK-FAC fit per checkpoint, in its own folder
        assert (out / "checkpoints" / f"step{s}" / "factors").is_dir()

    # each checkpoint scored alone, in this process (its own fit on the same rows; the Ray path is bit-identical)
    job = resolve_job(request(run, out, checkpoints="auto"))
    alone = []
    for s, sub in zip(STEPS, job.trajectory):
        assert sub.checkpoint_step == s and sub.window == (0, 6) and Path(sub.checkpoint).name == f"step{s}"
        alone.append(score_corpus(sub.model, sub.corpus, sub.rows, "induction", sub.heads, "qkvo", batch_rows=4, fit_rows=32,
                                  probes=sub.probes, shard_rows=16))
    assert not np.allclose(alone[0].head_scores, alone[1].head_scores)  # the checkpoints differ

    total = scores(out)
    expected = sum(t.head_scores for t in alone)
    tol = 1e-9 * np.abs(expected).max()
    np.testing.assert_allclose(total.head_scores, expected, rtol=1e-9, atol=tol)
    np.testing.assert_allclose(total.score, sum(t.score for t in alone), rtol=1e-9, atol=tol)
    np.testing.assert_array_equal(total.loss, alone[-1].loss)
    assert summary["top_positive"][0]["row_id"] == int(total.row_id[np.argmax(total.score)])

    # another aggregation in the same folder: the checkpoints are reused, only the combination is redone
    seg = run_job(resolve_job(request(run, out, checkpoints="auto", aggregate="segment")))
    assert seg["rows_scored"] == 0 and seg["trajectory"]["aggregate"] == "segment"
    assert seg["fingerprint_hash"] != summary["fingerprint_hash"]
    picked = scores(out)
    idx = np.minimum(np.searchsorted(STEPS, picked.step, side="right"), len(STEPS) - 1)
    assert set(idx.tolist()) == {0, 1, 2}
    for i in range(3):
        rows = idx == i
        np.testing.assert_allclose(picked.head_scores[rows], alone[i].head_scores[rows], rtol=1e-9, atol=tol)
        np.testing.assert_array_equal(picked.loss[rows], alone[i].loss[rows])

    # the same scores folder format: build-mix takes it unchanged (the top rows by the combined score)
    code, _, err = run_cli(["build-mix", out, "--remove", "10%", "--out", run["base"] / "mix"], monkeypatch, capsys)
    assert code == 0, err
    top = picked.row_id[np.lexsort((picked.row_id, -picked.score))][:5]
    assert json.loads((run["base"] / "mix" / "plan.json").read_text())["drop"] == sorted(int(r) for r in top)

    # a killed job: one checkpoint unfinished (no summary, a shard lost) -> only it is scored again
    (out / "checkpoints" / "step4" / "summary.json").unlink()
    (out / "checkpoints" / "step4" / "shards" / "rows-000000000016-000000000032.parquet").unlink()
    again = run_job(resolve_job(request(run, out, checkpoints="step2,step4,step6", aggregate="segment")))
    assert again["rows_scored"] == 16 and again["shards_scored"] == 1
    np.testing.assert_array_equal(scores(out).head_scores, picked.head_scores)


def test_trajectory_checks_before_writing(run, tmp_path) -> None:
    with pytest.raises(CurateError, match="no checkpoint 'step3'"):
        resolve_job(request(run, tmp_path / "x", checkpoints="step2,step3"))
    assert not (tmp_path / "x").exists()
    job = resolve_job(request(run, None, checkpoints="step2,step6", workspace=tmp_path / "ws"))
    assert job.out.name == "induction-trajectory" and [j.checkpoint_step for j in job.trajectory] == [2, 6]
    assert [j.out for j in job.trajectory] == [job.out / "checkpoints" / "step2", job.out / "checkpoints" / "step6"]
    assert {str(h) for j in job.trajectory for h in j.heads} == {"1.0", "1.2"} and {j.window for j in job.trajectory} == {(0, 6)}


def test_a_trajectory_killed_inside_a_checkpoint_resumes_in_its_folder(ray_address, run, monkeypatch) -> None:
    """The experiment's path (the library, no command.json): a job that dies while scoring its second checkpoint
    leaves a folder that the rerun recognizes as its own; the first checkpoint is kept, the rest is scored."""
    import curate.pipelines.score_run as score_run

    out = run["base"] / "killed-traj"
    real = score_run.run_job

    def dies_on_the_second(sub, log=lambda s: None):
        if sub.checkpoint_step == STEPS[1]:
            raise RuntimeError("killed")
        return real(sub, log)

    monkeypatch.setattr(score_run, "run_job", dies_on_the_second)
    with pytest.raises(RuntimeError, match="killed"):
        score_run.run_trajectory(resolve_job(request(run, out, checkpoints="auto", ray_address=ray_address)))
    monkeypatch.setattr(score_run, "run_job", real)
    assert not (out / "command.json").exists() and (out / "manifest.json").is_file()
    assert (out / "checkpoints" / f"step{STEPS[0]}" / "summary.json").is_file()
    done = run_job(resolve_job(request(run, out, checkpoints="auto", ray_address=ray_address)))
    assert (done["shards_skipped"], done["rows_scored"]) == (3, 2 * 48)  # the first checkpoint kept (3 shards of 16 rows)
