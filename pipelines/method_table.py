"""The experiment's method table: how far each scoring method's top rows move the circuit's formation, paired by
seed, against the random controls and against MDA; and how alike the methods rank the window's rows.

Per method m (its arms: `pipelines.methods.method_arms`) and per outcome (`run_metrics.OUTCOMES`: the emergence
step, the circuit score at the reference step, the area under the circuit curve):
- delay = outcome(remove arm, seed s) - outcome(baseline, s); advance = outcome(augment arm, s) - outcome(baseline,
  s) (for the emergence step negative = sooner), over distinct pairs (`effects.paired_outcome`). A run that never
  formed is censored: its difference is a bound ("> +N"), and the mean, sd and tests of that shift are not given.
- Paired t-tests over distinct pairs (two-sided): the arm against its random control (remove-random /
  augment-random) and against MDA's arm of the same kind, on the per-seed outcome; Holm's correction across
  every test of the outcome's table.
- status: "not testable" (the reason, and no test at all) when the baseline never formed in some seed or has fewer
  than `effects.MIN_SEEDS` distinct runs (`effects.untestable_reason`), else "tested".
Spearman correlations: between every two methods' `score` columns over the window's rows (matched by row id).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import stats

from curate.attribution.scores_folder import open_scores
from curate.pipelines.effects import Paired, paired_outcome, untestable_reason
from curate.pipelines.methods import PRIMARY, method_arms
from curate.pipelines.run_metrics import OUTCOMES, RunMetrics
from curate.stats import apply_holm


@dataclass
class Shift:
    """One arm's per-seed shift of an outcome against the baseline, and its tests."""

    arm: str
    outcome: str
    seeds: list[int]
    values: list[float]  # outcome(arm, s) - outcome(baseline, s); a censored one is a bound
    censored: list[bool]
    mean: float | None  # None when some pair is censored
    sd: float | None
    vs_control: Paired | None
    vs_mda: Paired | None
    a_values: list[float]  # the arm's and the baseline's values per pair (a censored emergence: the run's end step)
    b_values: list[float]


@dataclass
class MethodRow:
    method: str
    outcome: str
    delay: Shift | None  # remove arm
    advance: Shift | None  # augment arm
    status: str  # "tested" or "not testable"
    reason: str

    def to_json(self) -> dict:
        return asdict(self)


def _shift(arm: str, control: str, mda_arm: str | None, runs: dict[str, dict[int, RunMetrics]], outcome: str,
           reason: str | None) -> Shift | None:
    if arm not in runs or "baseline" not in runs:
        return None
    base = paired_outcome(arm, runs[arm], "baseline", runs["baseline"], outcome, untestable="shifts are not tested")
    if not base.seeds:
        return None

    def against(other: str | None) -> Paired | None:
        if other is None or other == arm or other not in runs:
            return None
        return paired_outcome(arm, runs[arm], other, runs[other], outcome, reason)

    return Shift(arm, outcome, base.seeds, base.diffs, base.censored, base.mean, base.sd, against(control), against(mda_arm),
                 base.a_values, base.b_values)


def method_table(runs: dict[str, dict[int, RunMetrics]], methods: Sequence[str], threshold: float | None = None,
                 metric: str | None = None, outcomes: Sequence[str] = OUTCOMES) -> list[MethodRow]:
    """One row per (outcome, method) (see the module docstring); Holm across each outcome's tests."""
    reason = untestable_reason(runs["baseline"], threshold, metric) if "baseline" in runs else "no baseline runs"
    mda_remove, mda_augment = method_arms(PRIMARY)
    rows = []
    for outcome in outcomes:
        table = []
        for m in methods:
            remove, augment = method_arms(m)
            table.append(MethodRow(
                m, outcome,
                _shift(remove, "remove-random", mda_remove, runs, outcome, reason),
                _shift(augment, "augment-random", mda_augment, runs, outcome, reason),
                "not testable" if reason else "tested",
                reason or "",
            ))
        apply_holm([p.test if p is not None else None for r in table for s in (r.delay, r.advance) if s is not None
                    for p in (s.vs_control, s.vs_mda)])
        rows += table
    return rows


# --------------------------------------------------------------------------- rank agreement


def read_scores(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """(row ids, scores) of a scores folder, sorted by row id."""
    ids, values = [], []
    for batch in open_scores(folder).iter_columns(["row_id", "score"]):
        ids.append(batch["row_id"])
        values.append(batch["score"])
    row_id = np.concatenate(ids).astype(np.int64)
    score = np.concatenate(values).astype(np.float64)
    order = np.argsort(row_id, kind="stable")
    return row_id[order], score[order]


def spearman_matrix(folders: dict[str, Path]) -> dict:
    """Spearman's rank correlation between every two methods' scores over the rows both scored."""
    data = {m: read_scores(f) for m, f in folders.items()}
    names = list(folders)
    out: dict = {"methods": names, "rows": None, "rho": {}}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            ia, sa = data[a]
            ib, sb = data[b]
            common, xa, xb = np.intersect1d(ia, ib, assume_unique=True, return_indices=True)
            rho = stats.spearmanr(sa[xa], sb[xb]).statistic if len(common) > 2 else float("nan")
            out["rho"][f"{a}|{b}"] = None if not np.isfinite(rho) else float(rho)
            out["rows"] = int(len(common))
    return out
