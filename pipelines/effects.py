"""The numbers of the causal validation: what each retrained run shows (curves of the targeted and the other
heads, emergence, final values), each arm's effect against the baseline, a Welch t-test of every targeted arm
against its random control, and a plain verdict on each effect the method predicts.

Conventions (stated in the report too):
- The circuit's score of a run at a step is its best head's metric (induction: layers >= 1 only, as
  `training.curves.best_head` does); "targeted" heads are the heads the scores were computed for; "other"
  heads are every other head (for induction, of layers >= 1 when the model has more than one layer).
- Emergence step: the first evaluated step at which the circuit's score reaches the threshold and stays at or
  above it (`training.curves.emergence_step`). A run that never gets there has no emergence step; in deltas it
  counts as `end step + eval interval`, a lower bound (the delta is then marked censored, ">=").
- Deltas are paired by seed (arm seed s minus baseline seed s), then averaged; spread = sample standard
  deviation over seeds (None with fewer than two values).
- ICL score: late-context loss minus early-context loss on held-out rows; more negative = more in-context
  learning, so a positive ICL delta is a worse ICL score.
- Run means: the mean of a curve over every evaluation point of the run (its area over the run's length).
  Arms train to the same step on the same grid, so a run-mean delta measures a shift in *timing* as well as
  in level, where final values converge once every run has formed. The ICL and head-movement verdicts use
  run-mean deltas; the final-value deltas are reported too.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from curate.attribution.heads import HeadRef
from curate.errors import CurateError

CURVE_METRICS = ("induction", "previous_token")
CONTROL_OF = {
    "remove-top": "remove-random",
    "augment-top": "augment-random",
    "augment-neighbors": "augment-random",
    "augment-synthetic": "augment-random",
}
"""Each targeted arm and the random control of the same size it is tested against."""
EXPECTED_DIRECTION = {"remove-top": "later", "augment-top": "sooner", "augment-neighbors": "sooner", "augment-synthetic": "sooner"}
for _m in ("gradient-dot", "copy-share"):  # the compared methods' arms (`pipelines.arms.COMPARED_METHODS`)
    CONTROL_OF[f"remove-top-{_m}"], EXPECTED_DIRECTION[f"remove-top-{_m}"] = "remove-random", "later"
    CONTROL_OF[f"augment-top-{_m}"], EXPECTED_DIRECTION[f"augment-top-{_m}"] = "augment-random", "sooner"
ALPHA = 0.05
MIN_SEEDS = 3
"""Verdicts need at least this many seeds (a spread to judge an effect against); fewer: "not testable"."""


# --------------------------------------------------------------------------- per-run metrics


def eligible_heads(metric: str, num_layers: int, num_heads: int) -> list[HeadRef]:
    """Heads that can carry `metric` (induction: layers >= 1 when there is more than one layer)."""
    first = 1 if metric == "induction" and num_layers > 1 else 0
    return [HeadRef(l, h) for l in range(first, num_layers) for h in range(num_heads)]


def parse_head_names(names: Sequence[str]) -> list[HeadRef]:
    """["1.2", "1.3"] -> [HeadRef(1, 2), HeadRef(1, 3)]."""
    return [HeadRef.parse(name) for name in names]


def emergence_step(steps: Sequence[int], values: Sequence[float | None], threshold: float) -> int | None:
    """First step whose value reaches `threshold` and stays there at every later point (None: never)."""
    from curate.training.curves import emergence_step as _emergence

    return _emergence(list(steps), [(-math.inf if v is None else float(v)) for v in values], threshold)


@dataclass
class RunMetrics:
    """One retrained run (arm, seed): its curves and the numbers read off them."""

    arm: str
    seed: int
    run_dir: str
    lineage: bool  # starts from the scored model's own weights: head indices mean the same heads
    eval_every: int
    steps: list[int]
    curves: dict[str, list[float | None]]  # {metric}_{best,targeted,other}, icl, loss, heldout_loss
    emergence: int | None  # circuit score (best head) reaches the threshold
    emergence_targeted: int | None  # best targeted head reaches the threshold
    emergence_other_metric: int | None  # the other head metric's best head (e.g. previous-token) reaches the threshold
    final: dict[str, float | None]
    mean: dict[str, float | None]  # the same keys: the curve's mean over every evaluation point (run mean)
    same_as: str | None = None  # another (arm, seed) whose run this one is (identical spec, trained once)
    head_means: dict[str, list[list[float]]] | None = None  # per head metric: each head's run mean (layers x heads)

    @property
    def end_step(self) -> int:
        return self.steps[-1]

    def censored_emergence(self) -> tuple[float, bool]:
        """The emergence step, or (end step + one eval interval, True) when the circuit never formed."""
        if self.emergence is not None:
            return float(self.emergence), False
        return float(self.end_step + self.eval_every), True

    def to_json(self) -> dict:
        return asdict(self)


def curve_metrics(points: list[dict], circuit_metric: str, targeted: list[HeadRef]) -> dict[str, list[float | None]]:
    """Best / targeted-mean / other-mean curves of both head metrics, plus ICL, training and held-out loss."""
    if not points:
        raise CurateError("a run with no evaluation points has no curves")
    shape = np.asarray(points[0]["induction"], dtype=np.float64).shape
    for t in targeted:
        if not (0 <= t.layer < shape[0] and 0 <= t.head < shape[1]):
            raise CurateError(f"targeted head {t} is outside the model's {shape[0]} x {shape[1]} heads")
    out: dict[str, list[float | None]] = {}
    for metric in CURVE_METRICS:
        eligible = eligible_heads(metric, shape[0], shape[1])
        others = [h for h in eligible if h not in targeted]
        best, tgt, oth = [], [], []
        for p in points:
            values = np.asarray(p[metric], dtype=np.float64)
            best.append(float(max(values[h.layer, h.head] for h in eligible)))
            tgt.append(float(np.mean([values[h.layer, h.head] for h in targeted])) if targeted else None)
            oth.append(float(np.mean([values[h.layer, h.head] for h in others])) if others else None)
        out[f"{metric}_best"] = best
        out[f"{metric}_targeted"] = tgt
        out[f"{metric}_other"] = oth
        if metric == circuit_metric:
            out["targeted_max"] = [
                float(max(np.asarray(p[metric], dtype=np.float64)[h.layer, h.head] for h in targeted)) if targeted else None
                for p in points
            ]
    for key in ("icl", "loss", "heldout_loss"):
        out[key] = [None if p.get(key) is None else float(p[key]) for p in points]
    return out


def run_mean(values: Sequence[float | None]) -> float | None:
    """Mean of a curve over its evaluation points (None when a point has no value)."""
    if not values or any(v is None for v in values):
        return None
    return float(np.mean(np.asarray(values, dtype=np.float64)))


def metrics_from_points(arm: str, seed: int, run_dir: str, points: list[dict], circuit_metric: str,
                        targeted: list[HeadRef], threshold: float, eval_every: int, lineage: bool) -> RunMetrics:
    """RunMetrics from a run's evaluation points (`curves.json` "points")."""
    curves = curve_metrics(points, circuit_metric, targeted)
    steps = [int(p["step"]) for p in points]
    other_metric = next(m for m in CURVE_METRICS if m != circuit_metric)
    keys = {
        "score": f"{circuit_metric}_best", "targeted": f"{circuit_metric}_targeted", "other": f"{circuit_metric}_other",
        "induction_best": "induction_best", "previous_token_best": "previous_token_best", "icl": "icl",
        "heldout_loss": "heldout_loss", "loss": "loss",
    }
    final = {key: curves[curve][-1] for key, curve in keys.items()}
    mean = {key: run_mean(curves[curve]) for key, curve in keys.items()}
    head_means = {m: np.mean([np.asarray(p[m], dtype=np.float64) for p in points], axis=0).tolist() for m in CURVE_METRICS}
    return RunMetrics(
        arm=arm, seed=seed, run_dir=run_dir, lineage=lineage, eval_every=eval_every, steps=steps, curves=curves,
        emergence=emergence_step(steps, curves[f"{circuit_metric}_best"], threshold),
        emergence_targeted=emergence_step(steps, curves["targeted_max"], threshold),
        emergence_other_metric=emergence_step(steps, curves[f"{other_metric}_best"], threshold),
        final=final,
        mean=mean,
        head_means=head_means,
    )


