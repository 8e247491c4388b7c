"""The experiment's method table: how far each scoring method's top rows move the circuit's formation, paired by
seed, against the random controls and against MDA; and how alike the methods rank the window's rows.

Per method m (its arms: `remove-top` / `augment-top` for MDA, `remove-top-<m>` / `augment-top-<m>` otherwise):
- delay = emergence(remove arm, seed s) - emergence(baseline, s); advance = emergence(augment arm, s) -
  emergence(baseline, s) (negative = sooner). A run that never formed counts as its end step + one evaluation
  interval (`RunMetrics.censored_emergence`), marked censored. Mean and sample sd over the seeds.
- Paired t-tests over seeds (`paired_t_test`, two-sided): the arm against its random control (remove-random /
  augment-random) and against MDA's arm of the same kind, on the per-seed emergence steps.
- status: "not testable" (the reason) when the baseline never formed in some seed or there are fewer than
  `effects.MIN_SEEDS` seeds (`effects.untestable_reason`), else "tested".
Spearman correlations: between every two methods' `score` columns over the window's rows (matched by row id).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from curate.pipelines.effects import RunMetrics, mean_std, untestable_reason


def method_arms(method: str) -> tuple[str, str]:
    """(remove arm, augment arm) of a scoring method."""
    return ("remove-top", "augment-top") if method == "mda" else (f"remove-top-{method}", f"augment-top-{method}")


@dataclass
class PairedTest:
    """Paired t-test of a vs b over the same seeds: d_s = a_s - b_s, t = mean(d) / (sd(d) / sqrt(n)), df = n - 1."""

    n: int
    mean_diff: float | None
    t: float | None
    df: int | None
    p: float | None
    note: str = ""


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> PairedTest:
    """Two-sided paired t-test; undefined (None, with a note) with fewer than two pairs or no spread in the differences."""
    from scipy import stats

    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    n = len(d)
    if n == 0:
        return PairedTest(0, None, None, None, None, "no seed in common")
    mean = float(d.mean())
    if n < 2:
        return PairedTest(n, mean, None, None, None, "needs at least two seeds")
    sd = float(d.std(ddof=1))
    if sd == 0.0:
        return PairedTest(n, mean, None, n - 1, None, "the differences have no spread: exact but not testable")
    t = mean / (sd / math.sqrt(n))
    return PairedTest(n, mean, float(t), n - 1, float(min(1.0, 2.0 * stats.t.sf(abs(t), n - 1))))


@dataclass
class Shift:
    """One arm's per-seed emergence shift against the baseline and its tests."""

    arm: str
    seeds: list[int]
    values: list[float]  # emergence(arm, s) - emergence(baseline, s)
    censored: bool
    mean: float | None
    sd: float | None
    vs_control: PairedTest | None
    vs_mda: PairedTest | None


@dataclass
class MethodRow:
    method: str
    delay: Shift | None  # remove arm
    advance: Shift | None  # augment arm
    status: str  # "tested" or "not testable"
    reason: str

    def to_json(self) -> dict:
        return asdict(self)


def _emergence(runs: dict[int, RunMetrics], seed: int) -> tuple[float, bool]:
    return runs[seed].censored_emergence()


def _shift(arm: str, control: str, mda_arm: str | None, runs: dict[str, dict[int, RunMetrics]]) -> Shift | None:
    if arm not in runs or "baseline" not in runs:
        return None
    base, a = runs["baseline"], runs[arm]
    seeds = sorted(set(a) & set(base))
    if not seeds:
        return None
    censored = False
    values, arm_steps = [], []
    for s in seeds:
        (va, ca), (vb, cb) = _emergence(a, s), _emergence(base, s)
        values.append(va - vb)
        arm_steps.append(va)
        censored = censored or ca or cb

    def against(other: str | None) -> PairedTest | None:
        if other is None or other not in runs:
            return None
        common = [s for s in seeds if s in runs[other]]
        return paired_t_test([_emergence(a, s)[0] for s in common], [_emergence(runs[other], s)[0] for s in common])

    mean, sd = mean_std(values)
    return Shift(arm, seeds, values, censored, mean, sd, against(control), against(mda_arm if mda_arm != arm else None))


def method_table(runs: dict[str, dict[int, RunMetrics]], methods: Sequence[str], threshold: float | None = None,
                 metric: str | None = None) -> list[MethodRow]:
    """One row per method (see the module docstring)."""
    reason = untestable_reason(runs["baseline"], threshold, metric) if "baseline" in runs else "no baseline runs"
    mda_remove, mda_augment = method_arms("mda")
    rows = []
    for m in methods:
        remove, augment = method_arms(m)
        rows.append(MethodRow(
            m,
            _shift(remove, "remove-random", mda_remove, runs),
            _shift(augment, "augment-random", mda_augment, runs),
            "not testable" if reason else "tested",
            reason or "",
        ))
    return rows


# --------------------------------------------------------------------------- rank agreement


def read_scores(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """(row ids, scores) of a scores folder, sorted by row id."""
    from curate.attribution.scores_folder import open_scores

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
    from scipy import stats

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
