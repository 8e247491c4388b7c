"""`curate experiment`: the quick experiment end to end on a tiny setup (report files, every arm with curves and
emergence, the baseline arm reproducing the baseline run, resumability, --rerun), --scales on three tiny sizes,
the statistics on hand-made numbers, and bad inputs (one `error:` line, exit 2, nothing written).

The tiny setup: a corpus of 31-token rows built in the test, a 2-layer hidden-32 model, the previous-token
circuit with a low threshold so that it forms within the 100-step baseline (an induction head does not form
at this size in seconds; the path where nothing forms is covered by the smallest --scales size).
"""
from __future__ import annotations

import json
import math
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from curate.attribution.heads import HeadRef
from curate.errors import CurateError
from curate.pipelines.effects import comparisons, effects_table, untestable_reason
from curate.pipelines.methods import method_arms
from curate.pipelines.run_metrics import (
    RunMetrics, add_outcomes, emergence_step, metrics_from_points, parse_head_names, read_run_metrics,
)
from curate.pipelines.verdicts import verdicts
from curate.stats import holm
from tests.corpus_helpers import run_cli, run_cli_redirected
from tests.score_helpers import build_tiny_corpus

ALL_ARMS = ["baseline", "remove-top", "remove-random", "augment-top", "augment-random", "augment-neighbors", "augment-synthetic"]
METHODS = ["mda", "gradient-dot", "copy-share"]
METHOD_ARMS = ["remove-top-gradient-dot", "augment-top-gradient-dot", "remove-top-copy-share", "augment-top-copy-share"]
QUICK_ARMS = ALL_ARMS + METHOD_ARMS
"""The quick fixture's arms: every default arm plus the compared methods' remove-top / augment-top."""
CURVE_KEYS = ["induction_best", "induction_targeted", "induction_other", "previous_token_best", "previous_token_targeted",
              "previous_token_other", "icl", "loss", "heldout_loss"]


@pytest.fixture(scope="module")
def ray_session_for_module():
    from curate.pipelines.ray_pool import ray_session

    torch.set_num_threads(1)
    with ray_session(None, num_cpus=2):
        yield


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    from curate.training.default_model import default_model_config

    base = tmp_path_factory.mktemp("experiment")
    corpus = build_tiny_corpus(base / "corpus", docs=1200, seq_len=31, batch_size=8)
    config = base / "config.json"
    config.write_text(json.dumps(default_model_config(300, hidden_size=32, max_position_embeddings=32).to_dict()))
    return {"base": base, "corpus": corpus, "config": config, "ws": base / "ws"}


def quick_args(tiny: dict, out: Path) -> list[str]:
    return ["experiment", "--quick", "--circuit", "previous-token", "--threshold", "0.12", "--corpus", tiny["corpus"],
            "--config", tiny["config"], "--baseline-steps", "100", "--batch-size", "8", "--eval-every", "10",
            "--lr", "3e-3", "--warmup-steps", "20", "--seeds", "2", "--out", out, "--workspace", tiny["ws"], "--quiet"]


@pytest.fixture(scope="module")
def quick(tiny, ray_session_for_module) -> dict:
    """The quick experiment with every method compared, run once through the CLI (2 Ray workers)."""
    out = tiny["base"] / "exp"
    mp = pytest.MonkeyPatch()
    try:
        code, stdout, stderr = run_cli_redirected(quick_args(tiny, out) + ["--methods", ",".join(METHODS), "--workers", "2"], mp)
    finally:
        mp.undo()
    assert code == 0, stderr
    results = json.loads((out / "report" / "results.json").read_text())
    return {"out": out, "results": results, "stdout": stdout}


# --------------------------------------------------------------------------- the quick experiment


@pytest.mark.slow
def test_quick_writes_the_report_with_every_arm(quick):
    out, res = quick["out"], quick["results"]
    report = out / "report"
    md = (report / "report.md").read_text()
    html = (report / "report.html").read_text()
    pngs = sorted(p.name for p in report.glob("*.png"))
    assert len(pngs) == 5
    for name in pngs:
        assert f"]({name})" in md  # relative links in the Markdown
        assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert html.count("data:image/png;base64,") == len(pngs) and ".png\"" not in html
    assert res["arm_names"] == QUICK_ARMS and sorted(res["arms"]) == sorted(QUICK_ARMS)
    for arm, info in res["arms"].items():
        assert sorted(info["runs"]) == ["0", "1"], arm
        for run in info["runs"].values():
            n = len(run["steps"])
            assert run["steps"][0] == 0 and run["steps"][-1] == res["arm_steps"]
            for key in CURVE_KEYS:
                assert len(run["curves"][key]) == n, (arm, key)
            assert "emergence" in run and "emergence_targeted" in run
            assert run["emergence"] is None or run["steps"][0] <= run["emergence"] <= run["emergence_evaluated"]
            assert run["emergence_evaluated"] is None or run["emergence_evaluated"] in run["steps"]
            assert run["auc"] is not None
    assert [v["key"] for v in res["verdicts"]] == ["remove_top_delays", "remove_random_no_effect", "augment_top_sooner",
                                                  "icl_co_moves", "other_heads_move_less"]
    assert all(v["status"] in ("observed", "not observed", "inconclusive", "not testable") for v in res["verdicts"])
    assert [c["arm"] for c in res["comparisons"]] == ["remove-top", "augment-top", "augment-neighbors", "augment-synthetic", *METHOD_ARMS]
    for arm in QUICK_ARMS:
        assert f"--rerun {arm}" in res["commands"]["rerun_arm"][arm]
        assert f"--rerun {arm}" in md
    assert "expected effects: observed or not" in md.lower()