def read_run_metrics(arm: str, seed: int, run_dir: Path, circuit_metric: str, targeted: list[HeadRef],
                     threshold: float, lineage: bool) -> RunMetrics:
    """RunMetrics of a finished run folder (curves.json + summary.json written by `training.trainer`)."""
    from curate.training.curves import CURVES_JSON, SUMMARY_JSON

    run_dir = Path(run_dir)
    try:
        points = json.loads((run_dir / CURVES_JSON).read_text())["points"]
        summary = json.loads((run_dir / SUMMARY_JSON).read_text())
    except (OSError, json.JSONDecodeError, KeyError) as e:
        raise CurateError(f"{run_dir}: cannot read the run's curves ({type(e).__name__})") from None
    return metrics_from_points(arm, seed, str(run_dir), points, circuit_metric, targeted, threshold,
                               int(summary.get("eval_every") or 1), lineage)


# --------------------------------------------------------------------------- statistics


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """(mean, sample standard deviation); None for an empty list / fewer than two values."""
    vals = [float(v) for v in values]
    if not vals:
        return None, None
    mean = float(np.mean(vals))
    std = float(np.std(vals, ddof=1)) if len(vals) >= 2 else None
    return mean, std


@dataclass
class WelchResult:
    """Welch's unequal-variance t-test of mean(a) vs mean(b), two-sided."""

    n_a: int
    n_b: int
    mean_a: float | None
    mean_b: float | None
    t: float | None
    df: float | None
    p: float | None
    note: str = ""


