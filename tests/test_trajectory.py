"""`curate score --checkpoints ... --aggregate sum|lr-sum|segment` (`pipelines.score_trajectory`): the choice of checkpoints,
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
from curate.pipelines.score_trajectory import (aggregate_tables, auto_checkpoints, checkpoint_weights, segment_index,
                                              transition_checkpoints)
from curate.training.schedule import lr_at
from tests.corpus_helpers import run_cli
from tests.score_helpers import build_tiny_corpus, build_tiny_model

STEPS = [2, 4, 6]
HEADS = "1.0,1.2"
LR, WARMUP = 1e-3, 4  # the fake run's schedule: warm-up over updates 0-3, cosine to step 10


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


def test_transition_checkpoints_are_consecutive_and_end_at_formation() -> None:
    saved = sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, 512} | set(range(0, 2100, 100)))
    # the reference run: formation checkpoint 1700 -> the 4 saved checkpoints before it, dense (auto spreads them)
    assert transition_checkpoints(saved, 0, 1700, 4, "w") == [1400, 1500, 1600, 1700]
    assert transition_checkpoints(saved, 0, 1700, 2, "w") == [1600, 1700]
    assert transition_checkpoints(saved, 0, 600, 4, "w") == [400, 500, 512, 600]  # every saved checkpoint counts
    assert transition_checkpoints([0, 100, 200, 300], 0, 200, 4, "w") == [100, 200]  # fewer in the window
    assert transition_checkpoints(saved, 1550, 1700, 4, "w") == [1600, 1700]  # after the window's start
    with pytest.raises(CurateError, match="^w: transition needs the step where the circuit formed"):
        transition_checkpoints(saved, 0, None, 4, "w")


def test_segment_takes_the_first_checkpoint_after_the_consuming_step() -> None:
    # checkpoint stepK = weights after K updates: the row of step s is in checkpoints c >= s + 1
    steps = np.array([0, 1, 2, 3, 5, 6, 9])
    assert segment_index(steps, [2, 4, 6]).tolist() == [0, 0, 1, 1, 2, 2, 2]  # step >= 6: the last checkpoint


def test_parse_checkpoints_and_cheap_checks() -> None:
    assert parse_checkpoints("auto") == "auto" and parse_checkpoints("step1000, step500,500") == [500, 1000]
    assert parse_checkpoints("transition") == ("transition", 4) and parse_checkpoints(" Transition:2 ") == ("transition", 2)
    for bad in ("step", "1k", "", "transition:0", "transition:", "transition:x"):
        with pytest.raises(CurateError):
            parse_checkpoints(bad)
    with pytest.raises(CurateError, match="--aggregate 'mean': expected one of sum, segment, lr-sum"):
        ScoreRequest(aggregate="mean").validate()
    with pytest.raises(CurateError, match="--checkpoints 'x': expected auto, transition"):
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


def test_lr_sum_weights_each_checkpoint_by_its_learning_rate() -> None:
    steps = [0, 3, 5]
    a = _table(np.array([[1.0, -2.0], [3.0, 4.5], [5.0, 6.0]]), steps, 1.0)
    b = _table(np.array([[10.0, 20.0], [-30.0, 40.0], [50.0, 0.25]]), steps, 2.0)
    w = [0.3, 0.7]
    got = aggregate_tables([a, b], [2, 4], "lr-sum", w)
    np.testing.assert_array_equal(got.head_scores, 0.3 * a.head_scores + 0.7 * b.head_scores)  # exactly
    np.testing.assert_array_equal(got.score, got.head_scores.sum(axis=1))
    assert got.loss.tolist() == [2.0, 2.0, 2.0] and got.meta["aggregate"] == "lr-sum" and got.meta["weights"] == w
    with pytest.raises(CurateError, match="one weight per checkpoint"):
        aggregate_tables([a, b], [2, 4], "lr-sum")
    with pytest.raises(CurateError, match="one weight per checkpoint"):
        aggregate_tables([a, b], [2, 4], "sum", w)


def test_lr_sum_weights_are_the_runs_schedule(run, tmp_path) -> None:
    # checkpoint stepK: the learning rate of update K - 1 (the curves' lr at step K); step0: the first update's
    weights = checkpoint_weights(run["run"], [0, 2, 4, 6, 10], "--aggregate lr-sum")
    assert weights == [lr_at(0, LR, WARMUP, 10), lr_at(1, LR, WARMUP, 10), lr_at(3, LR, WARMUP, 10), lr_at(5, LR, WARMUP, 10),
                       lr_at(9, LR, WARMUP, 10)]
    assert weights[:3] == pytest.approx([LR / 4, LR / 2, LR])  # warm-up checkpoints weigh less
    assert weights[3] == pytest.approx(0.1 * LR + 0.9 * LR * 0.5 * (1 + np.cos(np.pi / 6)))  # cosine decay after
    with pytest.raises(CurateError, match="^--aggregate lr-sum: .*not a curate training run folder"):
        checkpoint_weights(None, [2], "--aggregate lr-sum")
    # checkpoints without the run's run.json (its schedule unknown): refused before anything is written
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "checkpoints").symlink_to(run["run"] / "checkpoints")
    with pytest.raises(CurateError, match="^--aggregate lr-sum: .*model is not a curate training run folder.*schedule is unknown"):
        resolve_job(request(run, tmp_path / "out", model=str(tmp_path / "model"), revision="step6", corpus=str(run["corpus"]),
                            window="0:6", checkpoints="step2,step4", aggregate="lr-sum"))
    assert not (tmp_path / "out").exists()


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
    spec = {"corpus": str(corpus), "plan": None, "lr": LR, "warmup_steps": WARMUP, "steps": 10, "min_lr_ratio": 0.1}
    (run_dir / "run.json").write_text(json.dumps({"spec": spec, "batch_size": 8}))
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

    # lr-sum: the same checkpoints reused, each weighted by its learning rate (warm-up step2 and step4 weigh less)
    lr = run_job(resolve_job(request(run, out, checkpoints="auto", aggregate="lr-sum")))
    weights = [lr_at(s - 1, LR, WARMUP, 10) for s in STEPS]
    assert lr["rows_scored"] == 0 and lr["trajectory"]["aggregate"] == "lr-sum" and lr["trajectory"]["weights"] == weights
    assert len({lr["fingerprint_hash"], seg["fingerprint_hash"], summary["fingerprint_hash"]}) == 3
    weighted = scores(out)
    np.testing.assert_allclose(weighted.head_scores, sum(w * t.head_scores for w, t in zip(weights, alone)), rtol=1e-9, atol=LR * tol)
    np.testing.assert_array_equal(weighted.loss, alone[-1].loss)
    seg = run_job(resolve_job(request(run, out, checkpoints="auto", aggregate="segment")))
    picked = scores(out)

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
    # transition: the run's saved checkpoints up to the first after formation (step6), consecutive
    job = resolve_job(request(run, tmp_path / "x", checkpoints="transition:2"))
    assert [j.checkpoint_step for j in job.trajectory] == [4, 6] and job.window == (0, 6)
    assert [j.checkpoint_step for j in resolve_job(request(run, tmp_path / "x", checkpoints="transition")).trajectory] == STEPS
    early = resolve_job(request(run, tmp_path / "x", checkpoints="transition:1", circuit="previous-token"))  # formed at 2
    assert [j.checkpoint_step for j in early.trajectory] == [2]
    with pytest.raises(CurateError, match="transition checkpoints need a training run folder"):
        resolve_job(request(run, tmp_path / "x", model=str(run["run"] / "checkpoints" / "step6"), corpus=str(run["corpus"]),
                            window="0:6", checkpoints="transition"))
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


def test_the_levers_together_are_one_score_command(ray_address, run, monkeypatch, capsys) -> None:
    """A variant is one `curate score ... --out FOLDER`: transition checkpoints, lr-sum and positive token aggregation
    recorded in the summary and command.json; its scores are the lr-weighted sum of the checkpoints' positive scores."""
    out = run["base"] / "levers"
    code, _, err = run_cli(["score", "--model", run["run"], "--heads", HEADS, "--checkpoints", "transition:2", "--aggregate", "lr-sum",
                            "--token-aggregate", "positive", "--out", out, "--workers", "1", "--batch-rows", "4", "--shard-rows", "16",
                            "--fit-rows", "32", "--ray-address", ray_address, "--quiet", "--json"], monkeypatch, capsys)
    assert code == 0, err
    summary = json.loads((out / "summary.json").read_text())
    weights = [lr_at(3, LR, WARMUP, 10), lr_at(5, LR, WARMUP, 10)]
    assert summary["trajectory"]["checkpoints"] == [4, 6] and summary["trajectory"]["weights"] == weights
    assert summary["token_aggregate"] == "positive"
    options = json.loads((out / "command.json").read_text())["options"]
    assert (options["checkpoints"], options["aggregate"], options["token_aggregate"]) == ("transition:2", "lr-sum", "positive")
    per_checkpoint = [scores(out / "checkpoints" / f"step{s}") for s in (4, 6)]
    assert all((t.head_scores >= 0).all() for t in per_checkpoint)
    np.testing.assert_allclose(scores(out).head_scores, weights[0] * per_checkpoint[0].head_scores + weights[1] * per_checkpoint[1].head_scores,
                               rtol=1e-12)
