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


# --------------------------------------------------------------------------- the design (replace / compact)


def _streams(plan_path: str | None, corpus, steps: int = 40, batch: int = 8) -> np.ndarray:
    """The (source, row) stream a plan trains on the corpus: base rows only, so the row ids."""
    from curate.training.plan import load_plan, resolve_stream

    stream = resolve_stream(load_plan(plan_path), corpus, batch, steps)
    assert (stream.source == 0).all()
    return stream.row


def _trained_plan(run: Path) -> Path:
    """The plan a retrain folder's run.json says it trained."""
    return (run / json.loads((run / "run.json").read_text())["spec"]["plan"]).resolve()


def test_replace_keeps_every_position_but_the_dropped_ones(tiny_eval):
    """The default design: each retrain trains the baseline's 320 rows position for position, except at its 16
    dropped positions, which hold distinct rows after the retrain's last (never held-out ones), as filler.json says;
    and the retrain really trained that plan."""
    from curate.corpus import open_corpus
    from curate.pipelines.arm_plan import row_limit

    r = json.loads((tiny_eval["out"] / "lds.json").read_text())
    corpus = open_corpus(tiny_eval["base"] / "corpus")
    limit = row_limit(corpus.path, json.loads((tiny_eval["base"] / "run" / "run.json").read_text()))
    assert limit == corpus.num_rows - 64 and limit > 320 + 16  # the run's 64 held-out rows are the corpus's last
    assert r["design"] == "replace" and r["filler_rows"] == [320, limit]
    assert "Design replace" in (tiny_eval["out"] / "report.md").read_text()
    baseline = _streams(None, corpus)
    assert baseline.tolist() == list(range(320))
    fillers = []
    for s in r["subsets"]:
        mix = Path(s["mix"])
        dropped = _drops(mix, 0)
        assert s["plan"] == str((mix / "replace-plan.json").resolve())
        assert _trained_plan(Path(s["run"])) == Path(s["plan"])
        stream = _streams(s["plan"], corpus)
        assert len(stream) == len(baseline) == 320
        kept = np.setdiff1d(np.arange(320), dropped)
        assert np.array_equal(stream[kept], baseline[kept])
        filler = stream[dropped]
        assert ((filler >= 320) & (filler < limit)).all() and len(set(filler.tolist())) == 16
        record = json.loads((mix / "filler.json").read_text())
        assert record["filler"] == filler.tolist() and record["dropped_window_rows"] == dropped.tolist()
        assert "filler.json" in json.loads((mix / "manifest.json").read_text())["outputs"]
        fillers.append(tuple(filler))
    assert len(set(fillers)) == len(r["subsets"]) >= 3  # each subset's seed draws its own fillers


def test_compact_is_todays_stream_and_a_folder_refuses_the_other_design(tiny_eval, tmp_path):
    """--design compact: the retrain trains the mix's plan.json (the rows after a dropped one move up), the identity is
    today's (no design key), and each design's folder refuses the other with the one-line settings error."""
    from curate.corpus import open_corpus
    from curate.pipelines.evaluate import run_evaluation
    from curate.pipelines.evaluate_options import EvaluateOptions

    base = tiny_eval["base"]
    opts = EvaluateOptions(circuit="previous-token", threshold=0.104, model=str(base / "run"), window="0:20", steps=40,
                           drop="10%", lds_methods="copy-share", workers=1, bootstrap=50, out=tmp_path / "compact",
                           workspace=base / "ws", subsets=1, design="compact", progress=False)
    with pytest.raises(CurateError, match=r"other settings \(changed: design\)"):
        run_evaluation(EvaluateOptions(**{**opts.__dict__, "out": tiny_eval["out"]}))
    r = run_evaluation(opts)
    assert r["design"] == "compact" and r["filler_rows"] is None and "Design compact" in (opts.out / "report.md").read_text()
    assert "design" not in json.loads((opts.out / "evaluation.json").read_text())["identity"]
    mix = Path(r["subsets"][0]["mix"])
    assert r["subsets"][0]["plan"] == str((mix / "plan.json").resolve()) and not (mix / "filler.json").exists()
    assert _trained_plan(Path(r["subsets"][0]["run"])) == (mix / "plan.json").resolve()
    corpus = open_corpus(tiny_eval["base"] / "corpus")
    dropped = _drops(mix, 0)
    today = np.setdiff1d(np.arange(320 + 16), dropped)[:320]  # the dropped rows removed, the later ones moved up
    assert np.array_equal(_streams(r["subsets"][0]["plan"], corpus), today)
    # the same seed drops the same rows in both designs
    replace_first = json.loads((tiny_eval["out"] / "lds.json").read_text())["subsets"][0]
    assert replace_first["seed"] == r["subsets"][0]["seed"] and np.array_equal(_drops(Path(replace_first["mix"]), 0), dropped)
    with pytest.raises(CurateError, match=r"other settings \(changed: design\)"):
        run_evaluation(EvaluateOptions(**{**opts.__dict__, "design": "replace"}))


def test_the_filler_rule_and_its_refusal():
    from curate.pipelines.lds_design import check_filler, filler_range, filler_rows, replace_order

    fill = filler_range(10, 4, 50)  # 40 trained rows, rows 40-49 never trained
    assert (fill.start, fill.stop, fill.rows) == (40, 50, 10)
    a = filler_rows(10, fill, seed=7)
    assert sorted(a.tolist()) == list(range(40, 50)) and np.array_equal(a, filler_rows(10, fill, seed=7))
    assert not np.array_equal(filler_rows(5, fill, seed=7), filler_rows(5, fill, seed=8))
    order = replace_order(np.array([3, 17, 39]), np.array([45, 41, 48]), 40)
    expected = np.arange(40)
    expected[[3, 17, 39]] = [45, 41, 48]
    assert np.array_equal(order, expected)
    with pytest.raises(CurateError, match="need as many filler rows") as e:
        check_filler(11, fill)
    assert str(e.value) == ("--design replace: each subset's 11 dropped rows need as many filler rows the retrains never "
                            "train (rows 40 to 50 of the corpus, before its held-out rows), but only 10 exist; use fewer "
                            "--steps, a smaller --drop or --design compact")
    with pytest.raises(CurateError, match="only 0 exist"):
        filler_rows(1, filler_range(10, 4, 40), seed=0)
    with pytest.raises(CurateError, match="outside"):
        replace_order(np.array([40]), np.array([45]), 40)


def test_the_cli_takes_design_and_extra_scores(tmp_path, monkeypatch):
    """--design and --scores NAME=FOLDER reach their checks (in process: the one-line exit is `cli.main`'s)."""
    from typer.testing import CliRunner

    from curate.cli import app

    monkeypatch.chdir(tmp_path)
    for args, message in ((["--design", "shift"], "--design 'shift': expected one of replace, compact"),
                          (["--scores", "mda"], "--scores 'mda': expected NAME=FOLDER"),
                          (["--scores", "copy-share=x"], "--scores 'copy-share': named twice")):
        result = CliRunner().invoke(app, ["evaluate", *args])
        assert isinstance(result.exception, CurateError) and str(result.exception).startswith(message), result.output