def welch_t_test(a: Sequence[float], b: Sequence[float]) -> WelchResult:
    """t = (mean_a - mean_b) / sqrt(s_a^2/n_a + s_b^2/n_b), Welch-Satterthwaite df, two-sided p from Student's t.

    Undefined (t, df, p None, with a note) with fewer than two values in a group or no spread in either.
    """
    from scipy import stats

    xa, xb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    na, nb = len(xa), len(xb)
    ma = float(xa.mean()) if na else None
    mb = float(xb.mean()) if nb else None
    if na < 2 or nb < 2:
        return WelchResult(na, nb, ma, mb, None, None, None, "needs at least two seeds per arm")
    va, vb = float(xa.var(ddof=1)) / na, float(xb.var(ddof=1)) / nb
    if va + vb == 0.0:
        note = "no spread in either arm: the runs are deterministic, the difference is exact but not testable"
        return WelchResult(na, nb, ma, mb, None, None, None, note)
    t = (ma - mb) / math.sqrt(va + vb)
    terms = (va * va / (na - 1) if va else 0.0) + (vb * vb / (nb - 1) if vb else 0.0)
    df = (va + vb) ** 2 / terms
    p = float(2.0 * stats.t.sf(abs(t), df))
    return WelchResult(na, nb, ma, mb, float(t), float(df), min(1.0, p))


# --------------------------------------------------------------------------- effects vs. the baseline


