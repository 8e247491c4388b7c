"""The statistics every report uses, on scipy: mean and sample sd, paired and Welch t-tests, TOST equivalence of
paired differences, Holm's correction across a table, and Wilson intervals of a proportion.

A test that cannot be computed (too few values, no spread) says why in `note` and has no t, df or p: a report
prints no p-value where there is none to print."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from scipy import stats

Z95 = float(stats.norm.ppf(0.975))
"""The two-sided 95% normal quantile (1.959963984540054)."""


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """(mean, sample standard deviation); None for an empty list / fewer than two values."""
    vals = np.asarray([float(v) for v in values], dtype=np.float64)
    if not len(vals):
        return None, None
    return float(vals.mean()), (float(vals.std(ddof=1)) if len(vals) >= 2 else None)


@dataclass
class TTest:
    """A two-sided t-test of mean(a) against mean(b): `paired` (d_s = a_s - b_s over the same seeds, df = n - 1)
    or `welch` (unequal variances, Welch-Satterthwaite df). `n_b` equals `n_a` for a paired test."""

    kind: str  # "paired" / "welch"
    n_a: int
    n_b: int
    mean_a: float | None
    mean_b: float | None
    mean_diff: float | None
    t: float | None
    df: float | None
    p: float | None
    note: str = ""
    p_holm: float | None = None  # Holm-adjusted across the table the test appears in (`holm`)

    def to_json(self) -> dict:
        return asdict(self)


def _mean(x: np.ndarray) -> float | None:
    return float(x.mean()) if len(x) else None


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> TTest:
    """Paired t-test (scipy `ttest_rel`); undefined with fewer than two pairs or no spread in the differences."""
    xa, xb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(xa) != len(xb):
        raise ValueError(f"a paired test needs equal lengths ({len(xa)} vs {len(xb)})")
    n = len(xa)
    d = xa - xb
    out = TTest("paired", n, n, _mean(xa), _mean(xb), _mean(d), None, None, None)
    if n == 0:
        out.note = "no seed in common"
    elif n < 2:
        out.note = "needs at least two seeds"
    elif float(d.std(ddof=1)) == 0.0:
        out.df, out.note = float(n - 1), "the differences have no spread: exact but not testable"
    else:
        r = stats.ttest_rel(xa, xb)
        out.t, out.df, out.p = float(r.statistic), float(r.df), float(r.pvalue)
    return out


def welch_t_test(a: Sequence[float], b: Sequence[float]) -> TTest:
    """Welch's unequal-variance t-test (scipy `ttest_ind(equal_var=False)`), for groups that share no seeds;
    undefined with fewer than two values in a group or no spread in either."""
    xa, xb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    ma, mb = _mean(xa), _mean(xb)
    out = TTest("welch", len(xa), len(xb), ma, mb, None if ma is None or mb is None else ma - mb, None, None, None)
    if len(xa) < 2 or len(xb) < 2:
        out.note = "needs at least two seeds per arm"
    elif float(xa.var(ddof=1)) + float(xb.var(ddof=1)) == 0.0:
        out.note = "no spread in either arm: the runs are deterministic, the difference is exact but not testable"
    else:
        r = stats.ttest_ind(xa, xb, equal_var=False)
        out.t, out.df, out.p = float(r.statistic), float(r.df), float(r.pvalue)
    return out


@dataclass
class Equivalence:
    """TOST (two one-sided t-tests) of paired differences against the margin +-`margin`: equivalent when both
    one-sided tests reject (p = the larger of the two one-sided p-values < alpha)."""

    margin: float
    n: int
    mean_diff: float | None
    p: float | None
    note: str = ""

    def equivalent(self, alpha: float) -> bool:
        return self.p is not None and self.p < alpha

    def to_json(self) -> dict:
        return asdict(self)


def tost_paired(a: Sequence[float], b: Sequence[float], margin: float) -> Equivalence:
    """Is mean(a - b) inside (-margin, +margin)? H0: |mean| >= margin; p = max(p(mean > -margin), p(mean < margin))."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    out = Equivalence(float(margin), len(d), _mean(d), None)
    if margin <= 0:
        out.note = "no positive margin"
    elif len(d) < 2:
        out.note = "needs at least two seeds"
    elif float(d.std(ddof=1)) == 0.0:
        out.note = "the differences have no spread: exact but not testable"
    else:
        lower = stats.ttest_1samp(d, -margin, alternative="greater").pvalue
        upper = stats.ttest_1samp(d, margin, alternative="less").pvalue
        out.p = float(max(lower, upper))
    return out


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of the p-values of one table (None stays None and does not count):
    sorted ascending p_(1) <= ... <= p_(m), adjusted p_(i) = max over j <= i of min(1, (m - j + 1) p_(j))."""
    present = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    m = len(present)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(present):
        running = max(running, min(1.0, (m - rank) * float(p)))
        out[i] = running
    return out


def apply_holm(tests: Sequence[TTest | None]) -> None:
    """Set `p_holm` on every test of one table (Holm over the tests that have a p-value)."""
    real = [t for t in tests if t is not None]
    for t, adjusted in zip(real, holm([t.p for t in real])):
        t.p_holm = adjusted


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95% by default); (0, 1) with no trials."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


# --------------------------------------------------------------------------- rank correlation (the LDS of `curate evaluate`)


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation (ties by average rank); None when either side is constant or n < 2."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(a) != len(b):
        raise ValueError(f"spearman: {len(a)} values vs {len(b)}")
    if len(a) < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return None
    rho = float(stats.spearmanr(a, b).statistic)
    return None if math.isnan(rho) else rho


def bootstrap_interval(x: Sequence[float], y: Sequence[float], resamples: int, seed: int = 0,
                       confidence: float = 0.95) -> tuple[float | None, float | None, int]:
    """Percentile bootstrap interval of Spearman's rho over subsets (pairs resampled with replacement, seeded);
    (low, high, resamples where rho was defined). A resample with a constant side has no rho and is left out."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    rng = np.random.default_rng(seed)
    rhos = []
    for _ in range(resamples):
        idx = rng.integers(0, len(a), len(a))
        rho = spearman(a[idx], b[idx])
        if rho is not None:
            rhos.append(rho)
    if not rhos:
        return None, None, 0
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(rhos, [tail, 100.0 - tail])
    return float(low), float(high), len(rhos)