def _censored(run: dict) -> tuple[float, bool]:
    """(emergence, censored): a run that never formed is only known to lie beyond its end step."""
    return (float(run["emergence"]), False) if run["emergence"] is not None else (float(run["steps"][-1]), True)


def test_the_method_table_holds_the_runs_numbers_and_opens_the_report(quick):
    """MDA, gradient-dot and copy-share compared: each method's delay / advance is the per-seed runs' numbers, tested
    against the random control paired by seed; the Spearman table covers the three methods; the report opens with it."""
    out, res = quick["out"], quick["results"]
    assert res["methods"] == METHODS and sorted(res["method_scores"]) == sorted(METHODS)
    assert json.loads((out / "scores-copy-share" / "summary.json").read_text())["heads"] == res["targeted_heads"]
    runs = {arm: info["runs"] for arm, info in res["arms"].items()}
    assert [row["outcome"] for row in res["method_table"]] == [o for o in ("emergence", "score_at_reference", "auc") for _ in METHODS]
    table = [row for row in res["method_table"] if row["outcome"] == "emergence"]
    assert [row["method"] for row in table] == METHODS
    for row in table:
        assert row["status"] == "not testable" and row["reason"]  # two seeds (or an unformed baseline)
        remove, augment = method_arms(row["method"])
        for shift, arm, control in ((row["delay"], remove, "remove-random"), (row["advance"], augment, "augment-random")):
            seeds = shift["seeds"]
            pairs = [(_censored(runs[arm][str(s)]), _censored(runs["baseline"][str(s)])) for s in seeds]
            assert shift["values"] == pytest.approx([a - b for (a, _), (b, _) in pairs])
            assert shift["censored"] == [ca or cb for (_, ca), (_, cb) in pairs]
            if not any(shift["censored"]):
                assert shift["mean"] == pytest.approx(np.mean(shift["values"]))
            else:
                assert shift["mean"] is None  # a censored run is never averaged
            assert shift["vs_control"]["test"] is None  # not testable: no p
    assert set(res["spearman"]["rho"]) == {"mda|gradient-dot", "mda|copy-share", "gradient-dot|copy-share"}
    md = (out / "report" / "report.md").read_text()
    assert md.index("## Methods compared") < md.index("## Expected effects")


@pytest.mark.slow
def test_window_follows_the_baseline_emergence_and_arms_copy_the_baseline(quick):
    """Window = 0 to the first checkpoint at/after the baseline's emergence; the baseline arm with seed 0 is the
    baseline run itself (same init, order and schedule): its curve is bit-identical."""
    out, res = quick["out"], quick["results"]
    base_points = json.loads((out / "baseline" / "curves.json").read_text())["points"]
    emerged = res["baseline"]["emergence_step"]
    assert emerged is not None and res["window"]["start"] == 0 and res["window"]["end"] == emerged  # eval = checkpoint grid
    arm_points = json.loads((out / "arms" / "baseline" / "seed0" / "curves.json").read_text())["points"]
    assert arm_points[-1]["step"] == res["arm_steps"] and len(arm_points) <= len(base_points)
    for a, b in zip(arm_points, base_points):
        assert a["step"] == b["step"]
        assert a["previous_token"] == b["previous_token"] and a["loss"] == b["loss"]
    seed1 = json.loads((out / "arms" / "baseline" / "seed1" / "run.json").read_text())
    assert seed1["spec"]["seed"] == 1 and seed1["spec"]["init_from"] is None
    assert seed1["init_fingerprint"] != json.loads((out / "baseline" / "run.json").read_text())["init_fingerprint"]


@pytest.mark.slow
def test_arm_plans_drop_and_add_the_right_rows(quick):
    import pyarrow.parquet as pq

    out, res = quick["out"], quick["results"]
    k, added = res["k_rows"], res["augment_rows"]
    window_rows = res["window"]["rows"]
    assert k == math.ceil(window_rows * 10 / 100) and added == math.ceil(window_rows * 2 / 100)  # curate.amounts' rule
    scores = Path(res["scores"]["folder"])
    import pyarrow as pa

    table = pa.concat_tables([pq.read_table(f) for f in sorted((scores / "shards").glob("*.parquet"))])  # every window row
    by_score = sorted(zip(table.column("score").to_pylist(), table.column("row_id").to_pylist()), key=lambda t: (-t[0], t[1]))
    top = sorted(r for _, r in by_score[:k])
    plan = lambda arm, s: json.loads((out / "arms" / arm / f"seed{s}" / "plan.json").read_text())  # noqa: E731
    assert plan("remove-top", 0)["drop"] == top == plan("remove-top", 1)["drop"]
    assert plan("remove-random", 0)["drop"] != plan("remove-random", 1)["drop"]
    assert len(plan("remove-random", 0)["drop"]) == k
    for arm in ("augment-top", "augment-random", "augment-neighbors", "augment-synthetic"):
        p = plan(arm, 0)
        assert "drop" not in p and len(p["insert"][0]["rows"]) == added, arm
    assert sorted(plan("augment-top", 0)["insert"][0]["rows"]) == sorted(r for _, r in by_score[:added])
    pool = res["neighbour_pool"]
    neighbours = plan("augment-neighbors", 0)["insert"][0]["rows"]
    assert all(pool[0] <= r < pool[1] for r in neighbours)  # rows no arm trains on