@dataclass
class Effect:
    """One arm against the baseline, paired by seed."""

    arm: str
    seeds: list[int]
    formed: int  # runs of this arm in which the circuit formed
    emergence_mean: float | None  # over the seeds that formed
    emergence_std: float | None
    emergence_delta: float | None  # mean of (arm - baseline) per seed, censored values included
    emergence_delta_std: float | None
    emergence_censored: bool  # some value in the delta is a lower bound (a run that never formed)
    score_final: float | None
    score_delta: float | None
    score_delta_std: float | None
    icl_delta: float | None  # final ICL score
    icl_delta_std: float | None
    heldout_loss_delta: float | None
    targeted_delta: float | None  # final score, on lineage seeds (same initial weights as the scored model)
    other_delta: float | None
    movement_ratio: float | None  # |targeted_mean_delta| / |other_mean_delta|
    icl_mean_delta: float | None  # run means (see the module's conventions)
    icl_mean_delta_std: float | None
    targeted_mean_delta: float | None
    other_mean_delta: float | None

    def to_json(self) -> dict:
        return asdict(self)


def _paired(arm_runs: dict[int, RunMetrics], base_runs: dict[int, RunMetrics]) -> list[int]:
    return sorted(set(arm_runs) & set(base_runs))


def _deltas(seeds: list[int], arm: dict[int, RunMetrics], base: dict[int, RunMetrics], key: str,
            kind: str = "final") -> list[float]:
    """Per-seed differences of a final value (`kind` "final") or of a run mean ("mean")."""
    out = []
    for s in seeds:
        a, b = getattr(arm[s], kind).get(key), getattr(base[s], kind).get(key)
        if a is not None and b is not None:
            out.append(float(a) - float(b))
    return out


def effect_of(arm: str, arm_runs: dict[int, RunMetrics], base_runs: dict[int, RunMetrics]) -> Effect:
    """The arm's effect: emergence / final score / ICL / held-out loss deltas and head movement vs. the baseline."""
    seeds = _paired(arm_runs, base_runs)
    if not seeds:
        raise CurateError(f"arm {arm}: no seed in common with the baseline")
    formed_steps = [arm_runs[s].emergence for s in sorted(arm_runs) if arm_runs[s].emergence is not None]
    e_mean, e_std = mean_std(formed_steps)
    any_formed = any(arm_runs[s].emergence is not None or base_runs[s].emergence is not None for s in seeds)
    e_deltas, censored = [], False
    if any_formed:
        for s in seeds:
            (va, ca), (vb, cb) = arm_runs[s].censored_emergence(), base_runs[s].censored_emergence()
            e_deltas.append(va - vb)
            censored = censored or ca or cb
    ed_mean, ed_std = mean_std(e_deltas)
    s_deltas = _deltas(seeds, arm_runs, base_runs, "score")
    sd_mean, sd_std = mean_std(s_deltas)
    i_mean, i_std = mean_std(_deltas(seeds, arm_runs, base_runs, "icl"))
    h_mean, _ = mean_std(_deltas(seeds, arm_runs, base_runs, "heldout_loss"))
    lineage = [s for s in seeds if arm_runs[s].lineage and base_runs[s].lineage]
    t_mean, _ = mean_std(_deltas(lineage, arm_runs, base_runs, "targeted"))
    o_mean, _ = mean_std(_deltas(lineage, arm_runs, base_runs, "other"))
    im_mean, im_std = mean_std(_deltas(seeds, arm_runs, base_runs, "icl", "mean"))
    tm_mean, _ = mean_std(_deltas(lineage, arm_runs, base_runs, "targeted", "mean"))
    om_mean, _ = mean_std(_deltas(lineage, arm_runs, base_runs, "other", "mean"))
    ratio = None
    if tm_mean is not None and om_mean is not None and om_mean != 0.0:
        ratio = abs(tm_mean) / abs(om_mean)
    score_final, _ = mean_std([arm_runs[s].final["score"] for s in sorted(arm_runs) if arm_runs[s].final.get("score") is not None])
    return Effect(arm, seeds, len(formed_steps), e_mean, e_std, ed_mean, ed_std, censored and ed_mean is not None,
                  score_final, sd_mean, sd_std, i_mean, i_std, h_mean, t_mean, o_mean, ratio, im_mean, im_std, tm_mean, om_mean)


