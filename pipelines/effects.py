"""Each arm against the baseline, each targeted arm against its random control, and which heads move: the numbers
of the causal validation, paired by seed (every arm of a seed starts from that seed's initialisation).

Rules (stated in the report too):
- Pairs: arm seed s against baseline (or control) seed s. Seeds whose two runs are the same two runs as another
  seed's (an arm trained once for every seed, `RunMetrics.same_as`) are one distinct pair, counted once.
- Censoring: a run that never formed has no emergence step (only "> its end step"); a difference involving one
  is censored, never averaged as if exact and never tested; the continuous outcomes (`run_metrics.OUTCOMES`)
  stay defined.
- Testable (`untestable_reason`): the baseline formed in every run and has at least `MIN_SEEDS` distinct runs;
  a test needs at least `MIN_SEEDS` distinct pairs, none censored. Otherwise no p-value is given.
- Tests: paired t-tests (`curate.stats`), two-sided; Holm's correction across each table.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from curate.attribution.heads import HeadRef
from curate.errors import CurateError
from curate.pipelines.arms import arm_defs
from curate.pipelines.report_format import fmt
from curate.pipelines.run_metrics import RunMetrics, distinct_runs, eligible_heads
from curate.stats import TTest, apply_holm, mean_std, paired_t_test

ALPHA = 0.05
MIN_SEEDS = 3
"""Tests need at least this many distinct runs (baseline) / distinct pairs (a test); fewer: "not testable"."""
EQUIVALENCE_SHARE = 0.05
""""No effect" needs equivalence (TOST) within +- this share of the baseline's mean emergence step."""


# --------------------------------------------------------------------------- testability


def untestable_reason(base: dict[int, RunMetrics], threshold: float | None = None, metric: str | None = None) -> str | None:
    """Why no test may be made against these baseline runs, or None: the baseline's circuit never formed inside
    the run (in some seed), or fewer than `MIN_SEEDS` distinct baseline runs (no spread to judge an effect by)."""
    never = sorted(s for s, r in base.items() if r.emergence is None)
    if never:
        best = [_best_score(base[s], metric) for s in never]
        shown = ", ".join(f"seed {s}: best score {fmt(b)}" for s, b in zip(never, best))
        bar = f" < threshold {threshold:g}" if threshold is not None else ""
        return (f"the baseline's circuit never formed inside the run ({shown}{bar}): there is no formation to delay or "
                f"advance, and differences between runs of an unformed head are noise")
    n = distinct_runs(base)
    if n < MIN_SEEDS:
        seeds = f"{len(base)} seed{'s' if len(base) != 1 else ''}"
        return (f"distinct baseline runs < {MIN_SEEDS} ({n} distinct run{'s' if n != 1 else ''} over {seeds}): "
                "no seed spread to judge an effect against")
    return None


def _best_score(run: RunMetrics, metric: str | None) -> float | None:
    """The circuit's best score over the run (its best head, at any evaluation point; else its final score)."""
    curve = [v for v in run.curves.get(f"{metric}_best", []) if v is not None]
    return max(curve) if curve else run.final.get("score")


# --------------------------------------------------------------------------- paired outcomes


@dataclass
class Paired:
    """An outcome of arm `a` against arm `b` over their distinct pairs (one seed kept per distinct pair)."""

    a: str
    b: str
    outcome: str  # `run_metrics.OUTCOMES`
    seeds: list[int]
    a_values: list[float]  # a censored emergence value is the run's end step (the value is beyond it)
    b_values: list[float]
    censored: list[bool]  # per pair: a value is only a bound
    diffs: list[float]
    mean: float | None  # None when some pair is censored
    sd: float | None
    test: TTest | None  # None: not testable (`note` says why)
    note: str = ""

    @property
    def n_censored(self) -> int:
        return sum(self.censored)

    def to_json(self) -> dict:
        return asdict(self)


def distinct_pairs(a: dict[int, RunMetrics], b: dict[int, RunMetrics]) -> list[int]:
    """The seeds both arms ran, one per distinct (a run, b run) pair."""
    seen: set[tuple[str, str]] = set()
    out = []
    for s in sorted(set(a) & set(b)):
        key = (a[s].run_id, b[s].run_id)
        if key not in seen:
            seen.add(key)
            out.append(s)
    return out