@pytest.mark.slow
def test_mix_commands_in_the_report_rebuild_the_same_plans(quick, tmp_path, monkeypatch, capsys):
    for entry in quick["results"]["commands"]["mixes"]:
        if entry["arm"] not in ("remove-random", "augment-top") or entry["seed"] != 1:
            continue
        args = shlex.split(entry["command"])
        assert args[:2] == ["curate", "build-mix"]
        args[args.index("--out") + 1] = str(tmp_path / entry["arm"])
        code, _, stderr = run_cli(args[1:], monkeypatch, capsys)
        assert code == 0, stderr
        mine = json.loads((tmp_path / entry["arm"] / "plan.json").read_text())
        theirs = json.loads((Path(entry["mix"]) / "plan.json").read_text())
        # corpora are named relative to each mix folder: the same corpora from both
        for plan, folder in ((mine, tmp_path / entry["arm"]), (theirs, Path(entry["mix"]))):
            for item in (plan, *plan.get("insert", [])):
                item["corpus"] = str((folder / item["corpus"]).resolve())
        assert mine == theirs


@pytest.mark.slow
def test_results_hold_the_numbers_of_the_run_folders(quick):
    """The effects in results.json are those recomputed from the run folders."""
    res = quick["results"]
    targeted = parse_head_names(res["targeted_heads"])
    runs = {arm: {int(s): read_run_metrics(arm, int(s), Path(r["run_dir"]), "previous_token", targeted, 0.12, int(s) == 0)
                  for s, r in res["arms"][arm]["runs"].items()} for arm in res["arm_names"]}
    assert add_outcomes(runs, "previous_token").to_json() == res["outcomes"]
    effects = effects_table(runs)
    assert [e.to_json() for e in effects] == res["effects"]
    reason = untestable_reason(runs["baseline"], 0.12, "previous_token")
    assert reason == res["testable"] and reason is not None  # two seeds
    assert [c.to_json() for c in comparisons(runs, reason)] == res["comparisons"]


@pytest.mark.slow
def test_emergence_effects_are_the_per_seed_differences_of_the_runs(quick):
    """Each arm's emergence delta in results.json is the mean over seeds of (arm - baseline) emergence steps, read
    straight from the per-run numbers (a run that never formed is censored: no mean)."""
    res = quick["results"]
    assert res["eval_every"] == 10 and res["arm_eval_every"] == 10  # --eval-every of quick_args (finer than 25)

    def emergence(arm: str, seed: int) -> tuple[float, bool]:
        return _censored(res["arms"][arm]["runs"][str(seed)])

    effects = {e["arm"]: e for e in res["effects"]}
    assert list(effects) == QUICK_ARMS
    base = effects["baseline"]
    assert base["emergence_delta"] == 0.0 and base["score_delta"] == 0.0  # the baseline against itself
    assert res["arms"]["baseline"]["runs"]["0"]["emergence_evaluated"] == res["baseline"]["emergence_step"]  # seed 0 is the baseline run
    for arm in QUICK_ARMS:
        e = effects[arm]
        assert e["seeds"] == [0, 1], arm
        pairs = [(emergence(arm, s), emergence("baseline", s)) for s in e["seeds"]]
        deltas = [a - b for (a, _), (b, _) in pairs]
        assert e["emergence_censored"] == any(ca or cb for (_, ca), (_, cb) in pairs), arm
        if e["emergence_censored"]:
            assert e["emergence_delta"] is None and e["emergence_pairs"]["diffs"] == pytest.approx(deltas)
        else:
            assert e["emergence_delta"] == pytest.approx(sum(deltas) / len(deltas)), (arm, deltas)
        formed = [emergence(arm, s)[0] for s in (0, 1) if not emergence(arm, s)[1]]
        assert e["formed"] == len(formed)
        if formed:
            assert e["emergence_mean"] == pytest.approx(sum(formed) / len(formed))
        finals = [res["arms"][arm]["runs"][str(s)]["final"]["score"] - res["arms"]["baseline"]["runs"][str(s)]["final"]["score"]
                  for s in e["seeds"]]
        assert e["score_delta"] == pytest.approx(sum(finals) / len(finals)), arm


@pytest.mark.slow
def test_rerun_skips_finished_arms_and_rerun_flag_retrains_one(tiny, quick, monkeypatch, capsys):
    out = quick["out"]
    summaries = {p: p.stat().st_mtime_ns for p in (out / "arms").glob("*/seed*/summary.json")}
    assert len(summaries) == 2 * len(QUICK_ARMS)
    code, stdout, stderr = run_cli(quick_args(tiny, out)[:-1] + ["--methods", ",".join(METHODS), "--workers", "1"], monkeypatch, capsys)
    assert code == 0, stderr
    assert f"{2 * len(QUICK_ARMS)} run(s) already finished, skipped" in stderr and "scores (mda): reusing" in stderr
    assert {p: p.stat().st_mtime_ns for p in summaries} == summaries
    again = json.loads((out / "report" / "results.json").read_text())
    assert again["arms"] == quick["results"]["arms"] and again["verdicts"] == quick["results"]["verdicts"]

    command = again["commands"]["rerun_arm"]["remove-random"]  # the exact command the report gives
    assert command.startswith("curate experiment ") and command.endswith("--rerun remove-random")
    code, _, stderr = run_cli(shlex.split(command)[1:], monkeypatch, capsys)
    assert code == 0, stderr
    changed = {p for p, t in summaries.items() if p.stat().st_mtime_ns != t}
    assert changed == {out / "arms" / "remove-random" / f"seed{s}" / "summary.json" for s in (0, 1)}
    rerun = json.loads((out / "report" / "results.json").read_text())
    assert rerun["arms"]["remove-random"] == quick["results"]["arms"]["remove-random"]  # deterministic