def effects_table(runs: dict[str, dict[int, RunMetrics]], baseline: str = "baseline") -> list[Effect]:
    """One Effect per arm (the baseline first, against itself: every delta 0), in the order of `runs`."""
    if baseline not in runs:
        raise CurateError("the effects table needs the baseline arm")
    return [effect_of(arm, arm_runs, runs[baseline]) for arm, arm_runs in runs.items()]


# --------------------------------------------------------------------------- targeted arm vs. random control


@dataclass
class Comparison:
    """A targeted arm against its random control, over seeds."""

    arm: str
    control: str
    metric: str  # "emergence_step" (every run formed) or "final_score"
    expected: str  # "later" / "sooner" (emergence) -> for final_score: "lower" / "higher"
    arm_values: list[float]
    control_values: list[float]
    test: WelchResult
    direction_ok: bool | None  # the arm's mean moved the expected way relative to the control

    def to_json(self) -> dict:
        return asdict(self)


def compare_to_control(arm: str, runs: dict[str, dict[int, RunMetrics]]) -> Comparison | None:
    """Welch t-test of `arm` vs its control on emergence steps when every run of both formed, else on final scores."""
    control = CONTROL_OF.get(arm)
    if control is None or arm not in runs or control not in runs:
        return None
    a, c = runs[arm], runs[control]
    all_formed = all(r.emergence is not None for r in list(a.values()) + list(c.values()))
    expected = EXPECTED_DIRECTION[arm]
    if all_formed:
        metric = "emergence_step"
        av = [float(a[s].emergence) for s in sorted(a)]  # type: ignore[arg-type]
        cv = [float(c[s].emergence) for s in sorted(c)]  # type: ignore[arg-type]
    else:
        metric = "final_score"
        av = [float(a[s].final["score"]) for s in sorted(a) if a[s].final.get("score") is not None]
        cv = [float(c[s].final["score"]) for s in sorted(c) if c[s].final.get("score") is not None]
        expected = {"later": "lower", "sooner": "higher"}[expected]
    test = welch_t_test(av, cv)
    direction = None
    if test.mean_a is not None and test.mean_b is not None:
        diff = test.mean_a - test.mean_b
        direction = diff > 0 if expected in ("later", "higher") else diff < 0
    return Comparison(arm, control, metric, expected, av, cv, test, direction)


def comparisons(runs: dict[str, dict[int, RunMetrics]]) -> list[Comparison]:
    return [c for arm in CONTROL_OF if (c := compare_to_control(arm, runs)) is not None]


# --------------------------------------------------------------------------- which heads move

ROLES = ("induction", "previous-token", "other")


def head_roles(point: dict, threshold: float) -> dict[str, str]:
    """Each head's role at one evaluation point (the scored checkpoint): induction when its induction score reaches
    `threshold` (layers >= 1 when there are more layers, as `eligible_heads`), else previous-token when its
    previous-token score does, else other."""
    ind = np.asarray(point["induction"], dtype=np.float64)
    prev = np.asarray(point["previous_token"], dtype=np.float64)
    can_induct = set(eligible_heads("induction", ind.shape[0], ind.shape[1]))
    roles = {}
    for l in range(ind.shape[0]):
        for h in range(ind.shape[1]):
            head = HeadRef(l, h)
            if head in can_induct and ind[l, h] >= threshold:
                roles[str(head)] = "induction"
            elif prev[l, h] >= threshold:
                roles[str(head)] = "previous-token"
            else:
                roles[str(head)] = "other"
    return roles


