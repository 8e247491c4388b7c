"""`curate experiment` in reference mode: no --model/--corpus, the workspace's reference run is the baseline and
the scores `curate score` wrote for the same job are reused (apart from tests/test_experiment.py so that the two
xdist workers run it beside the quick experiment)."""
from __future__ import annotations

import json

import pytest

from tests.corpus_helpers import run_cli
from tests.test_experiment import tiny  # noqa: F401 (the module fixture: a tiny corpus and model config)


@pytest.mark.slow
def test_reference_mode_reuses_the_scores_of_curate_score(tiny, monkeypatch, capsys):
    """No --model/--corpus: the workspace's reference run is the baseline, and `curate score`'s results for the
    same job (same checkpoints, window, heads) are reused instead of scoring again."""
    import numpy as np

    from curate.workspace import reference_run_dir, scores_dir
    from curate.pipelines.run_metrics import emergence_step
    from curate.training.spec import TrainSpec
    from curate.training.trainer import train

    ws = tiny["base"] / "ws-reference"
    corpus = ws / "default" / "corpus"
    import shutil

    shutil.copytree(tiny["corpus"], corpus)
    config = json.loads(tiny["config"].read_text())
    run = reference_run_dir(ws)
    train(TrainSpec(corpus=str(corpus), model_config=config, steps=100, batch_size=8, eval_every=10, lr=3e-3, warmup_steps=20,
                    checkpoints="log,every:10"), run, progress=False)
    points = json.loads((run / "curves.json").read_text())["points"]
    formed = emergence_step([p["step"] for p in points], [float(np.max(p["previous_token"])) for p in points], 0.12)
    assert formed is not None
    values = np.asarray(next(p for p in points if p["step"] == formed)["previous_token"])
    head = "{}.{}".format(*np.unravel_index(int(np.argmax(values)), values.shape))  # the best candidate, as the experiment picks it
    code, _, stderr = run_cli(["score", "--circuit", "previous-token", "--workspace", ws, "--model", run, "--revision", f"step{formed}",
                               "--window", f"0:{formed}", "--heads", head, "--checkpoints", "auto", "--workers", "1", "--quiet"],
                              monkeypatch, capsys)  # the experiment's default MDA variant: trajectory scores (auto, sum)
    assert code == 0, stderr
    shared = scores_dir(ws, "previous-token", trajectory=True)
    before = (shared / "summary.json").stat().st_mtime_ns

    out = tiny["base"] / "reference-exp"
    code, _, stderr = run_cli(["experiment", "--workspace", ws, "--circuit", "previous-token", "--threshold", "0.12",
                               "--seeds", "1", "--arms", "remove-top", "--workers", "1", "--out", out], monkeypatch, capsys)
    assert code == 0, stderr
    assert f"scores (mda): reusing {shared}" in stderr.replace("\n", "")
    res = json.loads((out / "report" / "results.json").read_text())
    assert res["baseline"]["mode"] == "reference" and res["baseline"]["run"] == str(run.resolve())
    assert res["scores"]["folder"] == str(shared.resolve()) and res["targeted_heads"] == [head]
    assert res["window"]["end"] == formed and not (out / "scores").exists()
    assert (shared / "summary.json").stat().st_mtime_ns == before
