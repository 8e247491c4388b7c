"""What the evaluation measures on each retrain: continuous outcomes of the targeted heads' circuit curve.

- `curve_area`: the area under the targeted heads' mean circuit score from the window's start to a fixed step
  (the horizon), divided by the span: the curve's mean over [start, horizon], trapezoids between evaluations,
  linearly interpolated at a horizon between two evaluations. A head that forms later has a smaller area.
- `interpolated_emergence`: the step where the best targeted head's score crosses the threshold for good, linearly
  interpolated between the last evaluation below and the first at/above it (the sustained crossing of
  `training.curves.emergence_step`); None (censored: "> last step") when it never stays above.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from curate.attribution.heads import HeadRef
from curate.errors import CurateError
from curate.training.curves import CURVES_JSON, emergence_step

AREA = "area"
EMERGENCE = "emergence"
OUTCOMES = (AREA, EMERGENCE)


def curve_area(steps: Sequence[int], values: Sequence[float], start: int, stop: int) -> float:
    """Mean of the piecewise-linear curve through (steps, values) over [start, stop]; the curve must cover it."""
    s = np.asarray(steps, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if stop <= start:
        raise CurateError(f"the area's span {start}:{stop} is empty")
    if len(s) == 0 or s[0] > start or s[-1] < stop:
        have = f"{int(s[0])}-{int(s[-1])}" if len(s) else "none"
        raise CurateError(f"the curve's evaluations (steps {have}) do not cover steps {start}-{stop}")
    inside = (s > start) & (s < stop)
    xs = np.concatenate([[start], s[inside], [stop]])
    ys = np.concatenate([[np.interp(start, s, v)], v[inside], [np.interp(stop, s, v)]])
    return float(np.sum((ys[1:] + ys[:-1]) / 2.0 * np.diff(xs)) / (stop - start))


def interpolated_emergence(steps: Sequence[int], values: Sequence[float], threshold: float) -> float | None:
    """The sustained threshold crossing, linearly interpolated between the two evaluations bracketing it."""
    steps_l, values_l = [int(x) for x in steps], [float(x) for x in values]
    at = emergence_step(steps_l, values_l, threshold)
    if at is None:
        return None
    i = steps_l.index(at)
    if i == 0:
        return float(at)
    s0, s1, v0, v1 = steps_l[i - 1], steps_l[i], values_l[i - 1], values_l[i]  # v0 < threshold <= v1
    return float(s0 + (threshold - v0) / (v1 - v0) * (s1 - s0))


@dataclass
class RetrainOutcome:
    """The outcomes of one retrain (or of the baseline run)."""

    area: float
    emergence: float | None  # None: never formed by `last_step` (censored)
    last_step: int

    def to_json(self) -> dict:
        return asdict(self)


def outcome_of_points(points: list[dict], metric: str, targeted: list[HeadRef], threshold: float, start: int,
                      horizon: int) -> RetrainOutcome:
    """The outcomes read off a run's evaluation points (curves.json `points`) for the targeted heads."""
    if not targeted:
        raise CurateError("the outcomes need at least one targeted head")
    steps = [int(p["step"]) for p in points]
    if not steps:
        raise CurateError("a run with no evaluation points has no outcome")
    grid = [np.asarray(p[metric], dtype=np.float64) for p in points]
    for h in targeted:
        if not (0 <= h.layer < grid[0].shape[0] and 0 <= h.head < grid[0].shape[1]):
            raise CurateError(f"targeted head {h} is outside the model's {grid[0].shape[0]} x {grid[0].shape[1]} heads")
    mean = [float(np.mean([g[h.layer, h.head] for h in targeted])) for g in grid]
    best = [float(max(g[h.layer, h.head] for h in targeted)) for g in grid]
    return RetrainOutcome(curve_area(steps, mean, start, horizon), interpolated_emergence(steps, best, threshold), steps[-1])


def read_outcome(run_dir: Path, metric: str, targeted: list[HeadRef], threshold: float, start: int,
                 horizon: int) -> RetrainOutcome:
    """The outcomes of a finished run folder (its curves.json)."""
    path = Path(run_dir) / CURVES_JSON
    try:
        points = json.loads(path.read_text())["points"]
    except (OSError, json.JSONDecodeError, KeyError) as e:
        raise CurateError(f"{path}: cannot read the run's curves ({type(e).__name__})") from None
    try:
        return outcome_of_points(points, metric, targeted, threshold, start, horizon)
    except CurateError as e:
        raise CurateError(f"{run_dir}: {e}") from None