def paired_outcome(a_name: str, a: dict[int, RunMetrics], b_name: str, b: dict[int, RunMetrics], outcome: str,
                   untestable: str | None = None) -> Paired:
    """`outcome` of a against b per distinct pair, with a paired t-test where the rules allow one (module docstring);
    `untestable`: the table's reason to give no test."""
    seeds, av, bv, cens = [], [], [], []
    for s in distinct_pairs(a, b):
        (va, ca), (vb, cb) = a[s].outcome(outcome), b[s].outcome(outcome)
        if va is None or vb is None:
            continue
        seeds.append(s)
        av.append(va)
        bv.append(vb)
        cens.append(ca or cb)
    diffs = [x - y for x, y in zip(av, bv)]
    out = Paired(a_name, b_name, outcome, seeds, av, bv, cens, diffs, None, None, None)
    if any(cens):
        out.note = f"{sum(cens)} of {len(cens)} pairs censored (a run never formed): no mean, no test"
        return out
    out.mean, out.sd = mean_std(diffs)
    if untestable is not None:
        out.note = "not testable"
    elif len(seeds) < MIN_SEEDS:
        out.note = f"{len(seeds)} distinct pair{'s' if len(seeds) != 1 else ''} < {MIN_SEEDS}: not testable"
    else:
        out.test = paired_t_test(av, bv)
        out.note = out.test.note
    return out


# --------------------------------------------------------------------------- effects vs. the baseline


@dataclass
class Effect:
    """One arm against the baseline, paired by seed."""

    arm: str
    seeds: list[int]
    formed: int  # runs of this arm in which the circuit formed
    emergence_mean: float | None  # over the runs that formed
    emergence_std: float | None
    emergence_delta: float | None  # mean of (arm - baseline) per distinct pair; None when some pair is censored
    emergence_delta_std: float | None
    emergence_censored: bool  # some pair has a run that never formed (`emergence_bounds` then holds its bounds)
    score_final: float | None
    score_delta: float | None
    score_delta_std: float | None
    icl_delta: float | None  # final ICL score
    icl_delta_std: float | None
    heldout_loss_delta: float | None
    targeted_delta: float | None  # final score, on lineage seeds (same initial weights as the scored model)
    other_delta: float | None
    movement_ratio: float | None  # |targeted_mean_delta| / |other_mean_delta|
    icl_mean_delta: float | None  # run means (see `run_metrics`)
    icl_mean_delta_std: float | None
    targeted_mean_delta: float | None
    other_mean_delta: float | None
    score_at_reference_delta: float | None = None  # continuous outcomes (`run_metrics.add_outcomes`)
    score_at_reference_delta_std: float | None = None
    auc_delta: float | None = None
    auc_delta_std: float | None = None
    emergence_pairs: dict = field(default_factory=dict)  # the `Paired` of the emergence step

    def to_json(self) -> dict:
        return asdict(self)


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
    """The arm's effect: emergence / continuous outcomes / final score / ICL / held-out loss deltas and head movement."""
    seeds = sorted(set(arm_runs) & set(base_runs))
    if not seeds:
        raise CurateError(f"arm {arm}: no seed in common with the baseline")
    pairs = distinct_pairs(arm_runs, base_runs)
    formed_steps = [float(arm_runs[s].emergence) for s in sorted(arm_runs) if arm_runs[s].emergence is not None]  # type: ignore[arg-type]
    e_mean, e_std = mean_std(formed_steps)
    emergence = paired_outcome(arm, arm_runs, "baseline", base_runs, "emergence", untestable="effects are not tested")
    ref = paired_outcome(arm, arm_runs, "baseline", base_runs, "score_at_reference", untestable="effects are not tested")
    auc = paired_outcome(arm, arm_runs, "baseline", base_runs, "auc", untestable="effects are not tested")
    sd_mean, sd_std = mean_std(_deltas(pairs, arm_runs, base_runs, "score"))
    i_mean, i_std = mean_std(_deltas(pairs, arm_runs, base_runs, "icl"))
    h_mean, _ = mean_std(_deltas(pairs, arm_runs, base_runs, "heldout_loss"))
    lineage = [s for s in pairs if arm_runs[s].lineage and base_runs[s].lineage]
    t_mean, _ = mean_std(_deltas(lineage, arm_runs, base_runs, "targeted"))
    o_mean, _ = mean_std(_deltas(lineage, arm_runs, base_runs, "other"))
    im_mean, im_std = mean_std(_deltas(pairs, arm_runs, base_runs, "icl", "mean"))
    tm_mean, _ = mean_std(_deltas(lineage, arm_runs, base_runs, "targeted", "mean"))
    om_mean, _ = mean_std(_deltas(lineage, arm_runs, base_runs, "other", "mean"))
    ratio = None
    if tm_mean is not None and om_mean is not None and om_mean != 0.0:
        ratio = abs(tm_mean) / abs(om_mean)
    score_final, _ = mean_std([arm_runs[s].final["score"] for s in sorted(arm_runs) if arm_runs[s].final.get("score") is not None])  # type: ignore[misc]
    return Effect(arm, seeds, len(formed_steps), e_mean, e_std, emergence.mean, emergence.sd, emergence.n_censored > 0,
                  score_final, sd_mean, sd_std, i_mean, i_std, h_mean, t_mean, o_mean, ratio, im_mean, im_std, tm_mean,
                  om_mean, ref.mean, ref.sd, auc.mean, auc.sd, emergence.to_json())


