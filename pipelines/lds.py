"""The leave-subset-out score (LDS) of an attribution, as TRAK / kronfluence / bergson evaluate one: the seeded
random subsets of the attribution window, the predicted effect of dropping a subset (the sum of its rows' scores),
and Spearman's rank correlation of predicted with measured effects across subsets, with a seeded bootstrap
interval over subsets.

The statistics here (`spearman`, `bootstrap_interval`) are the evaluation's own until the one statistics module
(`curate/stats.py`) takes them over.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from scipy import stats

from curate.errors import CurateError

SPLITS = ("dev", "report")
SPLIT_FIRST_SEED = {"dev": 10_000, "report": 20_000}
"""Subset i of a split is drawn with seed SPLIT_FIRST_SEED[split] + i: the two splits never share a subset, so the
subsets a variant is chosen on are never the ones it is reported on."""
MAX_SUBSETS = 10_000  # the width of each split's seed range
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95


def subset_seeds(split: str, count: int) -> list[int]:
    """The seeds of the first `count` subsets of `split` (a longer list extends a shorter one)."""
    if split not in SPLITS:
        raise CurateError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
    if not 1 <= count <= MAX_SUBSETS:
        raise CurateError(f"subsets {count}: expected 1 to {MAX_SUBSETS}")
    first = SPLIT_FIRST_SEED[split]
    return list(range(first, first + count))


def predicted_effects(values: np.ndarray, subsets: Sequence[np.ndarray], where: str = "scores") -> np.ndarray:
    """Per subset, the sum of the dropped rows' scores (`values`: one score per window row, window-relative index;
    `subsets`: window-relative indices of the dropped rows). An unscored dropped row is an error."""
    out = np.empty(len(subsets), dtype=np.float64)
    for i, rows in enumerate(subsets):
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(values)):
            raise CurateError(f"{where}: a dropped row lies outside the window's {len(values)} rows")
        picked = values[rows]
        if np.isnan(picked).any():
            missing = int(np.isnan(picked).sum())
            raise CurateError(f"{where}: {missing} dropped row(s) of subset {i} are unscored; the LDS needs every window row scored")
        out[i] = float(picked.sum())
    return out


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation (ties by average rank); None when either side is constant or n < 2."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(a) != len(b):
        raise CurateError(f"spearman: {len(a)} predicted vs {len(b)} measured values")
    if len(a) < 2 or np.all(a == a[0]) or np.all(b == b[0]):
        return None
    rho = float(stats.spearmanr(a, b).statistic)
    return None if math.isnan(rho) else rho


def bootstrap_interval(x: Sequence[float], y: Sequence[float], resamples: int, seed: int = BOOTSTRAP_SEED,
                       confidence: float = CONFIDENCE) -> tuple[float | None, float | None, int]:
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


@dataclass
class LdsResult:
    """One method's LDS on one outcome: rho with its bootstrap interval over the subsets."""

    method: str
    outcome: str
    subsets: int
    rho: float | None
    low: float | None
    high: float | None
    resamples: int  # bootstrap resamples with a defined rho
    censored: int = 0  # subsets whose outcome is censored (ranked after every uncensored one)

    def to_json(self) -> dict:
        return asdict(self)


def lds(method: str, outcome: str, predicted: Sequence[float], measured: Sequence[float], resamples: int,
        seed: int = BOOTSTRAP_SEED, censored: int = 0) -> LdsResult:
    """The LDS: Spearman(predicted, measured) across subsets and its bootstrap interval."""
    low, high, used = bootstrap_interval(predicted, measured, resamples, seed)
    return LdsResult(method, outcome, len(predicted), spearman(predicted, measured), low, high, used, censored)