@pytest.mark.slow
def test_window_after_step_zero_branches_from_the_baseline_checkpoint(tiny, quick, monkeypatch, capsys):
    """--model RUN --window 20:50: every arm continues the baseline's checkpoint step20 (weights, optimizer, RNG);
    seed-independent arms are trained once; the baseline arm continues the baseline run bit for bit."""
    base_run = quick["out"] / "baseline"
    out = tiny["base"] / "branch"
    args = ["experiment", "--model", base_run, "--circuit", "previous-token", "--threshold", "0.12", "--window", "20:50",
            "--arms", "remove-top,augment-top", "--seeds", "2", "--workers", "1", "--out", out, "--workspace", tiny["ws"], "--quiet"]
    code, _, stderr = run_cli(args, monkeypatch, capsys)
    assert code == 0, stderr
    res = json.loads((out / "report" / "results.json").read_text())
    assert (res["window"]["start"], res["window"]["end"], res["arm_steps"]) == (20, 50, 80)
    assert "checkpoint step20" in res["seed_varies"]
    runs = {a: res["arms"][a]["runs"] for a in res["arm_names"]}
    for arm in ("baseline", "remove-top"):
        assert runs[arm]["1"]["same_as"] == runs[arm]["0"]["run_dir"] and not (out / "arms" / arm / "seed1").exists()
    assert runs["augment-top"]["1"]["same_as"] is None  # its insertion order depends on the seed
    assert json.loads((out / "arms" / "augment-top" / "seed1" / "plan.json").read_text()) != \
        json.loads((out / "arms" / "augment-top" / "seed0" / "plan.json").read_text())
    run = json.loads((out / "arms" / "remove-top" / "seed0" / "run.json").read_text())
    assert run["start_step"] == 20 and run["spec"]["init_state"] and run["spec"]["revision"] == "step20"
    base_points = {p["step"]: p for p in json.loads((base_run / "curves.json").read_text())["points"]}
    arm_points = json.loads((out / "arms" / "baseline" / "seed0" / "curves.json").read_text())["points"]
    assert [p["step"] for p in arm_points] == list(range(0, 81, 10))
    for p in arm_points:
        assert p["previous_token"] == base_points[p["step"]]["previous_token"] and p["loss"] == base_points[p["step"]]["loss"]
    top = json.loads((out / "arms" / "remove-top" / "seed0" / "curves.json").read_text())["points"]
    assert top[2]["loss"] == base_points[20]["loss"] and top[-1]["loss"] != base_points[70]["loss"]


@pytest.mark.slow
def test_a_run_trained_with_shape_flags_is_a_baseline_from_step_zero(tiny, ray_session_for_module, monkeypatch, capsys):
    """`curate train --layers/--hidden/--heads/--context`, then `curate experiment --model RUN` with the window at step
    0: the arms rebuild the run's resolved model (its shape flags are not passed on beside it) and the seed-0 baseline
    arm reproduces the run."""
    run = tiny["base"] / "shaped-run"
    code, _, stderr = run_cli(["train", "--corpus", tiny["corpus"], "--layers", "2", "--hidden", "32", "--heads", "4",
                               "--context", "32", "--steps", "40", "--batch-size", "8", "--eval-every", "10", "--lr", "3e-3",
                               "--warmup-steps", "20", "--checkpoints", "every:10", "--threads", "1", "--out", run,
                               "--workspace", tiny["ws"], "--quiet"], monkeypatch, capsys)
    assert code == 0, stderr
    out = tiny["base"] / "shaped-exp"
    code, _, stderr = run_cli(["experiment", "--model", run, "--circuit", "previous-token", "--threshold", "0.12",
                               "--window", "0:20", "--checkpoints", "step20", "--arms", "remove-top", "--methods", "mda",
                               "--seeds", "1", "--workers", "1", "--out", out, "--workspace", tiny["ws"], "--quiet"],
                              monkeypatch, capsys)
    assert code == 0, stderr
    arm = json.loads((out / "arms" / "baseline" / "seed0" / "run.json").read_text())
    assert arm["spec"].get("architecture") is None and arm["model_config"] == json.loads((run / "run.json").read_text())["model_config"]
    base_points = {p["step"]: p["loss"] for p in json.loads((run / "curves.json").read_text())["points"]}
    arm_points = json.loads((out / "arms" / "baseline" / "seed0" / "curves.json").read_text())["points"]
    assert [p["loss"] for p in arm_points if p["step"] in base_points] == [base_points[p["step"]] for p in arm_points if p["step"] in base_points]


@pytest.mark.slow
def test_run_folder_baseline_refuses_baseline_flags(quick, tmp_path, monkeypatch, capsys):
    args = ["experiment", "--model", quick["out"] / "baseline", "--out", tmp_path / "exp", "--workspace", tmp_path / "ws"]
    for extra, message in ((["--batch-size", "4"], "the arms copy the settings of this run; give no batch size"),
                           (["--corpus", quick["out"]], "the run records its corpus"),
                           (["--model", quick["out"] / "arms" / "remove-top" / "seed0"], "was trained under a plan")):
        code, _, stderr = run_cli(args + extra, monkeypatch, capsys)
        assert code == 2 and len(stderr.strip().splitlines()) == 1 and message in stderr, stderr
    assert not (tmp_path / "exp").exists()