def effects_table(runs: dict[str, dict[int, RunMetrics]], baseline: str = "baseline") -> list[Effect]:
    """One Effect per arm (the baseline first, against itself: every delta 0), in the order of `runs`."""
    if baseline not in runs:
        raise CurateError("the effects table needs the baseline arm")
    return [effect_of(arm, arm_runs, runs[baseline]) for arm, arm_runs in runs.items()]


# --------------------------------------------------------------------------- targeted arm vs. random control


@dataclass
class Comparison:
    """A targeted arm against its random control, paired by seed."""

    arm: str
    control: str
    metric: str  # "emergence" (no censored pair) or "auc" (the area under the circuit curve)
    expected: str  # "later" / "sooner" (emergence) -> for auc: "lower" / "higher"
    paired: Paired
    direction_ok: bool | None  # the arm's mean moved the expected way relative to the control

    @property
    def test(self) -> TTest | None:
        return self.paired.test

    def to_json(self) -> dict:
        return {"arm": self.arm, "control": self.control, "metric": self.metric, "expected": self.expected,
                "arm_values": self.paired.a_values, "control_values": self.paired.b_values,
                "censored": self.paired.censored, "note": self.paired.note,
                "test": self.test.to_json() if self.test is not None else None, "direction_ok": self.direction_ok}


def compare_to_control(arm: str, runs: dict[str, dict[int, RunMetrics]], untestable: str | None = None) -> Comparison | None:
    """`arm` against its control: the emergence step when no pair is censored, else the area under the curve."""
    d = arm_defs().get(arm)
    control = d.control_arm if d is not None else None
    if control is None or arm not in runs or control not in runs:
        return None
    expected = d.expected  # type: ignore[union-attr]
    paired = paired_outcome(arm, runs[arm], control, runs[control], "emergence", untestable)
    metric = "emergence"
    if paired.n_censored:
        metric = "auc"
        paired = paired_outcome(arm, runs[arm], control, runs[control], "auc", untestable)
        expected = {"later": "lower", "sooner": "higher"}[expected]  # type: ignore[index]
    direction = None
    if paired.diffs:
        diff = float(np.mean(paired.diffs))
        direction = diff > 0 if expected in ("later", "higher") else diff < 0
    return Comparison(arm, control, metric, expected, paired, direction)  # type: ignore[arg-type]


def comparisons(runs: dict[str, dict[int, RunMetrics]], untestable: str | None = None) -> list[Comparison]:
    """Every targeted arm against its control (Holm across them); `untestable`: the table's reason to test nothing."""
    out = [c for arm in runs if (c := compare_to_control(arm, runs, untestable)) is not None]
    apply_holm([c.test for c in out])
    return out


# --------------------------------------------------------------------------- which heads move

ROLES = ("induction", "previous-token", "other")


def head_roles(point: dict, threshold: float) -> dict[str, str]:
    """Each head's role at one evaluation point (the scored checkpoint): induction when its induction score reaches
    `threshold` (among the heads that count for induction, `eligible_heads`), else previous-token when its
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
