"""The leave-subset-out score (LDS) of an attribution, as TRAK / kronfluence / bergson evaluate one: the seeded
random subsets of the attribution window, the predicted effect of dropping a subset (the sum of its rows' scores),
and Spearman's rank correlation of predicted with measured effects across subsets, with a seeded bootstrap
interval over subsets.

The statistics here (`spearman`, `bootstrap_interval`) are the evaluation's own until the one statistics module
(`curate/stats.py`) takes them over.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from curate.errors import CurateError
from curate.stats import bootstrap_interval, spearman
from curate.pipelines.evaluate_options import MAX_SUBSETS, SPLIT_FIRST_SEED, SPLITS

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