@pytest.mark.slow
def test_external_model_folder_is_its_own_baseline(tiny, quick, monkeypatch, capsys):
    """An external model (a folder of stepK/ HF checkpoints, like the hub's revisions): the arms start from its
    step{START} weights with a fresh optimizer; here those are the quick baseline's own, so the baseline arm
    retraces the quick baseline's curve exactly."""
    import shutil

    ext = tiny["base"] / "ext"
    for step in (0, 50):
        shutil.copytree(quick["out"] / "baseline" / "checkpoints" / f"step{step}", ext / f"step{step}")
        (ext / f"step{step}" / "trainer_state.pt").unlink()  # a plain HF folder, as downloaded
    out = tiny["base"] / "external"
    args = ["experiment", "--model", ext, "--corpus", tiny["corpus"], "--window", "0:50", "--circuit", "previous-token",
            "--threshold", "0.12", "--arms", "remove-top", "--seeds", "1", "--eval-every", "10", "--lr", "3e-3",
            "--warmup-steps", "20", "--schedule-steps", "100", "--workers", "1", "--out", out, "--workspace", tiny["ws"], "--quiet"]
    code, _, stderr = run_cli(args, monkeypatch, capsys)
    assert code == 0, stderr
    res = json.loads((out / "report" / "results.json").read_text())
    assert res["baseline"]["mode"] == "external" and res["arm_steps"] == 100
    assert res["scores"]["checkpoint"] == str(ext / "step50")
    run = json.loads((out / "arms" / "baseline" / "seed0" / "run.json").read_text())
    assert run["spec"]["init_from"] == str(ext / "step0") and run["start_step"] == 0 and not run["spec"]["init_state"]
    base_points = json.loads((quick["out"] / "baseline" / "curves.json").read_text())["points"]
    arm_points = json.loads((out / "arms" / "baseline" / "seed0" / "curves.json").read_text())["points"]
    assert [p["step"] for p in arm_points] == list(range(0, 101, 10))
    # the same weights at step 0; after it the arm trains with the Pythia optimizer settings (TrainSpec's
    # defaults and its own schedule: an external model is not the embedded default), the baseline with
    # the reference recipe's (training.recipes)
    assert arm_points[0]["previous_token"] == base_points[0]["previous_token"]
    assert arm_points[0]["loss"] == base_points[0]["loss"]
    assert arm_points[-1]["heldout_loss"] < arm_points[0]["heldout_loss"] - 0.5
    assert f"--model {ext / 'step50'}" in res["scores"]["command"]


@pytest.mark.slow
def test_dry_run_on_a_run_folder_counts_the_distinct_runs_and_writes_nothing(tiny, monkeypatch, capsys):
    """`--dry-run` on a finished run folder, window 20:40: the arms branch from step20, so the seed-independent arms
    (baseline, remove-top) train once and remove-random once per seed; the training steps are timed with the
    micro-batch; nothing is written (not even the experiment folder)."""
    from curate.training.spec import TrainSpec
    from curate.training.trainer import train

    run = tiny["base"] / "dry-run-baseline"
    config = json.loads(tiny["config"].read_text())
    train(TrainSpec(corpus=str(tiny["corpus"]), model_config=config, steps=60, batch_size=8, eval_every=10, lr=3e-3,
                    warmup_steps=20, checkpoints="log,every:10"), run, progress=False)
    before = sorted(p.name for p in tiny["base"].iterdir())
    out = tiny["base"] / "dry-run-exp"
    code, stdout, stderr = run_cli(["experiment", "--model", run, "--circuit", "previous-token", "--threshold", "0.12",
                                    "--window", "20:40", "--checkpoints", "step40", "--arms", "remove-top,remove-random",
                                    "--methods", "mda", "--seeds", "2", "--micro-batch", "4", "--workers", "1", "--out", out,
                                    "--dry-run", "--json", "--quiet"], monkeypatch, capsys)
    assert code == 0, stderr
    plan = json.loads(stdout)
    assert not out.exists() and sorted(p.name for p in tiny["base"].iterdir()) == before
    assert plan["baseline"]["mode"] == "run" and plan["window"]["start"] == 20 and plan["window"]["end"] == 40
    assert plan["arm_runs"] == 6 and plan["runs_to_train"] == 4
    assert plan["arm_steps"] == {"from": 20, "to": 60, "steps": 40}
    assert plan["tokens_trained"] == 4 * 40 * 8 * 32
    assert plan["rows_scored"] == 20 * 8 and plan["scoring"][0]["method"] == "mda"
    assert plan["train_calibration"]["micro_batch"] == 4 and plan["train_calibration"]["rows_per_step"] == 8
    assert plan["estimate"]["seconds_train"] == pytest.approx(
        4 * 40 * plan["train_calibration"]["seconds_per_step"])  # one worker: the runs one after another


def test_other_settings_in_the_same_folder_are_refused(tiny, quick, monkeypatch, capsys):
    before = (quick["out"] / "experiment.json").read_text()
    args = quick_args(tiny, quick["out"])
    args[args.index("--threshold") + 1] = "0.2"
    code, _, stderr = run_cli(args + ["--remove", "20%"], monkeypatch, capsys)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "holds an experiment with other settings (changed: k, threshold)" in lines[0]
    assert (quick["out"] / "experiment.json").read_text() == before