@dataclass
class HeadMovement:
    """How much one arm moved the heads of each role: the run-mean circuit score of each head, arm minus baseline,
    averaged over the lineage seeds (the heads are the scored model's), then |.| averaged over the role's heads."""

    arm: str
    seeds: list[int]
    roles: dict[str, list[str]]  # role -> heads
    movement: dict[str, float | None]  # role -> mean |delta| over its heads
    signed: dict[str, float | None]  # role -> mean delta
    per_head: dict[str, float]  # head -> delta
    ratio_other_induction: float | None  # movement["other"] / movement["induction"]

    def to_json(self) -> dict:
        return asdict(self)


def head_movement(arm: str, runs: dict[str, dict[int, RunMetrics]], roles: dict[str, str], metric: str) -> HeadMovement | None:
    """Per-head movement of `arm` against the baseline by role (None without a lineage seed with per-head means)."""
    if arm not in runs or "baseline" not in runs:
        return None
    a, b = runs[arm], runs["baseline"]
    seeds = [s for s in sorted(set(a) & set(b)) if a[s].lineage and b[s].lineage and a[s].head_means and b[s].head_means]
    if not seeds:
        return None
    deltas = np.mean([np.asarray(a[s].head_means[metric]) - np.asarray(b[s].head_means[metric]) for s in seeds], axis=0)  # type: ignore[index]
    per_head = {name: float(deltas[HeadRef.parse(name).layer, HeadRef.parse(name).head]) for name in roles}
    by_role = {role: [h for h, r in roles.items() if r == role] for role in ROLES}
    movement = {role: (float(np.mean([abs(per_head[h]) for h in hs])) if hs else None) for role, hs in by_role.items()}
    signed = {role: (float(np.mean([per_head[h] for h in hs])) if hs else None) for role, hs in by_role.items()}
    ind, oth = movement["induction"], movement["other"]
    ratio = oth / ind if ind and oth is not None else None
    return HeadMovement(arm, seeds, by_role, movement, signed, per_head, ratio)


# --------------------------------------------------------------------------- verdicts


@dataclass
class Verdict:
    """An effect the method predicts, and whether these numbers show it."""

    key: str
    expectation: str
    status: str  # observed / not observed / inconclusive / not run / not testable
    detail: str

    def to_json(self) -> dict:
        return asdict(self)


def _fmt(v: float | None, digits: int = 3, sign: bool = True) -> str:
    if v is None:
        return "n/a"
    return f"{v:+.{digits}g}" if sign else f"{v:.{digits}g}"


def _baseline_spread(runs: dict[int, RunMetrics], key: str, kind: str = "final") -> float | None:
    if key == "emergence":
        vals = [r.emergence for r in runs.values()]
        if any(v is None for v in vals):
            return None
        return mean_std([float(v) for v in vals])[1]  # type: ignore[arg-type]
    values = [getattr(r, kind).get(key) for r in runs.values()]
    return mean_std([float(v) for v in values if v is not None])[1]


def _distinct_runs(runs: dict[int, RunMetrics]) -> int:
    return len({r.same_as or r.run_dir for r in runs.values()})


