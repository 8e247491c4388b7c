"""`curate score --ensemble RUN,RUN,...` (`pipelines.score_ensemble`): the ensemble folder's scores against the members'
own folders (the mean of score / sd, exact), the common window, a job killed inside a member that reuses the
finished members, the readers of scores folders taking it unchanged, and the refusals (another corpus, other rows,
bad options) before anything is written.

The members are fake training runs whose checkpoints are different tiny GPT-NeoX models (as in
tests/test_trajectory.py), on one local Ray (2 CPUs)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from curate.attribution.score_table import ScoreTable
from curate.attribution.scores_folder import Window
from curate.errors import CurateError
from curate.pipelines.score_ensemble import resolve_scoring, run_scoring
from curate.pipelines.score_request import ScoreRequest, parse_ensemble
from tests.corpus_helpers import run_cli
from tests.score_helpers import build_tiny_corpus, build_tiny_model

HEADS = "1.0,1.2"
STEPS = [2, 4, 6]


def fake_run(folder: Path, corpus: Path, seed: int, formed: int, batch_size: int = 8) -> Path:
    """A finished run folder: checkpoints step2/4/6 (tiny models of this seed), the induction head formed at `formed`."""
    for i, s in enumerate(STEPS):
        build_tiny_model(folder / "checkpoints" / f"step{s}", seed=100 * seed + i)
    (folder / "run.json").write_text(json.dumps({"spec": {"corpus": str(corpus), "plan": None}, "batch_size": batch_size}))
    emergence = {"induction": {"threshold": 0.3, "emergence_step": formed, "max": 0.6}}
    (folder / "summary.json").write_text(json.dumps({"complete": True, "emergence": emergence}))
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """Three seeds on one corpus (the head formed at 5, 3, 5: first checkpoints after it step6, step4, step6)."""
    base = tmp_path_factory.mktemp("ensemble")
    corpus = build_tiny_corpus(base / "corpus")
    members = [fake_run(base / f"seed{s}", corpus, s, formed) for s, formed in ((0, 5), (1, 3), (2, 5))]
    return {"base": base, "corpus": corpus, "members": members}


def request(members: list[Path], out: Path | None, **kw) -> ScoreRequest:
    args = dict(ensemble=",".join(str(m) for m in members), heads=HEADS, out=out, workers=1, batch_rows=4, shard_rows=16,
                fit_rows=32, progress=False)
    args.update(kw)
    return ScoreRequest(**args)


def table(folder: Path) -> ScoreTable:
    return ScoreTable.concat([ScoreTable.from_parquet(p) for p in sorted((folder / "shards").glob("*.parquet"))])


def test_ensemble_is_the_mean_of_the_members_standardised_scores(ray_address, runs, monkeypatch, capsys) -> None:
    import curate.pipelines.score_run as score_run

    out = runs["base"] / "ens"
    members = runs["members"]
    # killed while scoring the second member: the first is finished, the second has no summary
    real = score_run.run_job

    def dies_on_the_second(job, log=lambda s: None):
        if job.out.name.startswith("1-"):
            raise RuntimeError("killed")
        return real(job, log)

    monkeypatch.setattr(score_run, "run_job", dies_on_the_second)
    with pytest.raises(RuntimeError, match="killed"):
        run_scoring(resolve_scoring(request(members, out, ray_address=ray_address)))
    monkeypatch.setattr(score_run, "run_job", real)
    first = out / "members" / "0-seed0"
    assert (first / "summary.json").is_file() and not (out / "members" / "1-seed1" / "summary.json").exists()
    kept = (first / "summary.json").read_bytes(), (first / "summary.json").stat().st_mtime_ns

    code, stdout, err = run_cli(["score", "--ensemble", ",".join(map(str, members)), "--heads", HEADS, "--out", out,
                                 "--workers", "1", "--batch-rows", "4", "--shard-rows", "16", "--fit-rows", "32",
                                 "--ray-address", ray_address], monkeypatch, capsys)
    assert code == 0, err
    stdout, err = " ".join(stdout.split()), " ".join(err.split())  # as read, not as wrapped to the terminal
    assert "ensemble of 3 runs" in stdout and "standard deviation" in stdout
    assert "common window 0:4" in err and "member 1/3 (" in err and "done, reused" in err
    assert ((first / "summary.json").read_bytes(), (first / "summary.json").stat().st_mtime_ns) == kept  # not rescored
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["rows_scored"], summary["shards_skipped"]) == (2 * 32, 2)  # only the two unfinished members
    assert summary["window"] == [0, 4] and summary["rows"] == 32 and summary["heads"] == ["1.0", "1.2"]
    assert json.loads((out / "command.json").read_text())["options"]["ensemble"] == ",".join(map(str, members))
    ens = summary["ensemble"]
    assert [m["folder"] for m in ens["members"]] == ["members/0-seed0", "members/1-seed1", "members/2-seed2"]
    assert [m["checkpoint_step"] for m in ens["members"]] == [6, 4, 6]  # each its own checkpoint after formation

    # the ensemble's scores from the member folders, by hand
    tables = [table(out / m["folder"]) for m in ens["members"]]
    for t in tables:
        assert t.row_id.tolist() == list(range(32))
    assert not np.allclose(tables[0].score, tables[2].score)  # the seeds differ
    sds = [float(np.std(t.score, ddof=1)) for t in tables]
    assert [m["score_sd"] for m in ens["members"]] == pytest.approx(sds, rel=1e-12)
    combined = table(out)
    expected = np.mean([t.score / sd for t, sd in zip(tables, sds)], axis=0)
    np.testing.assert_allclose(combined.score, expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(combined.loss, np.mean([t.loss for t in tables], axis=0), rtol=1e-6)
    assert combined.heads == [] and float(np.std(combined.score, ddof=1)) < 1.0  # averaging unit-sd scores shrinks unless identical
    assert summary["top_positive"][0]["row_id"] == int(combined.row_id[np.argmax(combined.score)])

    # a rerun scores nothing and recombines the same bytes
    again = run_scoring(resolve_scoring(request(members, out, ray_address=ray_address)))
    assert again["rows_scored"] == 0 and again["fingerprint_hash"] == summary["fingerprint_hash"]
    np.testing.assert_array_equal(table(out).score, combined.score)

    # the readers of scores folders take it unchanged: build-mix drops the top rows by the ensemble score ...
    code, _, err = run_cli(["build-mix", out, "--remove", "4", "--out", runs["base"] / "mix"], monkeypatch, capsys)
    assert code == 0, err
    top = combined.row_id[np.lexsort((combined.row_id, -combined.score))][:4]
    assert json.loads((runs["base"] / "mix" / "plan.json").read_text())["drop"] == sorted(int(r) for r in top)
    # ... explain reads it (per-head scores are the members': a head is one error line) ...
    code, stdout, err = run_cli(["explain", out, "--by", "domain"], monkeypatch, capsys)
    assert code == 0 and "top tail" in stdout, err
    code, _, err = run_cli(["explain", out, "--by", "domain", "--head", "1.0"], monkeypatch, capsys)
    assert code == 2 and "no scores for head 1.0" in err and len(err.strip().splitlines()) == 1, err
    # ... and the evaluation reads its window's values (`curate evaluate --scores NAME=FOLDER`)
    from curate.pipelines.evaluate import window_values

    values = window_values({"ens": out}, Window(0, 4, 8), 8, str(runs["corpus"]))
    np.testing.assert_array_equal(values["ens"], combined.score)


def test_members_of_another_corpus_or_other_rows_are_refused(runs, tmp_path) -> None:
    base = runs["base"]
    seed0 = runs["members"][0]
    other = fake_run(base / "other-corpus", build_tiny_corpus(base / "corpus2", seed=1), 3, 5)
    with pytest.raises(CurateError, match=r"other-corpus scores another corpus.*same corpus in the same row order"):
        resolve_scoring(request([seed0, other], tmp_path / "a", window="0:4"))
    batch4 = fake_run(base / "batch4", runs["corpus"], 4, 5, batch_size=4)  # the same corpus at 4 rows a step: other rows
    with pytest.raises(CurateError, match=r"batch4 scores rows 0:16 \(window 0:4 at batch 4\), not the first member's rows 0:32"):
        resolve_scoring(request([seed0, batch4], tmp_path / "b", window="0:4"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_ensemble_options_are_checked_before_anything_runs(runs, tmp_path, monkeypatch, capsys) -> None:
    a, b = runs["members"][:2]
    assert parse_ensemble("3") == 3 and parse_ensemble(f"{a}, {b}") == [str(a), str(b)]
    for bad, message in (("1", "at least 2 members"), (str(a), "at least 2 run folders"), (f"{a},{a}", "named twice"),
                         (f"{a},,{b}", "at least 2 run folders")):
        with pytest.raises(CurateError, match=message):
            ScoreRequest(ensemble=bad).validate()
    with pytest.raises(CurateError, match="--ensemble names the models: drop --model"):
        ScoreRequest(ensemble=f"{a},{b}", model=str(a)).validate()
    with pytest.raises(CurateError, match="--ensemble 2 trains reference runs on the default corpus: drop --corpus"):
        ScoreRequest(ensemble="2", corpus=str(runs["corpus"])).validate()
    ScoreRequest(ensemble=f"{a},{b}", corpus=str(runs["corpus"])).validate()  # run folders with the corpus given: fine
    for args in (["--ensemble", "1"], ["--ensemble", f"{a},{b}", "--dry-run"]):
        code, _, err = run_cli(["score", *args, "--out", tmp_path / "x"], monkeypatch, capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error:"), err
    assert not (tmp_path / "x").exists()
    job = resolve_scoring(request([a, b], None, workspace=tmp_path / "ws", window="0:4"))
    assert job.out == (tmp_path / "ws" / "default" / "scores" / "induction-ensemble2").absolute()
    assert [m.out.name for m in job.ensemble] == ["0-seed0", "1-seed1"] and {m.window for m in job.ensemble} == {(0, 4)}
    assert not job.out.exists()


def test_ensemble_k_takes_the_seeded_reference_runs(runs, tmp_path) -> None:
    """`--ensemble 2` on a workspace: the reference run and the reference run of seed 1 (finished ones are used as they are)."""
    ws = tmp_path / "ws"
    for seed, name in ((0, "reference"), (1, "reference-seed1")):
        fake_run(ws / "default" / "runs" / name, runs["corpus"], seed, 5)
    job = resolve_scoring(request([], None, ensemble="2", workspace=ws, window="0:4"))
    assert [Path(m.request.model).name for m in job.ensemble] == ["reference", "reference-seed1"]
    assert [m.out.name for m in job.ensemble] == ["0-reference", "1-reference-seed1"] and job.out.name == "induction-ensemble2"


def test_the_experiment_scores_mda_with_the_baseline_run_first_in_the_ensemble(runs, tmp_path) -> None:
    """`curate experiment --model RUN --ensemble RUN2,RUN3`: the MDA job is curate score's ensemble of the baseline run
    and the others, each at its own checkpoint after formation, on the experiment's window; the other methods score
    the baseline alone; the identity records the ensemble."""
    from curate.pipelines.experiment_options import ExperimentOptions
    from curate.pipelines.experiment_scores import score_job
    from curate.pipelines.experiment_setting import resolve_setting

    seed0, seed1, seed2 = runs["members"]
    opts = ExperimentOptions(model=str(seed0), ensemble=f"{seed1},{seed2}", heads=HEADS, fit_rows=32, out=tmp_path / "exp",
                             workspace=tmp_path / "ws", progress=False, checkpoints="step6")
    opts.validate()
    s = resolve_setting(opts, lambda m: None)
    assert s.identity["score_ensemble"] == f"{seed1},{seed2}"
    job, _ = score_job(s, Window(0, 4, 8), lambda m: None)
    assert [Path(str(m.request.model)) for m in job.ensemble] == [Path(seed0).resolve(), seed1, seed2]
    assert [m.checkpoint_step for m in job.ensemble] == [6, 4, 6] and {m.window for m in job.ensemble} == {(0, 4)}
    assert [[t.checkpoint_step for t in m.trajectory] for m in job.ensemble] == [[6]] * 3  # the experiment's --checkpoints
    assert job.out == tmp_path / "exp" / "scores" and not job.out.exists()
    other, _ = score_job(s, Window(0, 4, 8), lambda m: None, method="gradient-dot", heads=HEADS)
    assert not other.ensemble and Path(other.checkpoint).name == "step4"