# --------------------------------------------------------------------------- statistics on hand-made numbers


def _run(arm: str, seed: int, emergence: int | None, score: float, icl: float, targeted: float, other: float,
         end: int = 200, lineage: bool = True) -> RunMetrics:
    return RunMetrics(arm=arm, seed=seed, run_dir=f"/runs/{arm}/{seed}", lineage=lineage, eval_every=10, steps=[0, end],
                      curves={}, emergence=emergence, emergence_targeted=emergence, emergence_other_metric=None,
                      final={"score": score, "targeted": targeted, "other": other, "icl": icl, "heldout_loss": 3.0},
                      mean={"score": score, "targeted": targeted, "other": other, "icl": icl, "heldout_loss": 3.0})


def _scenario(remove_top: list, augment_top: list) -> dict[str, dict[int, RunMetrics]]:
    """Baseline emergence 100/120/110; random controls like the baseline; targeted arms as given."""
    def arm(name, ems, scores, icls, tgt, oth):
        return {s: _run(name, s, ems[s], scores[s], icls[s], tgt[s], oth[s], lineage=s == 0) for s in range(3)}

    return {
        "baseline": arm("baseline", [100, 120, 110], [0.50, 0.52, 0.51], [-0.30, -0.32, -0.31], [0.50, 0.52, 0.51], [0.10] * 3),
        "remove-top": arm("remove-top", *remove_top),
        "remove-random": arm("remove-random", [101, 119, 110], [0.50, 0.51, 0.51], [-0.30, -0.31, -0.31], [0.50, 0.51, 0.51], [0.10] * 3),
        "augment-top": arm("augment-top", *augment_top),
        "augment-random": arm("augment-random", [100, 120, 100], [0.51, 0.52, 0.51], [-0.31, -0.32, -0.31], [0.51, 0.52, 0.51], [0.10] * 3),
    }


def test_effects_table_exact_deltas_with_censoring():
    runs = _scenario(
        remove_top=([150, 170, None], [0.40, 0.42, 0.20], [-0.20, -0.22, -0.10], [0.40, 0.42, 0.20], [0.09, 0.10, 0.10]),
        augment_top=([60, 70, 60], [0.60, 0.61, 0.60], [-0.40, -0.41, -0.40], [0.70, 0.61, 0.60], [0.11, 0.10, 0.10]),
    )
    effects = {e.arm: e for e in effects_table(runs)}
    base = effects["baseline"]
    assert base.emergence_delta == 0.0 and base.score_delta == 0.0 and base.formed == 3 and base.emergence_mean == 110.0
    rt = effects["remove-top"]
    # seed 2 never formed: its emergence step is only known to be > 200 -> deltas 50, 50, > 90, never averaged
    assert rt.formed == 2 and rt.emergence_mean == 160.0 and rt.emergence_censored
    assert rt.emergence_delta is None and rt.emergence_delta_std is None
    assert rt.emergence_pairs["diffs"] == [50, 50, 90] and rt.emergence_pairs["censored"] == [False, False, True]
    assert rt.score_delta == pytest.approx((-0.10 - 0.10 - 0.31) / 3) and rt.icl_delta == pytest.approx((0.10 + 0.10 + 0.21) / 3)
    assert rt.targeted_delta == pytest.approx(-0.10) and rt.other_delta == pytest.approx(-0.01)  # lineage seed 0 only
    assert rt.movement_ratio == pytest.approx(10.0)
    at = effects["augment-top"]
    assert at.emergence_delta == pytest.approx(-140 / 3) and not at.emergence_censored
    assert at.targeted_delta == pytest.approx(0.20) and at.other_delta == pytest.approx(0.01) and at.movement_ratio == pytest.approx(20.0)

    for arm_runs in runs.values():
        for r in arm_runs.values():
            r.auc = r.final["score"]  # stands in for the area (the curves are not given)
    comps = {c.arm: c for c in comparisons(runs)}
    assert comps["remove-top"].metric == "auc" and comps["remove-top"].expected == "lower"  # one run never formed
    assert comps["remove-top"].paired.a_values == [0.40, 0.42, 0.20] and comps["remove-top"].direction_ok
    a = comps["augment-top"]
    assert a.metric == "emergence" and a.expected == "sooner" and a.direction_ok
    assert a.paired.a_values == [60.0, 70.0, 60.0] and a.paired.b_values == [100.0, 120.0, 100.0]
    ref = stats.ttest_rel([60, 70, 60], [100, 120, 100])
    assert a.test.kind == "paired" and a.test.p == pytest.approx(ref.pvalue) and ref.pvalue < 0.05
    # Holm across the table's tests
    with_p = [c.test for c in comps.values() if c.test is not None and c.test.p is not None]
    assert [t.p_holm for t in with_p] == pytest.approx(holm([t.p for t in with_p]))