def _movement_verdict(name: str, expectation: str, arm: str, effects: dict[str, Effect],
                      runs: dict[str, dict[int, RunMetrics]], want: str) -> Verdict:
    """remove-top (want "delay") / remove-random (want "none") against the baseline's seed spread."""
    if arm not in effects or "baseline" not in runs:
        return Verdict(name, expectation, "not run", f"the {arm} arm was not part of this experiment")
    eff = effects[arm]
    base = runs["baseline"]
    base_formed = all(r.emergence is not None for r in base.values())
    one = _distinct_runs(base) < 2
    if base_formed and eff.emergence_delta is not None:
        spread = _baseline_spread(base, "emergence")
        resolution = float(next(iter(base.values())).eval_every)
        yardstick = max(spread or 0.0, resolution)
        delta = eff.emergence_delta
        bound = "at least " if eff.emergence_censored else ""
        text = (f"emergence step delta {bound}{delta:+.0f} steps (baseline mean {_fmt(mean_std([r.emergence for r in base.values()])[0], 5, False)}, "
                f"{eff.formed}/{len(runs[arm])} runs formed); yardstick max(seed spread {_fmt(spread, 3, False)}, "
                f"evaluation interval {resolution:.0f}) = {yardstick:.0f} steps")
        if one:
            text += "; one distinct baseline run: seed spread unknown, compared with the evaluation interval only"
        if want == "delay":
            ok = delta > yardstick
        else:
            ok = abs(delta) <= yardstick
        return Verdict(name, expectation, "observed" if ok else "not observed", text)
    # the baseline's circuit did not form (in every seed): compare final scores against their seed spread
    spread = _baseline_spread(base, "score")
    delta = eff.score_delta
    text = (f"the circuit did not form in every baseline run (emergence step none), so final scores are compared: "
            f"final score delta {_fmt(delta)} (baseline seed spread {_fmt(spread, 3, False)})")
    if delta is None or spread is None:
        return Verdict(name, expectation, "inconclusive", text + "; one distinct baseline run gives no seed spread to judge by")
    ok = delta < -spread if want == "delay" else abs(delta) <= spread
    return Verdict(name, expectation, "observed" if ok else "not observed", text)


def _comparison_verdict(name: str, expectation: str, comp: Comparison | None, missing: str) -> Verdict:
    if comp is None:
        return Verdict(name, expectation, "not run", missing)
    t = comp.test
    what = "emergence step" if comp.metric == "emergence_step" else "final circuit score (not every run formed)"
    text = (f"{what}: {comp.arm} mean {_fmt(t.mean_a, 5, False)} vs {comp.control} mean {_fmt(t.mean_b, 5, False)} "
            f"(expected {comp.expected}); seed spread (sd) {_fmt(mean_std(comp.arm_values)[1], 3, False)} vs "
            f"{_fmt(mean_std(comp.control_values)[1], 3, False)} over {t.n_a} / {t.n_b} seeds; Welch t-test p = {_fmt(t.p, 3, False)}")
    if t.note:
        text += f" ({t.note})"
    if comp.direction_ok is False:
        return Verdict(name, expectation, "not observed", text + "; the difference goes the other way (or is zero)")
    if t.p is None:
        return Verdict(name, expectation, "inconclusive", text + "; the direction is as expected but cannot be tested")
    if t.p < ALPHA:
        return Verdict(name, expectation, "observed", text + f"; significant at {ALPHA}")
    return Verdict(name, expectation, "not observed", text + f"; right direction, not significant at {ALPHA}")


def _icl_verdict(effects: dict[str, Effect], runs: dict[str, dict[int, RunMetrics]]) -> Verdict:
    name, expectation = "icl_co_moves", "ICL co-moves: removing the top rows worsens the ICL score, augmenting improves it"
    wanted = {"remove-top": 1.0, "augment-top": -1.0}
    present = [a for a in wanted if a in effects and effects[a].icl_mean_delta is not None]
    if not present:
        return Verdict(name, expectation, "not run", "needs the remove-top or augment-top arm and held-out rows for the ICL score")
    spread = _baseline_spread(runs["baseline"], "icl", "mean")
    parts, oks = [], []
    for arm in present:
        d = effects[arm].icl_mean_delta
        assert d is not None
        right = d * wanted[arm] > 0
        beyond = spread is None or abs(d) > spread
        oks.append(right and beyond)
        parts.append(f"{arm} run-mean ICL delta {_fmt(d)} ({'worse' if d > 0 else 'better' if d < 0 else 'unchanged'})")
    text = "; ".join(parts) + f"; baseline seed spread {_fmt(spread, 3, False)} (more negative ICL = more in-context learning)"
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
    spread = _baseline_spread(runs["baseline"], "score", "mean")
    parts, oks, moved = [], [], []
    for arm in present:
        e = effects[arm]
        t, o = abs(e.targeted_mean_delta or 0.0), abs(e.other_mean_delta or 0.0)
        moved.append(t > (spread if spread is not None else 0.0))
        oks.append(t > o)
        parts.append(f"{arm}: targeted heads {_fmt(e.targeted_mean_delta)}, other heads {_fmt(e.other_mean_delta)}"
                     + (f" (ratio {e.movement_ratio:.2g})" if e.movement_ratio is not None else ""))
    text = ("; ".join(parts) + " (run-mean score deltas on the scored model's lineage seeds); baseline seed spread of the run-mean "
            f"circuit score {_fmt(spread, 3, False)}")
    if not any(moved):
        return Verdict(name, expectation, "inconclusive", text + "; the targeted heads did not move beyond the seed spread")
    if spread is None:
        text += "; one distinct baseline run: magnitudes compared without a seed spread"
    return Verdict(name, expectation, "observed" if all(oks) else "not observed", text)


