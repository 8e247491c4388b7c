"""The experiment's method comparison and honest verdicts (`pipelines.method_table`, `pipelines.effects`): the
method table recomputed by hand from per-seed runs, the Spearman correlations between methods' scores, "not
testable" where the baseline never formed or with fewer than three seeds, and which heads move by role. Pure
numbers on synthetic runs: no training (the end-to-end comparison rides on the quick experiment of
`tests/test_experiment.py`)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from curate.attribution.score_table import ScoreTable
from curate.attribution.scores_folder import write_summary
from curate.errors import CurateError
from curate.pipelines.effects import comparisons, effects_table, head_movement, head_roles, untestable_reason
from curate.pipelines.experiment_options import ExperimentOptions, chosen_methods, parse_methods
from curate.pipelines.method_table import method_table, spearman_matrix
from curate.pipelines.methods import method_arms
from curate.pipelines.report import Doc, controls_section, method_section, render_md, verdicts_section
from curate.pipelines.run_metrics import RunMetrics, add_outcomes
from curate.pipelines.verdicts import verdicts
from curate.stats import holm


def _run(arm: str, seed: int, emergence: int | None, head_means: list[list[float]] | None = None, end: int = 200,
         lineage: bool = True, same_as: str | None = None) -> RunMetrics:
    return RunMetrics(arm=arm, seed=seed, run_dir=f"/runs/{arm}/{seed}", lineage=lineage, eval_every=10, steps=[0, end],
                      curves={"induction_best": [0.01, 0.02 if emergence is None else 0.5]}, emergence=emergence,
                      emergence_targeted=emergence, emergence_other_metric=None,
                      final={"score": 0.5, "targeted": 0.5, "other": 0.1, "icl": -0.3, "heldout_loss": 3.0},
                      mean={"score": 0.5, "targeted": 0.5, "other": 0.1, "icl": -0.3, "heldout_loss": 3.0},
                      head_means={"induction": head_means or [[0.0, 0.0], [0.0, 0.0]], "previous_token": [[0.0, 0.0], [0.0, 0.0]]},
                      same_as=same_as)


def _arm(name: str, steps: list[int | None]) -> dict[int, RunMetrics]:
    return {s: _run(name, s, e) for s, e in enumerate(steps)}


RUNS = {
    "baseline": _arm("baseline", [100, 120, 110]),
    "remove-top": _arm("remove-top", [150, 175, 160]),
    "remove-random": _arm("remove-random", [101, 119, 110]),
    "augment-top": _arm("augment-top", [60, 70, 60]),
    "augment-random": _arm("augment-random", [100, 120, 100]),
    "remove-top-copy-share": _arm("remove-top-copy-share", [190, None, 180]),  # seed 1 never formed: > 200
    "augment-top-copy-share": _arm("augment-top-copy-share", [90, 100, 100]),
}


def test_method_table_is_the_per_seed_shifts_and_their_paired_tests() -> None:
    rows = {r.method: r for r in method_table(RUNS, ["mda", "copy-share"], 0.3, "induction", outcomes=("emergence",))}
    mda, cs = rows["mda"], rows["copy-share"]
    assert mda.status == cs.status == "tested" and mda.reason == ""
    assert mda.delay.values == [50, 55, 50] and mda.delay.mean == pytest.approx(155 / 3) and not any(mda.delay.censored)
    assert mda.delay.sd == pytest.approx(np.std([50, 55, 50], ddof=1))
    assert mda.advance.values == [-40, -50, -50] and mda.advance.mean == pytest.approx(-140 / 3)
    # delay vs the control: remove-top - remove-random per seed = 49, 56, 50
    ref = stats.ttest_rel([150, 175, 160], [101, 119, 110])
    t = mda.delay.vs_control.test
    assert t.kind == "paired" and t.mean_diff == pytest.approx(155 / 3)
    assert t.t == pytest.approx(ref.statistic) and t.p == pytest.approx(ref.pvalue)
    assert mda.delay.vs_mda is None  # MDA against itself: no test
    # copy-share's seed 1 never formed: censored (> 200 - 120), never averaged, never tested
    assert cs.delay.values == [90, 80, 70] and cs.delay.censored == [False, True, False] and cs.delay.mean is None
    assert cs.delay.vs_mda.test is None and "censored" in cs.delay.vs_mda.note
    ref = stats.ttest_rel([90, 100, 100], [100, 120, 100])
    assert cs.advance.vs_control.test.p == pytest.approx(ref.pvalue) and cs.advance.vs_control.test.df == 2
    # Holm across the table's tests (every test with a p)
    tests = [p.test for r in (mda, cs) for s_ in (r.delay, r.advance) for p in (s_.vs_control, s_.vs_mda)
             if p is not None and p.test is not None and p.test.p is not None]
    assert [t.p_holm for t in tests] == pytest.approx(holm([t.p for t in tests]))
    assert method_arms("copy-share") == ("remove-top-copy-share", "augment-top-copy-share")


def test_continuous_outcomes_are_read_at_the_reference_step_and_over_the_common_span() -> None:
    runs = {arm: {s: replace(r, steps=[0, 100, 200], curves={"induction_best": [0.0, 0.2 if arm == "baseline" else 0.1, 0.6]})
                  for s, r in by_seed.items()} for arm, by_seed in RUNS.items() if arm in ("baseline", "remove-top")}
    steps = add_outcomes(runs, "induction")
    assert steps.reference == pytest.approx(110) and (steps.auc_from, steps.auc_to) == (0, 200)
    base, top = runs["baseline"][0], runs["remove-top"][0]
    assert base.score_at_reference == pytest.approx(0.2 + 0.1 * 0.4) and top.score_at_reference == pytest.approx(0.1 + 0.1 * 0.5)
    assert base.auc == pytest.approx((0.2 * 100 / 2 + (0.2 + 0.6) * 100 / 2) / 200)
    assert top.auc == pytest.approx((0.1 * 100 / 2 + (0.1 + 0.6) * 100 / 2) / 200)


def test_not_testable_where_the_baseline_never_formed_or_has_fewer_than_three_distinct_runs() -> None:
    never = {arm: {s: _run(arm, s, None) for s in range(3)} for arm in ("baseline", "remove-top", "remove-random",
                                                                       "augment-top", "augment-random")}
    reason = untestable_reason(never["baseline"], 0.3, "induction")
    assert reason.startswith("the baseline's circuit never formed inside the run (seed 0: best score 0.02") and "< threshold 0.3" in reason
    got = verdicts(never, effects_table(never), 0.3, "induction")
    assert {v.status for v in got} == {"not testable"} and all(v.detail.startswith("the baseline's circuit never formed") for v in got)
    rows = method_table(never, ["mda"], 0.3, "induction")
    assert rows[0].status == "not testable" and rows[0].reason == reason

    two = {arm: {s: r for s, r in runs.items() if s < 2} for arm, runs in RUNS.items()}
    got = verdicts(two, effects_table(two))
    assert {v.status for v in got} == {"not testable"}
    assert got[0].detail.startswith("distinct baseline runs < 3 (2 distinct runs over 2 seeds): no seed spread")
    del two["augment-top"]
    assert {v.key: v.status for v in verdicts(two, effects_table(two))}["augment_top_sooner"] == "not run"
    # one baseline run copied to three seeds (an external model) is one distinct run
    one = dict(RUNS, baseline={s: _run("baseline", s, 110, same_as="/runs/baseline/0") for s in range(3)})
    assert untestable_reason(one["baseline"]).startswith("distinct baseline runs < 3 (1 distinct run over 3 seeds)")
    # three distinct runs and a formed baseline: judged by paired tests, Holm across the table
    got = {v.key: v for v in verdicts(RUNS, effects_table(RUNS))}
    assert got["remove_top_delays"].status == "observed" and "paired t-test p = " in got["remove_top_delays"].detail
    assert got["augment_top_sooner"].status == "observed" and "(Holm " in got["augment_top_sooner"].detail
    # no effect only by equivalence: remove-random - baseline = +1, -1, 0, inside +- 5.5 steps (5% of 110)
    assert got["remove_random_no_effect"].status == "observed" and "within +- 6 steps" in got["remove_random_no_effect"].detail


def _report(runs: dict) -> str:
    """The report's verdicts, method tables and controls table for these runs, as Markdown."""
    reason = untestable_reason(runs["baseline"], 0.3, "induction")
    results = {"verdicts": [v.to_json() for v in verdicts(runs, effects_table(runs), 0.3, "induction")],
               "comparisons": [c.to_json() for c in comparisons(runs, reason)], "test": "paired t-test",
               "method_table": [r.to_json() for r in method_table(runs, ["mda", "copy-share"], 0.3, "induction")]}
    doc = Doc()
    method_section(doc, results)
    verdicts_section(doc, results)
    controls_section(doc, results)
    return render_md(doc)


