"""`curate score --dry-run` (`pipelines/score_estimate.py`, `pipelines/score_build_plan.py`): writes nothing, counts what the real run then reports,
and estimates the time from batches it measured; after the run, a second dry run sees the shards and factors done.
One local Ray (the `ray_address` fixture) serves the real run."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from curate.default_corpus import DefaultCorpusSpec
from curate.pipelines.score_estimate import makespan
from curate.training.recipes import recipe_fields
from tests.corpus_helpers import run_cli
from tests.score_helpers import build_tiny_corpus, build_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("estimate")
    return {"corpus": build_tiny_corpus(base / "corpus"), "model": build_tiny_model(base / "model")}


def args(tiny: dict, out: Path) -> list:
    return ["score", "--corpus", tiny["corpus"], "--model", tiny["model"], "--heads", "1.0,1.2", "--window", "0:8",
            "--batch-rows", "4", "--shard-rows", "16", "--fit-rows", "40", "--workers", "2", "--out", out, "--quiet", "--json"]


def test_dry_run_writes_nothing_and_counts_what_the_run_does(tiny, tmp_path, ray_address, monkeypatch, capsys):
    out = tmp_path / "scores"
    code, stdout, stderr = run_cli([*args(tiny, out), "--dry-run"], monkeypatch, capsys)
    assert code == 0, stderr
    assert not out.exists()
    plan = json.loads(stdout)
    assert plan["dry_run"] is True and plan["rows"] == 64 and plan["row_len"] == 32 and plan["tokens"] == 64 * 32
    assert plan["heads"] == ["1.0", "1.2"] and plan["batch_rows"] == 4 and plan["fit_rows"] == 40
    assert [(p["pass"], p["rows"]) for p in plan["passes"]] == [("fit covariances", 40), ("fit eigenvalues", 40), ("score", 64)]
    assert plan["shards_to_score"] == plan["shards"] == 4

    # the estimate is made of the measured batches: seconds per row of each pass x its rows, over the workers
    cal, est = plan["calibration"], plan["estimate"]
    timed = {p["name"]: p for p in cal["passes"]}
    assert set(timed) == {"fit covariances", "fit eigenvalues", "score"}
    for p in timed.values():
        assert p["batches"] >= 2 and p["rows"] == 4 * p["batches"] and p["seconds"] > 0
    shard_score = [16 * timed["score"]["seconds_per_row"]] * 4
    assert est["seconds_score"] == pytest.approx(makespan(shard_score, plan["workers"]))
    fit = sum(makespan([16 * timed[n]["seconds_per_row"], 16 * timed[n]["seconds_per_row"], 8 * timed[n]["seconds_per_row"]], plan["workers"])
              for n in ("fit covariances", "fit eigenvalues"))
    assert est["seconds_fit"] == pytest.approx(fit)
    assert est["seconds"] == pytest.approx(est["seconds_fit"] + est["seconds_precondition"] + est["seconds_score"]) and est["seconds"] > 0

    code, stdout, stderr = run_cli(args(tiny, out), monkeypatch, capsys)
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["rows"] == plan["rows"] and summary["rows_scored"] == plan["rows_to_score"]
    assert summary["heads"] == plan["heads"] and summary["fit_rows"] == plan["fit_rows"]
    assert summary["shards"] == plan["shards"] and summary["workers"] == plan["workers"]
    assert summary["factors"] == plan["factors"] == "fitted on 40 rows"
    # the real run also starts Ray and its actors, which the estimate leaves out: only a gross error (a unit
    # slip, a pass counted many times) could put the estimate far above the whole run's time
    assert est["seconds"] < 5 * summary["seconds"]

    code, stdout, stderr = run_cli([*args(tiny, out), "--dry-run"], monkeypatch, capsys)
    assert code == 0, stderr
    again = json.loads(stdout)
    assert again["factors"] == "cached" and again["rows_to_score"] == 0 and again["shards_to_score"] == 0
    assert [(p["pass"], p["rows"]) for p in again["passes"]] == [("score", 0)] and again["estimate"]["seconds_score"] == 0


def test_dry_run_of_bad_input_is_one_error_line(tiny, tmp_path, monkeypatch, capsys):
    out = tmp_path / "scores"
    code, _, stderr = run_cli([*args(tiny, out), "--dry-run", "--window", "0:1000"], monkeypatch, capsys)
    assert code == 2 and stderr.strip().startswith("error: the window 0:1000 is outside the corpus") and not out.exists()


def test_makespan_takes_tasks_in_order_on_the_first_free_worker():
    assert makespan([3.0, 1.0, 1.0, 1.0], 2) == 3.0
    assert makespan([1.0] * 5, 2) == 3.0
    assert makespan([2.0, 2.0], 8) == 2.0


def test_dry_run_on_an_empty_workspace_builds_nothing_and_estimates_the_builds(tmp_path):
    """On a fresh workspace the dry run neither builds the default corpus nor trains the reference run: it names
    both with their sizes and measured estimates, and the workspace (and the folder it ran in) stay empty."""
    ws, cwd = tmp_path / "ws", tmp_path / "cwd"
    ws.mkdir()
    cwd.mkdir()
    proc = subprocess.run([sys.executable, "-m", "curate.cli", "score", "--dry-run", "--workspace", str(ws)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert list(ws.iterdir()) == [] and list(cwd.iterdir()) == []
    lines = proc.stdout.strip().splitlines()
    spec = DefaultCorpusSpec()
    rows = spec.train_rows + spec.heldout_rows
    assert lines[0].startswith("dry run (nothing written): curate score --circuit induction --method mda")
    assert lines[1].startswith(f"would build the default corpus: {rows:,} rows of {spec.seq_len + 1} tokens "
                               f"(vocabulary {spec.vocab_size}) -> {ws / 'default' / 'corpus'}; estimated ")
    steps = recipe_fields("reference")["steps"]
    assert lines[2].startswith(f"would train the reference run: {steps:,} steps of 32 rows, ") and str(ws / "default" / "runs" / "reference") in lines[2]
    per_step = float(re.search(r"\(([\d.,]+) ms/step", lines[2]).group(1).replace(",", ""))
    assert 0 < per_step < 60_000
    assert lines[3].startswith("estimated time before scoring: ") and len(lines) == 4