def untestable_reason(base: dict[int, RunMetrics], threshold: float | None = None, metric: str | None = None) -> str | None:
    """Why no verdict may be given on these baseline runs, or None: the baseline's circuit never formed inside the
    run (in some seed), or fewer than `MIN_SEEDS` seeds (no spread to judge an effect against)."""
    never = sorted(s for s, r in base.items() if r.emergence is None)
    if never:
        best = [_best_score(base[s], metric) for s in never]
        shown = ", ".join(f"seed {s}: best score {_fmt(b, 3, False)}" for s, b in zip(never, best))
        bar = f" < threshold {threshold:g}" if threshold is not None else ""
        return (f"the baseline's circuit never formed inside the run ({shown}{bar}): there is no formation to delay or "
                f"advance, and differences between runs of an unformed head are noise")
    if len(base) < MIN_SEEDS:
        return f"n seeds < {MIN_SEEDS} ({len(base)} seed{'s' if len(base) != 1 else ''}): no seed spread to judge an effect against"
    return None


def _best_score(run: RunMetrics, metric: str | None) -> float | None:
    """The circuit's best score over the run (its best head, at any evaluation point; else its final score)."""
    curve = [v for v in run.curves.get(f"{metric}_best", []) if v is not None]
    return max(curve) if curve else run.final.get("score")


def verdicts(runs: dict[str, dict[int, RunMetrics]], effects: list[Effect], comps: list[Comparison],
             threshold: float | None = None, metric: str | None = None) -> list[Verdict]:
    """The five expected effects of MDA-SPEC section 4, each judged on these numbers; "not testable" (with the
    reason) for every effect of an experiment whose baseline never formed or that has fewer than `MIN_SEEDS` seeds."""
    judged = _verdicts(runs, effects, comps)
    reason = untestable_reason(runs["baseline"], threshold, metric) if "baseline" in runs else None
    if reason is None:
        return judged
    return [v if v.status == "not run" else Verdict(v.key, v.expectation, "not testable", f"{reason} (the numbers: {v.detail})")
            for v in judged]


def _verdicts(runs: dict[str, dict[int, RunMetrics]], effects: list[Effect], comps: list[Comparison]) -> list[Verdict]:
    by_arm = {e.arm: e for e in effects}
    comp = {c.arm: c for c in comps}
    return [
        _movement_verdict("remove_top_delays", "removing the top rows delays formation beyond the seed spread",
                          "remove-top", by_arm, runs, "delay"),
        _movement_verdict("remove_random_no_effect", "removing random rows of the same number does not move formation",
                          "remove-random", by_arm, runs, "none"),
        _comparison_verdict("augment_top_sooner", "duplicating the top rows makes the circuit form sooner than duplicating random rows",
                            comp.get("augment-top"), "needs the augment-top and augment-random arms"),
        _icl_verdict(by_arm, runs),
        _heads_verdict(by_arm, runs),
    ]