def test_the_report_prints_no_p_value_its_rules_call_untestable() -> None:
    """A censored run, one distinct baseline run, two seeds: no p where the rules give none."""
    for r in RUNS.values():
        for run in r.values():
            run.auc, run.score_at_reference = None, None
    # censored: copy-share's remove-top seed 1 never formed; the rest is testable
    md = _report(RUNS)
    cs_row = next(line for line in md.splitlines() if line.startswith("| copy-share | censored"))
    assert "p = " not in cs_row.split("|")[2] + cs_row.split("|")[3] + cs_row.split("|")[4]
    assert "> +80" in cs_row and "p = " in md  # the uncensored shifts are tested
    # one distinct baseline run (copied to three seeds) and two seeds: not testable, no p anywhere
    one = dict(RUNS, baseline={s: _run("baseline", s, 110, same_as="/runs/baseline/0") for s in range(3)})
    two = {arm: {s: r for s, r in runs.items() if s < 2} for arm, runs in RUNS.items()}
    for case in (one, two):
        md = _report(case)
        assert "not testable" in md and "p = " not in md and "Holm" not in md.replace("Holm-", "")


def test_heads_are_grouped_by_role_and_their_movement_compared() -> None:
    point = {"induction": [[0.9, 0.0], [0.6, 0.1]], "previous_token": [[0.1, 0.5], [0.0, 0.2]]}
    roles = head_roles(point, 0.3)  # layer 0 cannot be an induction head (two layers)
    assert roles == {"0.0": "other", "0.1": "previous-token", "1.0": "induction", "1.1": "other"}
    base = {0: _run("baseline", 0, 100, [[0.1, 0.2], [0.5, 0.1]]), 1: _run("baseline", 1, 100, lineage=False)}
    arm = {0: _run("remove-top", 0, 150, [[0.12, 0.17], [0.3, 0.09]]), 1: _run("remove-top", 1, 150, lineage=False)}
    hm = head_movement("remove-top", {"baseline": base, "remove-top": arm}, roles, "induction")
    assert hm.seeds == [0]  # lineage seeds only: the heads are the scored model's
    assert hm.per_head == pytest.approx({"0.0": 0.02, "0.1": -0.03, "1.0": -0.2, "1.1": -0.01})
    assert hm.movement["induction"] == pytest.approx(0.2) and hm.movement["previous-token"] == pytest.approx(0.03)
    assert hm.movement["other"] == pytest.approx(0.015) and hm.signed["other"] == pytest.approx(0.005)
    assert hm.ratio_other_induction == pytest.approx(0.075)
    assert head_movement("augment-top", {"baseline": base}, roles, "induction") is None