def test_run_means_see_a_delay_that_final_values_do_not():
    """Two runs that end at the same values, one forming 300 steps later: equal finals, different run means."""
    def points(onset: int) -> list[dict]:
        out = []
        for step in range(0, 1001, 100):
            v = 0.9 if step >= onset else 0.05
            out.append({"step": step, "induction": [[0.0, 0.0], [v, 0.1]], "previous_token": [[v, 0.0], [0.0, 0.0]],
                        "icl": -0.4 if step >= onset else -0.1, "loss": 3.0, "heldout_loss": 3.0})
        return out

    early = metrics_from_points("baseline", 0, "/a", points(400), "induction", [HeadRef(1, 0)], 0.3, 100, True)
    late = metrics_from_points("remove-top", 0, "/b", points(700), "induction", [HeadRef(1, 0)], 0.3, 100, True)
    # the crossing of 0.3 interpolated between the evaluation before the onset and the onset
    # (the circuit score is the best eligible head: 0.1 before the onset, the other layer-1 head)
    assert (early.emergence, late.emergence) == (pytest.approx(300 + 100 * 0.2 / 0.8), pytest.approx(600 + 100 * 0.2 / 0.8))
    assert (early.emergence_evaluated, late.emergence_evaluated) == (400, 700)
    assert early.final == late.final
    assert early.mean["score"] == pytest.approx((7 * 0.9 + 4 * 0.1) / 11) and late.mean["score"] == pytest.approx((4 * 0.9 + 7 * 0.1) / 11)
    assert late.mean["targeted"] - early.mean["targeted"] == pytest.approx(-3 * 0.85 / 11)
    assert late.mean["icl"] - early.mean["icl"] == pytest.approx(3 * 0.3 / 11)  # ICL worse for longer: co-moves
    assert late.mean["other"] == early.mean["other"] == pytest.approx(0.1)


def test_verdicts_when_the_effects_hold_and_when_they_do_not():
    runs = _scenario(
        remove_top=([150, 175, 160], [0.40, 0.42, 0.41], [-0.20, -0.22, -0.21], [0.40, 0.42, 0.41], [0.09, 0.10, 0.10]),
        augment_top=([60, 70, 60], [0.60, 0.61, 0.60], [-0.40, -0.41, -0.40], [0.70, 0.61, 0.60], [0.11, 0.10, 0.10]),
    )
    got = {v.key: v.status for v in verdicts(runs, effects_table(runs))}
    assert got == {"remove_top_delays": "observed", "remove_random_no_effect": "observed", "augment_top_sooner": "observed",
                   "icl_co_moves": "observed", "other_heads_move_less": "observed"}

    same = _scenario(  # targeted arms behave like the baseline: nothing may be claimed
        remove_top=([100, 120, 110], [0.50, 0.52, 0.51], [-0.30, -0.32, -0.31], [0.50, 0.52, 0.51], [0.10] * 3),
        augment_top=([110, 120, 100], [0.50, 0.52, 0.51], [-0.30, -0.32, -0.31], [0.50, 0.52, 0.51], [0.10] * 3),
    )
    got = {v.key: v for v in verdicts(same, effects_table(same))}
    # remove-top = the baseline exactly: no spread in the differences, no test
    assert got["remove_top_delays"].status == "inconclusive" and "no spread" in got["remove_top_delays"].detail
    # remove-random - baseline = +1, -1, 0: equivalent within +- 5.5 steps (5% of the baseline's mean 110)
    assert got["remove_random_no_effect"].status == "observed" and "within +- 6 steps" in got["remove_random_no_effect"].detail
    assert got["augment_top_sooner"].status == "not observed"  # same means: no difference in the expected direction
    assert got["icl_co_moves"].status == "not observed"
    assert got["other_heads_move_less"].status == "inconclusive"

    del same["augment-top"], same["augment-random"], same["remove-random"]
    got = {v.key: v.status for v in verdicts(same, effects_table(same))}
    assert got["augment_top_sooner"] == "not run" and got["remove_random_no_effect"] == "not run"


def test_no_emergence_is_not_testable_and_shows_the_final_scores():
    def arm(name, scores):
        return {s: _run(name, s, None, scores[s], -0.3, scores[s], 0.1, lineage=s == 0) for s in range(2)}

    runs = {"baseline": arm("baseline", [0.20, 0.21]), "remove-top": arm("remove-top", [0.10, 0.12])}
    effects = {e.arm: e for e in effects_table(runs)}
    assert effects["remove-top"].emergence_delta is None and effects["remove-top"].formed == 0
    v = verdicts(runs, list(effects.values()))[0]
    assert v.status == "not testable" and v.detail.startswith("the baseline's circuit never formed inside the run")
    assert "p = " not in v.detail and "censored" in v.detail  # the numbers, not a verdict
    single = {a: {0: r[0]} for a, r in runs.items()}
    v = verdicts(single, effects_table(single))[0]
    assert v.status == "not testable"


def test_curve_metrics_split_targeted_and_other_heads():
    # 2 layers x 2 heads; induction: layer 0 is not eligible
    points = [
        {"step": 0, "induction": [[0.9, 0.0], [0.1, 0.2]], "previous_token": [[0.1, 0.5], [0.2, 0.0]], "icl": -0.1, "loss": None, "heldout_loss": 4.0},
        {"step": 10, "induction": [[0.9, 0.0], [0.4, 0.2]], "previous_token": [[0.1, 0.6], [0.2, 0.0]], "icl": -0.2, "loss": 3.0, "heldout_loss": 3.5},
        {"step": 20, "induction": [[0.9, 0.0], [0.5, 0.1]], "previous_token": [[0.1, 0.7], [0.3, 0.0]], "icl": -0.3, "loss": 2.0, "heldout_loss": 3.0},
    ]
    m = metrics_from_points("baseline", 0, "/r", points, "induction", [HeadRef(1, 0)], 0.3, 10, True)
    assert m.curves["induction_best"] == [0.2, 0.4, 0.5]  # layer 0's 0.9 is positional, never counted
    assert m.curves["induction_targeted"] == [0.1, 0.4, 0.5] and m.curves["induction_other"] == [0.2, 0.2, 0.1]
    assert m.curves["previous_token_targeted"] == [0.2, 0.2, 0.3]
    assert m.curves["previous_token_other"] == pytest.approx([0.2, 0.7 / 3, 0.8 / 3])
    # crossings interpolated: best 0.2 -> 0.4 between steps 0 and 10 crosses 0.3 at step 5
    assert m.emergence == pytest.approx(5.0) and m.emergence_evaluated == 10 and m.emergence_targeted == pytest.approx(20 / 3)
    assert m.emergence_other_metric == 0
    assert m.final == {"score": 0.5, "targeted": 0.5, "other": 0.1, "induction_best": 0.5, "previous_token_best": 0.7,
                       "icl": -0.3, "heldout_loss": 3.0, "loss": 2.0}
    with pytest.raises(CurateError, match="targeted head 2.0 is outside"):
        metrics_from_points("baseline", 0, "/r", points, "induction", [HeadRef(2, 0)], 0.3, 10, True)


