"""`curate evaluate` (the leave-subset-out score): the statistics and outcomes on hand-made numbers, then one tiny
evaluation through the command as a subprocess (3 subsets of a 20-step window of a 40-step run, copy-share plus a
hand-written scores folder), checked against hand sums, scipy's Spearman and the plans' drop lists, and resumed in
process with a 4th subset (the finished retrains are skipped, untouched)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats

from curate.attribution.heads import HeadRef
from curate.errors import CurateError
from curate.pipelines.evaluate_options import SPLIT_FIRST_SEED
from curate.pipelines.lds import lds, predicted_effects, subset_seeds
from curate.stats import bootstrap_interval, spearman
from curate.pipelines.lds_outcomes import curve_area, interpolated_emergence, outcome_of_points
from tests.score_helpers import build_tiny_corpus

ROOT = Path(__file__).resolve().parents[1]


def curate_cli(args: list, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "curate.cli", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT)})


# --------------------------------------------------------------------------- statistics and outcomes


def test_subsets_are_deterministic_and_the_splits_disjoint():
    dev, report = subset_seeds("dev", 24), subset_seeds("report", 24)
    assert dev == subset_seeds("dev", 24) and subset_seeds("dev", 30)[:24] == dev  # a longer list extends
    assert dev[0] == SPLIT_FIRST_SEED["dev"] and not set(dev) & set(subset_seeds("report", 10_000))
    assert len(set(report)) == 24
    with pytest.raises(CurateError):
        subset_seeds("test", 3)


def test_predicted_effects_are_sums_of_the_dropped_rows_scores():
    values = np.array([0.5, -1.0, 2.0, 0.25, 3.0])
    got = predicted_effects(values, [np.array([0, 2]), np.array([1, 3, 4]), np.array([], dtype=np.int64)])
    assert got.tolist() == [2.5, 2.25, 0.0]
    with pytest.raises(CurateError, match="unscored"):
        predicted_effects(np.array([1.0, np.nan]), [np.array([1])])
    with pytest.raises(CurateError, match="outside"):
        predicted_effects(values, [np.array([5])])


def test_spearman_and_bootstrap():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=12), rng.normal(size=12)
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic)
    assert spearman([1, 2, 3], [5, 5, 5]) is None and spearman([1], [2]) is None
    a = bootstrap_interval(x, y, 300, seed=1)
    assert a == bootstrap_interval(x, y, 300, seed=1) and a != bootstrap_interval(x, y, 300, seed=2)
    assert -1 <= a[0] <= a[1] <= 1 and a[2] == 300
    r = lds("m", "area", x, x * 2 + 1, 200)
    assert r.rho == pytest.approx(1.0) and r.low == pytest.approx(1.0) and r.subsets == 12


def test_curve_area_and_interpolated_emergence_by_hand():
    steps, values = [0, 10, 20, 30], [0.0, 0.2, 0.6, 0.4]
    # trapezoids over 0-20: (0+0.2)/2*10 + (0.2+0.6)/2*10 = 5, mean 0.25; to 25: + (0.6+0.5)/2*5 = 2.75 -> 7.75/25
    assert curve_area(steps, values, 0, 20) == pytest.approx(0.25)
    assert curve_area(steps, values, 0, 25) == pytest.approx(7.75 / 25)
    assert curve_area(steps, values, 5, 10) == pytest.approx(0.15)
    with pytest.raises(CurateError, match="do not cover"):
        curve_area(steps, values, 0, 40)
    assert interpolated_emergence(steps, values, 0.3) == pytest.approx(12.5)  # 0.2 at 10 -> 0.6 at 20
    assert interpolated_emergence(steps, values, 0.5) is None  # dips below at step 30: never for good
    assert interpolated_emergence(steps, [0.4, 0.5], 0.3) == 0.0
    points = [{"step": s, "induction": [[v, 2 * v], [0.0, 0.0]]} for s, v in zip(steps, values)]
    o = outcome_of_points(points, "induction", [HeadRef(0, 0), HeadRef(0, 1)], 0.3, 0, 20)
    assert o.area == pytest.approx(0.375)  # the targeted mean 1.5 v
    assert o.emergence == pytest.approx(7.5)  # best targeted head 2v: 0.0, 0.4 -> crosses 0.3 at 7.5
    assert o.last_step == 30


# --------------------------------------------------------------------------- a tiny evaluation


@pytest.fixture(scope="module")
def tiny_eval(tmp_path_factory) -> dict:
    """A 40-step tiny run, then `curate evaluate` (3 subsets) as a subprocess, plus a hand-written scores folder."""
    from curate.training.default_model import default_model_config
    from curate.training.spec import TrainSpec
    from curate.training.trainer import train

    base = tmp_path_factory.mktemp("evaluate")
    corpus = build_tiny_corpus(base / "corpus", docs=400, seq_len=31, batch_size=8)
    config = default_model_config(300, hidden_size=32, max_position_embeddings=32).to_dict()
    spec = TrainSpec(corpus=str(corpus), model_config=config, steps=40, batch_size=8, eval_every=10, lr=3e-3,
                     warmup_steps=5, checkpoints="every:10", eval_probes=8)
    train(spec, base / "run", progress=False)
    out = base / "eval"
    args = ["evaluate", "--circuit", "previous-token", "--threshold", "0.104", "--model", base / "run", "--window", "0:20",
            "--steps", "40", "--drop", "10%", "--methods", "copy-share", "--workers", "1", "--bootstrap", "200",
            "--out", out, "--workspace", base / "ws"]
    proc = curate_cli(args + ["--subsets", "3"], cwd=base)
    assert proc.returncode == 0, proc.stderr
    return {"base": base, "out": out, "args": args, "stdout": proc.stdout, "stderr": proc.stderr}


def _drops(mix: Path, first_row: int) -> np.ndarray:
    return np.asarray(json.loads((mix / "plan.json").read_text())["drop"], dtype=np.int64) - first_row


def _window_scores(folder: Path) -> np.ndarray:
    t = pq.read_table(next((folder / "shards").glob("*.parquet")))
    out = np.full(160, np.nan)
    out[t.column("row_id").to_numpy()] = t.column("score").to_numpy()
    return out


def test_the_command_writes_its_report(tiny_eval):
    out = tiny_eval["out"]
    r = json.loads((out / "lds.json").read_text())
    assert (out / "lds.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    assert "| copy-share |" in md and "](lds.png)" in md
    assert json.loads((out / "command.json").read_text())["command"] == "evaluate"
    assert r["window"] == {"start": 0, "end": 20, "rows": 160, "batch_size": 8} and r["horizon"] == 40
    assert [s["seed"] for s in r["subsets"]] == subset_seeds("dev", 3)
    scores = _window_scores(Path(r["scores"]["copy-share"]))
    drops = [_drops(Path(s["mix"]), 0) for s in r["subsets"]]
    assert all(len(d) == 16 for d in drops) and len({tuple(d) for d in drops}) == 3
    for s, d in zip(r["subsets"], drops):  # predicted = the hand sum of the dropped rows' scores
        assert s["predicted"]["copy-share"] == pytest.approx(float(scores[d].sum()))
    predicted = [s["predicted"]["copy-share"] for s in r["subsets"]]
    area = {x["outcome"]: x for x in r["lds"] if x["method"] == "copy-share"}["area"]
    expected = stats.spearmanr(predicted, [-s["outcome"]["area"] for s in r["subsets"]]).statistic
    assert area["rho"] == pytest.approx(expected) if np.isfinite(expected) else area["rho"] is None
    assert "evaluate: report" in tiny_eval["stderr"]


def test_the_same_seed_draws_the_same_subset(tiny_eval, tmp_path):
    from curate.augment.mix import MixSpec, build_mix

    r = json.loads((tiny_eval["out"] / "lds.json").read_text())
    build_mix(r["scores"]["copy-share"], tmp_path / "again", MixSpec(remove="10%", control="random", seed=r["subsets"][1]["seed"]))
    assert np.array_equal(_drops(tmp_path / "again", 0), _drops(Path(r["subsets"][1]["mix"]), 0))


def test_resume_skips_finished_retrains_and_a_variant_costs_no_retrain(tiny_eval, tmp_path):
    """A 4th subset and a hand-written variant folder: 1 retrain, the 3 finished ones untouched; the variant's
    predicted effects are hand sums of its scores on the same retrains."""
    from curate.pipelines.evaluate import run_evaluation
    from curate.pipelines.evaluate_options import EvaluateOptions

    out = tiny_eval["out"]
    r0 = json.loads((out / "lds.json").read_text())
    variant = tmp_path / "variant"
    shutil.copytree(r0["scores"]["copy-share"], variant)
    shard = next((variant / "shards").glob("*.parquet"))
    t = pq.read_table(shard)
    fake = (t.column("row_id").to_numpy() % 7).astype(np.float64)
    pq.write_table(t.set_column(t.schema.get_field_index("score"), "score", pa.array(fake)), shard)
    before = {s["seed"]: (Path(s["run"]) / "summary.json").stat().st_mtime_ns for s in r0["subsets"]}
    messages: list[str] = []
    opts = EvaluateOptions(circuit="previous-token", threshold=0.104, model=str(tiny_eval["base"] / "run"), window="0:20",
                           steps=40, drop="10%", lds_methods="copy-share", workers=1, bootstrap=200, out=out,
                           workspace=tiny_eval["base"] / "ws", subsets=4, extra_scores=f"mod7={variant}", progress=False)
    r = run_evaluation(opts, messages.append, heartbeat_s=0.2)
    assert any(m.startswith("evaluate: ") and "retrains finished" in m for m in messages)  # the heartbeat
    assert r["runs_trained"]["trained"] == 1 and r["runs_trained"]["skipped"] == 3
    assert {s["seed"]: (Path(s["run"]) / "summary.json").stat().st_mtime_ns for s in r["subsets"][:3]} == before
    assert r["methods"] == ["copy-share", "mod7"] and len(r["subsets"]) == 4
    for s in r["subsets"]:
        d = _drops(Path(s["mix"]), 0)
        assert s["predicted"]["mod7"] == pytest.approx(float((d % 7).sum()))
    mod7 = {x["outcome"]: x for x in r["lds"] if x["method"] == "mod7"}["area"]
    expected = stats.spearmanr([s["predicted"]["mod7"] for s in r["subsets"]], [-s["outcome"]["area"] for s in r["subsets"]]).statistic
    assert mod7["rho"] == pytest.approx(expected)
    assert any("already finished, skipped" in m for m in messages)


def test_bad_input_is_one_error_line(tiny_eval, tmp_path):
    proc = curate_cli(["evaluate", "--split", "holdout"], cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == ["error: --split 'holdout': expected one of dev, report"]
    from curate.pipelines.evaluate import run_evaluation
    from curate.pipelines.evaluate_options import EvaluateOptions

    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    opts = EvaluateOptions(circuit="previous-token", model=str(tiny_eval["base"] / "run"), window="0:20", steps=40,
                           lds_methods="copy-share", workers=1, out=other, workspace=tiny_eval["base"] / "ws", subsets=1)
    with pytest.raises(CurateError, match="not a curate evaluation"):
        run_evaluation(opts)
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]
    with pytest.raises(CurateError, match="holds an evaluation with other settings"):
        run_evaluation(EvaluateOptions(**{**opts.__dict__, "out": tiny_eval["out"], "drop": "20%"}))
    with pytest.raises(CurateError, match="--horizon 50"):
        run_evaluation(EvaluateOptions(**{**opts.__dict__, "out": tmp_path / "h", "horizon": 50}))
    assert not (tmp_path / "h").exists()