def _scores_folder(folder: Path, ids: list[int], values: list[float]) -> Path:
    table = ScoreTable(np.asarray(ids), np.zeros(len(ids)), np.zeros(len(ids)), np.zeros((len(ids), 0)), [], {}, np.asarray(values))
    table.to_parquet(folder / "shards" / "rows-a.parquet")
    write_summary(folder, {"corpus": "x"})
    return folder


def test_spearman_between_methods_over_the_rows_both_scored(tmp_path) -> None:
    a = _scores_folder(tmp_path / "a", [3, 1, 2, 0, 4], [5.0, 1.0, 3.0, 0.0, 4.0])
    b = _scores_folder(tmp_path / "b", [0, 1, 2, 3, 4], [0.1, 0.2, 0.3, 0.5, 0.4])
    c = _scores_folder(tmp_path / "c", [0, 1, 2, 3, 4], [5.0, 4.0, 3.0, 2.0, 1.0])
    got = spearman_matrix({"mda": a, "gradient-dot": b, "copy-share": c})
    assert got["rows"] == 5 and got["methods"] == ["mda", "gradient-dot", "copy-share"]
    # mda by row id 0..4 = 0, 1, 3, 5, 4: the same ranks as b;
    # ranks 1, 2, 3, 5, 4 vs 5, 4, 3, 2, 1: d^2 = 16, 4, 0, 9, 9 -> 1 - 6 * 38 / (5 * 24) = -0.9
    assert got["rho"]["mda|gradient-dot"] == pytest.approx(1.0) and got["rho"]["mda|copy-share"] == pytest.approx(-0.9)


