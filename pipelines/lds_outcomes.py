"""What the evaluation measures on each retrain: continuous outcomes of the targeted heads' circuit curve.

- `curve_area`: the area under the targeted heads' mean circuit score from the window's start to a fixed step
  (the horizon), divided by the span: the curve's mean over [start, horizon], trapezoids between evaluations,
  linearly interpolated at a horizon between two evaluations. A head that forms later has a smaller area.
- the emergence step of the best targeted head, interpolated as the experiment reads it
  (`run_metrics.interpolated_emergence`); None (censored: "> last step") when it never stays above.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from curate.attribution.heads import HeadRef
from curate.errors import CurateError
from curate.pipelines.run_metrics import area_mean, interpolated_emergence
from curate.training.curves import CURVES_JSON

AREA = "area"
EMERGENCE = "emergence"
OUTCOMES = (AREA, EMERGENCE)


def curve_area(steps: Sequence[int], values: Sequence[float], start: int, stop: int) -> float:
    """Mean of the piecewise-linear curve through (steps, values) over [start, stop] (`run_metrics.area_mean`, the
    experiment's rule); the curve must cover it."""
    if stop <= start:
        raise CurateError(f"the area's span {start}:{stop} is empty")
    area = area_mean(steps, values, start, stop)
    if area is None:
        have = f"{int(steps[0])}-{int(steps[-1])}" if len(steps) else "none"
        raise CurateError(f"the curve's evaluations (steps {have}) do not cover steps {start}-{stop}")
    return area


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
