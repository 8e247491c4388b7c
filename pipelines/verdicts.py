"""The effects MDA-SPEC section 4 expects, each judged on the experiment's numbers in plain words: observed, not
observed, inconclusive, not run, or not testable (with the reason).

- remove-top delays formation: paired t-test of the emergence step, remove-top against the baseline (the area
  under the circuit curve when a pair is censored: expected lower).
- remove-random does not move it: "no effect" only when TOST shows the paired difference inside +- the margin
  (`effects.EQUIVALENCE_SHARE` of the baseline's mean emergence step); a significant t-test says it moved;
  neither: inconclusive.
- augment-top forms sooner than augment-random: paired, on the emergence step (the area when censored).
- ICL co-moves, and the heads not targeted move less: run-mean deltas against the baseline's seed spread.
The t-tests of this table are Holm-corrected together; a status rests on the Holm-adjusted p."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from curate.pipelines.effects import (
    ALPHA, EQUIVALENCE_SHARE, Comparison, Effect, Paired, compare_to_control, paired_outcome, untestable_reason,
)
from curate.pipelines.report_format import fmt, fmt_diffs
from curate.pipelines.run_metrics import RunMetrics
from curate.stats import Equivalence, apply_holm, mean_std, tost_paired


@dataclass
class Verdict:
    """An effect the method predicts, and whether these numbers show it."""

    key: str
    expectation: str
    status: str  # observed / not observed / inconclusive / not run / not testable
    detail: str

    def to_json(self) -> dict:
        return asdict(self)


def p_text(p: Paired) -> str:
    """`paired t-test p = 0.01 (Holm 0.03)`, or why there is no test."""
    t = p.test
    if t is None or t.p is None:
        return f"no test: {p.note or (t.note if t is not None else '')}".rstrip(": ")
    return f"paired t-test p = {fmt(t.p)} (Holm {fmt(t.p_holm)})"


def values_text(p: Paired) -> str:
    """Per-pair differences, a censored one as a bound (`report.fmt_diffs`)."""
    return fmt_diffs(p.to_json())


def _significant(p: Paired) -> bool:
    return p.test is not None and p.test.p_holm is not None and p.test.p_holm < ALPHA


def _base_mean(base: dict[int, RunMetrics]) -> float | None:
    vals = [r.emergence for r in base.values()]
    return mean_std([float(v) for v in vals])[0] if vals and all(v is not None for v in vals) else None  # type: ignore[arg-type]


def _spread(runs: dict[int, RunMetrics], key: str, kind: str = "final") -> float | None:
    values = [getattr(r, kind).get(key) for r in runs.values()]
    return mean_std([float(v) for v in values if v is not None])[1]


def _shift_verdict(name: str, expectation: str, p: Paired | None, missing: str, base_mean: float | None) -> Verdict:
    """remove-top against the baseline: later (emergence) / lower (area)."""
    if p is None:
        return Verdict(name, expectation, "not run", missing)
    what = "emergence step" if p.outcome == "emergence" else "area under the circuit curve (some run never formed)"
    mean = fmt(p.mean, 3, sign=True) if p.outcome != "emergence" or p.mean is None else f"{p.mean:+.0f}"
    text = (f"{what}: {p.a} minus {p.b} per distinct pair {values_text(p)}; mean {mean} +- {fmt(p.sd)} "
            f"(baseline mean emergence step {fmt(base_mean, 5)}); {p_text(p)}")
    if p.mean is None or p.test is None or p.test.p is None:
        return Verdict(name, expectation, "inconclusive", text)
    right = p.mean > 0 if p.outcome == "emergence" else p.mean < 0
    if not right:
        return Verdict(name, expectation, "not observed", text + "; the difference goes the other way (or is zero)")
    if _significant(p):
        return Verdict(name, expectation, "observed", text + f"; significant at {ALPHA} after Holm")
    return Verdict(name, expectation, "not observed", text + f"; right direction, not significant at {ALPHA} after Holm")


def _no_effect_verdict(name: str, expectation: str, p: Paired | None, missing: str, eq: Equivalence | None,
                       base_mean: float | None) -> Verdict:
    """remove-random against the baseline: equivalent within the margin (TOST), or moved (t-test), or neither."""
    if p is None:
        return Verdict(name, expectation, "not run", missing)
    text = (f"emergence step: {p.a} minus {p.b} per distinct pair {values_text(p)}; mean {fmt(p.mean, 3, sign=True)} "
            f"+- {fmt(p.sd)} (baseline mean {fmt(base_mean, 5)}); {p_text(p)}")
    if eq is None or p.mean is None:
        return Verdict(name, expectation, "inconclusive", text + "; no equivalence test")
    text += f"; equivalence (TOST) within +- {eq.margin:.0f} steps ({EQUIVALENCE_SHARE:.0%} of the baseline's mean emergence step): "
    text += f"p = {fmt(eq.p)}" if eq.p is not None else f"no test ({eq.note})"
    if eq.equivalent(ALPHA):
        return Verdict(name, expectation, "observed", text + f"; equivalent at {ALPHA}")
    if _significant(p):
        return Verdict(name, expectation, "not observed", text + f"; it moved formation (significant at {ALPHA} after Holm)")
    return Verdict(name, expectation, "inconclusive", text + "; neither shown equivalent nor shown to differ")


def _comparison_verdict(name: str, expectation: str, comp: Comparison | None, missing: str) -> Verdict:
    if comp is None:
        return Verdict(name, expectation, "not run", missing)
    p = comp.paired
    what = "emergence step" if comp.metric == "emergence" else "area under the circuit curve (some run never formed)"
    a_mean, b_mean = mean_std(p.a_values)[0], mean_std(p.b_values)[0]
    text = (f"{what}: {comp.arm} mean {fmt(a_mean, 5)} vs {comp.control} mean {fmt(b_mean, 5)} "
            f"(expected {comp.expected}); per distinct pair {values_text(p)}; {p_text(p)}")
    if comp.direction_ok is False:
        return Verdict(name, expectation, "not observed", text + "; the difference goes the other way (or is zero)")
    if p.test is None or p.test.p is None:
        return Verdict(name, expectation, "inconclusive", text + "; cannot be tested")
    if _significant(p):
        return Verdict(name, expectation, "observed", text + f"; significant at {ALPHA} after Holm")
    return Verdict(name, expectation, "not observed", text + f"; right direction, not significant at {ALPHA} after Holm")


def _icl_verdict(effects: dict[str, Effect], runs: dict[str, dict[int, RunMetrics]]) -> Verdict:
    name, expectation = "icl_co_moves", "ICL co-moves: removing the top rows worsens the ICL score, augmenting improves it"
    wanted = {"remove-top": 1.0, "augment-top": -1.0}
    present = [a for a in wanted if a in effects and effects[a].icl_mean_delta is not None]
    if not present:
        return Verdict(name, expectation, "not run", "needs the remove-top or augment-top arm and held-out rows for the ICL score")
    spread = _spread(runs["baseline"], "icl", "mean")
    parts, oks = [], []
    for arm in present:
        d = effects[arm].icl_mean_delta
        assert d is not None
        right = d * wanted[arm] > 0
        beyond = spread is None or abs(d) > spread
        oks.append(right and beyond)
        parts.append(f"{arm} run-mean ICL delta {fmt(d, sign=True)} ({'worse' if d > 0 else 'better' if d < 0 else 'unchanged'})")
    text = "; ".join(parts) + f"; baseline seed spread {fmt(spread)} (more negative ICL = more in-context learning)"
    if any(effects[a].icl_mean_delta * wanted[a] <= 0 for a in present):  # type: ignore[operator]
        return Verdict(name, expectation, "not observed", text)
    if spread is None:
        return Verdict(name, expectation, "inconclusive", text + "; directions as expected, but one distinct baseline run gives no spread")
    status = "observed" if all(oks) else "not observed"
    if status == "not observed":
        text += "; the right direction, but not beyond the seed spread"
    if len(present) < len(wanted):
        text += f" (only {', '.join(present)} ran)"
    return Verdict(name, expectation, status, text)


def _heads_verdict(effects: dict[str, Effect], runs: dict[str, dict[int, RunMetrics]]) -> Verdict:
    name = "other_heads_move_less"
    expectation = "heads not targeted move less than the targeted heads"
    present = [a for a in ("remove-top", "augment-top") if a in effects and effects[a].targeted_mean_delta is not None]
    if not present:
        return Verdict(name, expectation, "not run", "needs the remove-top or augment-top arm and a seed on the scored model's lineage")
    spread = _spread(runs["baseline"], "score", "mean")
    parts, oks, moved = [], [], []
    for arm in present:
        e = effects[arm]
        t, o = abs(e.targeted_mean_delta or 0.0), abs(e.other_mean_delta or 0.0)
        moved.append(t > (spread if spread is not None else 0.0))
        oks.append(t > o)
        parts.append(f"{arm}: targeted heads {fmt(e.targeted_mean_delta, sign=True)}, other heads {fmt(e.other_mean_delta, sign=True)}"
                     + (f" (ratio {e.movement_ratio:.2g})" if e.movement_ratio is not None else ""))
    text = ("; ".join(parts) + " (run-mean score deltas on the scored model's lineage seeds); baseline seed spread of the run-mean "
            f"circuit score {fmt(spread)}")
    if not any(moved):
        return Verdict(name, expectation, "inconclusive", text + "; the targeted heads did not move beyond the seed spread")
    if spread is None:
        text += "; one distinct baseline run: magnitudes compared without a seed spread"
    return Verdict(name, expectation, "observed" if all(oks) else "not observed", text)


def verdicts(runs: dict[str, dict[int, RunMetrics]], effects: list[Effect], threshold: float | None = None,
             metric: str | None = None) -> list[Verdict]:
    """The five expected effects, each judged on these numbers; "not testable" (with the reason, and no p-value) for
    every effect of an experiment whose baseline never formed or has fewer than `effects.MIN_SEEDS` distinct runs."""
    reason = untestable_reason(runs["baseline"], threshold, metric) if "baseline" in runs else None
    by_arm = {e.arm: e for e in effects}
    base = runs.get("baseline", {})
    base_mean = _base_mean(base)

    def vs_base(arm: str) -> Paired | None:
        if arm not in runs or "baseline" not in runs:
            return None
        p = paired_outcome(arm, runs[arm], "baseline", base, "emergence", reason)
        if p.n_censored and arm == "remove-top":  # the area under the curve is defined for every run
            area = paired_outcome(arm, runs[arm], "baseline", base, "auc", reason)
            return area if area.seeds else p
        return p

    remove_top, remove_random = vs_base("remove-top"), vs_base("remove-random")
    augment = compare_to_control("augment-top", runs, reason)
    apply_holm([p.test if p is not None else None for p in (remove_top, remove_random, augment and augment.paired)])
    eq = None
    if remove_random is not None and reason is None and base_mean is not None and not remove_random.n_censored:
        eq = tost_paired(remove_random.a_values, remove_random.b_values, EQUIVALENCE_SHARE * base_mean)
    judged = [
        _shift_verdict("remove_top_delays", "removing the top rows delays formation (paired test against the baseline)",
                       remove_top, "the remove-top arm was not part of this experiment", base_mean),
        _no_effect_verdict("remove_random_no_effect", "removing random rows of the same number does not move formation "
                           "(equivalence test)", remove_random, "the remove-random arm was not part of this experiment", eq,
                           base_mean),
        _comparison_verdict("augment_top_sooner", "duplicating the top rows makes the circuit form sooner than duplicating random rows",
                            augment, "needs the augment-top and augment-random arms"),
        _icl_verdict(by_arm, runs),
        _heads_verdict(by_arm, runs),
    ]
    if reason is None:
        return judged
    return [v if v.status == "not run" else Verdict(v.key, v.expectation, "not testable", f"{reason} (the numbers: {v.detail})")
            for v in judged]