def test_methods_option_and_the_report_opens_with_the_method_table() -> None:
    assert chosen_methods(ExperimentOptions()) == ["mda", "gradient-dot", "copy-share"]
    assert chosen_methods(ExperimentOptions(quick=True)) == ["mda"]
    assert parse_methods("copy-share") == ["mda", "copy-share"]
    assert parse_methods("loss,copy-share") == ["mda", "copy-share", "loss"]  # any registry method, not only the default ones
    with pytest.raises(CurateError, match="unknown method 'lossy'"):
        parse_methods("mda,lossy")
    with pytest.raises(CurateError, match="--methods 'mda,x'"):
        ExperimentOptions(methods="mda,x").validate()
    with pytest.raises(CurateError, match="--aggregate 'avg'"):
        ExperimentOptions(aggregate="avg").validate()
    rows = [r.to_json() for r in method_table(RUNS, ["mda", "copy-share"], outcomes=("emergence",))]
    results = {"circuit": "induction", "method_table": rows, "method_test": "paired t-test",
               "spearman": {"rows": 5, "rho": {"mda|copy-share": 0.25}}, "threshold": 0.3,
               "head_roles": {"1.0": "induction", "1.1": "other"},
               "head_movement": [{"arm": "remove-top", "movement": {"induction": 0.2, "previous-token": None, "other": 0.02},
                                  "ratio_other_induction": 0.1}]}
    doc = Doc()
    method_section(doc, results)
    md = render_md(doc)
    assert md.index("Methods compared") < md.index("Spearman") < md.index("Which heads move")
    p = stats.ttest_rel([150, 175, 160], [101, 119, 110]).pvalue
    holm_p = rows[0]["delay"]["vs_control"]["test"]["p_holm"]
    assert f"| mda | +52 +- 3 (n=3: +50, +55, +50) | diff +52, p = {p:.3g} (Holm {holm_p:.3g}) | - |" in md
    assert "| copy-share | censored (n=3: +90, > +80, +70)" in md and "| mda vs copy-share | 0.25 |" in md
    assert "| remove-top | 0.2 | - | 0.02 | 0.1 |" in md


def test_methods_bring_their_arms_and_score_options_enter_the_identity(tmp_path, monkeypatch) -> None:
    from curate.attribution.scores_folder import Window
    from curate.pipelines import experiment_scores
    from curate.pipelines.arms import ALL_ARMS
    from curate.pipelines.experiment_setting import resolve_setting
    from tests.score_helpers import build_tiny_corpus

    corpus = str(build_tiny_corpus(tmp_path / "corpus"))
    base = dict(corpus=corpus, workspace=tmp_path / "ws", out=tmp_path / "exp")
    s = resolve_setting(ExperimentOptions(**base, methods="copy-share,mda"), lambda m: None)
    assert s.methods == ["mda", "copy-share"] and s.seeds == [0, 1, 2]
    assert s.arms == [*ALL_ARMS, "remove-top-copy-share", "augment-top-copy-share"]
    # the MDA default on a curate run: trajectory scores summed over auto checkpoints (the dev study's choice); an
    # external model has no saved-checkpoint list for auto, so it keeps one checkpoint
    assert s.identity["score_checkpoints"] == "auto" and s.identity["score_aggregate"] == "sum" and s.identity["score_mode"] == "qkvo"
    assert replace(s, baseline=replace(s.baseline, mode="external")).score_checkpoints is None
    s = resolve_setting(ExperimentOptions(**base, arms="remove-top-gradient-dot", first_seed=100, seeds=3, score_mode="qk",
                                          checkpoints="auto", aggregate="segment"), lambda m: None)
    assert s.arms == ["baseline", "remove-top-gradient-dot"] and s.methods == ["mda", "gradient-dot"]
    assert s.seeds == [100, 101, 102]
    assert s.identity["score_mode"] == "qk" and s.identity["score_checkpoints"] == "auto" and s.identity["score_aggregate"] == "segment"
    assert "score_token_aggregate" not in s.identity  # the plain sum: the identity experiments had before the option
    # the levers of curate score reach the experiment's MDA scores (and its identity); the other methods keep the sum
    levers = dict(checkpoints="transition:3", aggregate="lr-sum", token_aggregate="positive")
    s = resolve_setting(ExperimentOptions(**base, methods="mda,gradient-dot", **levers), lambda m: None)
    assert (s.identity["score_checkpoints"], s.identity["score_aggregate"], s.identity["score_token_aggregate"]) == tuple(levers.values())
    asked = {}
    monkeypatch.setattr(experiment_scores, "resolve_scoring", lambda req, log: asked.setdefault(req.method, req))
    window = Window(0, 4, 8)
    for method in s.methods:
        experiment_scores.score_job(s, window, lambda m: None, method, heads="1.0")
    mda, dot = asked["mda"], asked["gradient-dot"]
    assert (mda.checkpoints, mda.aggregate, mda.token_aggregate) == tuple(levers.values())
    assert (dot.checkpoints, dot.aggregate, dot.token_aggregate) == (None, "sum", "sum")
    flags = " ".join(ExperimentOptions(**base, **levers).flags())  # what the experiment records to be rerun
    assert "--checkpoints transition:3 --aggregate lr-sum --token-aggregate positive" in flags
    from curate.pipelines.evaluate_options import EvaluateOptions

    EvaluateOptions(**base, **levers).validate()  # curate evaluate takes the same levers (its options are the experiment's)
    quick = resolve_setting(ExperimentOptions(**base, quick=True), lambda m: None)
    assert quick.arms == list(ALL_ARMS) and quick.methods == ["mda"]
    assert any(n.startswith("--quick checks that the pipeline runs end to end; it cannot test the effects") for n in quick.notes)