# --------------------------------------------------------------------------- bad inputs


BAD = [
    (["--remove", "0%"], "--remove '0%'"),
    (["--remove", "150%"], "--remove '150%'"),
    (["--augment", "ten"], "--augment 'ten'"),
    (["--seeds", "0"], "--seeds must be at least 1"),
    (["--arms", "remove-top,bogus"], "unknown arm 'bogus'"),
    (["--arms", "remove-top", "--rerun", "augment-top"], "--rerun augment-top: not one of the arms run"),
    (["--window", "9:3"], "END must be after START"),
    (["--threshold", "1.5"], "--threshold must be in (0, 1]"),
    (["--device", "tpu"], "--device 'tpu'"),
    (["--arm-checkpoints", "every:x"], "checkpoint steps 'every:x'"),
    (["--scales", "--sizes", "32x2,48x2"], "at least three model sizes"),
    (["--scales", "--sizes", "32x2,abc,48x2"], "'abc' is not HIDDENxLAYERS"),
    (["--scales", "--sizes", "30x1,32x2,48x2"], "hidden size 30 is not a multiple of the 4 attention heads"),
    (["--config", "{base}/missing.json"], "missing.json: model config file not found"),
    (["--corpus", "{base}/missing-corpus"], "no such file or folder"),
    (["--ensemble", "1"], "--ensemble 1: an ensemble needs at least 2 members"),
    (["--ensemble", "2"], "--ensemble 2 takes the seeded reference runs: it needs the reference baseline"),
    (["--ensemble", "a,,b"], "--ensemble 'a,,b': expected K or the other members' run folders"),
]


@pytest.mark.parametrize("extra, message", BAD, ids=[" ".join(e) for e, _ in BAD])
def test_bad_input_is_one_error_line_and_writes_nothing(tiny, tmp_path, monkeypatch, capsys, extra, message):
    out = tmp_path / "exp"
    args = quick_args(tiny, out)
    for flag in ("--config", "--corpus"):  # the bad value replaces the good one
        if flag in extra:
            i = args.index(flag)
            del args[i : i + 2]
    extra = [e.format(base=tiny["base"]) for e in extra]
    code, _, stderr = run_cli(args + extra, monkeypatch, capsys)
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert message in lines[0]
    assert not out.exists()


MODEL_BAD = [
    (["--revision", "step5"], "--revision names a checkpoint of --model"),
    (["--model", "EleutherAI/pythia-70m"], "an external model needs a corpus"),
    (["--model", "EleutherAI/pythia-70m", "--corpus", "{corpus}"], "an external model needs a window"),
    (["--model", "./no/such/model", "--corpus", "{corpus}", "--window", "0:10"], "model folder not found"),
    (["--model", "{base}", "--corpus", "{corpus}", "--window", "0:10"], "no step0/ checkpoint folder inside"),
    (["--model", "EleutherAI/pythia-70m", "--config", "{config}"], "give one of them"),
    (["--scales", "--model", "EleutherAI/pythia-70m"], "--scales trains its own baseline per model size"),
    (["--model", "EleutherAI/pythia-70m", "--corpus", "{corpus}", "--window", "0:10", "--ensemble", "a"], "an external model has no seeds"),
]


@pytest.mark.parametrize("extra, message", MODEL_BAD, ids=[" ".join(e) for e, _ in MODEL_BAD])
def test_bad_model_flags(tiny, tmp_path, monkeypatch, capsys, extra, message):
    out = tmp_path / "exp"
    extra = [e.format(base=tiny["base"], corpus=tiny["corpus"], config=tiny["config"]) for e in extra]
    code, _, stderr = run_cli(["experiment", "--out", out, "--workspace", tmp_path / "ws", "--quiet", *extra], monkeypatch, capsys)
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], stderr
    assert not out.exists() and not (tmp_path / "ws").exists()


def test_arms_that_would_read_held_out_rows_are_refused(tiny, tmp_path, monkeypatch, capsys):
    from curate.corpus import open_corpus

    rows = open_corpus(tiny["corpus"]).num_rows
    too_many = rows // 8  # every row at batch 8: past the held-out tail
    args = quick_args(tiny, tmp_path / "exp") + ["--steps", str(too_many), "--arms", "remove-top"]
    code, _, stderr = run_cli(args, monkeypatch, capsys)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and f"steps {too_many}: the arms would read past row" in lines[0], stderr