def test_a_registered_method_reaches_the_score_command_the_arms_the_options_and_the_method_table(monkeypatch) -> None:
    """A new scoring method is one registry line (plus its scorer's module): here a test method."""
    from curate.pipelines import methods
    from curate.pipelines.arms import arm_defs, method_arm_names, parse_arms
    from curate.pipelines.score_methods import score_method
    from curate.pipelines.score_request import ScoreRequest

    monkeypatch.setitem(methods.REGISTRY, "row-length", methods.Method(
        "row-length", "the row's token count", scorer="tests.test_method_table:row_length", compared=True))
    ScoreRequest(method="row-length").validate()  # `curate score --method row-length` is accepted
    assert "row-length" in methods.method_names() and "row-length (the row's token count)" in methods.methods_help()
    scorer = score_method("row-length")
    assert not scorer.per_head and scorer.statistic(None, np.zeros((2, 5), dtype=np.int64))[1].tolist() == [5.0, 5.0]
    assert chosen_methods(ExperimentOptions()) == ["mda", "gradient-dot", "copy-share", "row-length"]
    assert parse_methods("row-length") == ["mda", "row-length"]
    assert method_arm_names(["row-length"]) == ["remove-top-row-length", "augment-top-row-length"]
    assert parse_arms("augment-top-row-length") == ["baseline", "augment-top-row-length"]
    d = arm_defs()["remove-top-row-length"]
    assert d.method == "row-length" and d.control_arm == "remove-random" and d.expected == "later"
    runs = dict(RUNS, **{"remove-top-row-length": _arm("remove-top-row-length", [120, 140, 130]),
                         "augment-top-row-length": _arm("augment-top-row-length", [95, 115, 105])})
    row = next(r for r in method_table(runs, ["mda", "row-length"], outcomes=("emergence",)) if r.method == "row-length")
    assert row.delay.values == [20, 20, 20] and row.advance.values == [-5, -5, -5]
    assert [c.arm for c in comparisons(runs)][-2:] == ["remove-top-row-length", "augment-top-row-length"]
    with pytest.raises(CurateError, match="expected one of mda, gradient-dot, copy-share, loss"):
        monkeypatch.delitem(methods.REGISTRY, "row-length")
        ScoreRequest(method="row-length").validate()


def row_length(model, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The test method's row statistic: (NaN losses, the row's length)."""
    rows = np.asarray(rows)
    return np.full(len(rows), np.nan, dtype=np.float32), np.full(len(rows), float(rows.shape[1]))
