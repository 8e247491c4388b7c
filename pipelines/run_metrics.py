"""What one retrained run shows: its curves (the targeted and the other heads, ICL, losses), its emergence step and
the continuous outcomes read off them.

Conventions (stated in the report too):
- The circuit's score of a run at a step is its best head's metric among the heads that count for it
  (`attribution.metrics.first_candidate_layer`: induction, layers >= 1 when the model has more than one layer);
  "targeted" heads are the heads the scores were computed for; "other" heads are every other head that counts.
- Emergence step: the step at which the circuit's score crosses the threshold for good (it stays at or above it
  at every later evaluation), linearly interpolated between the two evaluations that bracket the crossing
  (`interpolated_emergence`). A run that never gets there is censored: its emergence step is only known to lie
  beyond its end step ("> N"), never averaged as if exact.
- Continuous outcomes, defined for every run (`add_outcomes`): the circuit score at the reference step (the
  baseline's mean emergence step, interpolated on the run's curve), and the area under the circuit curve from
  the first to the last step every run evaluated, divided by that length (trapezoid rule): the mean score.
- ICL score: late-context loss minus early-context loss on held-out rows; more negative = more in-context
  learning. Run means: a curve's mean over every evaluation point of the run.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from curate.attribution.heads import HeadRef
from curate.attribution.metrics import first_candidate_layer
from curate.errors import CurateError
from curate.training.curves import CURVES_JSON, SUMMARY_JSON, emergence_step as _grid_emergence

CURVE_METRICS = ("induction", "previous_token")
OUTCOMES = ("emergence", "score_at_reference", "auc")
"""The per-run outcomes the tables compare: emergence step (censored when never formed), then the continuous ones."""


def eligible_heads(metric: str, num_layers: int, num_heads: int) -> list[HeadRef]:
    """Heads that can carry `metric` (`first_candidate_layer`)."""
    first = first_candidate_layer(metric, num_layers)
    return [HeadRef(l, h) for l in range(first, num_layers) for h in range(num_heads)]


def parse_head_names(names: Sequence[str]) -> list[HeadRef]:
    """["1.2", "1.3"] -> [HeadRef(1, 2), HeadRef(1, 3)]."""
    return [HeadRef.parse(name) for name in names]


def _finite(values: Sequence[float | None]) -> list[float]:
    return [(-math.inf if v is None else float(v)) for v in values]


def emergence_step(steps: Sequence[int], values: Sequence[float | None], threshold: float) -> int | None:
    """First evaluated step whose value reaches `threshold` and stays there at every later point (None: never)."""
    return _grid_emergence(list(steps), _finite(values), threshold)


def interpolated_emergence(steps: Sequence[int], values: Sequence[float | None], threshold: float) -> float | None:
    """The emergence step linearly interpolated between the evaluation before `emergence_step` (below the threshold)
    and that step (at or above it); the first step itself when the curve starts above; None: never formed."""
    at = emergence_step(steps, values, threshold)
    if at is None:
        return None
    i = list(steps).index(at)
    if i == 0:
        return float(at)
    v0, v1 = _finite(values)[i - 1], float(values[i])  # type: ignore[arg-type]
    s0 = float(steps[i - 1])
    if not math.isfinite(v0) or v1 <= v0:
        return float(at)
    return s0 + (threshold - v0) / (v1 - v0) * (at - s0)


def value_at(steps: Sequence[int], values: Sequence[float | None], step: float) -> float | None:
    """The curve linearly interpolated at `step` (None outside the evaluated steps or on a missing value)."""
    xs = np.asarray(steps, dtype=np.float64)
    if not len(xs) or step < xs[0] or step > xs[-1] or any(v is None for v in values):
        return None
    return float(np.interp(step, xs, np.asarray(values, dtype=np.float64)))


def area_mean(steps: Sequence[int], values: Sequence[float | None], start: float, end: float) -> float | None:
    """Area under the curve from `start` to `end` (trapezoid rule over the evaluations, the ends interpolated),
    divided by end - start: the curve's mean over those steps (None when it does not cover them)."""
    lo, hi = value_at(steps, values, start), value_at(steps, values, end)
    if lo is None or hi is None or end <= start:
        return None
    inner = [(float(s), float(v)) for s, v in zip(steps, values) if start < s < end]  # type: ignore[arg-type]
    xs = np.asarray([start, *[s for s, _ in inner], end], dtype=np.float64)
    ys = np.asarray([lo, *[v for _, v in inner], hi], dtype=np.float64)
    return float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2.0) / (end - start))


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
    emergence: float | None  # circuit score (best head) crosses the threshold, interpolated (None: censored)
    emergence_targeted: float | None  # best targeted head crosses the threshold, interpolated
    emergence_other_metric: float | None  # the other head metric's best head (e.g. previous-token) crosses it
    final: dict[str, float | None]
    mean: dict[str, float | None]  # the same keys: the curve's mean over every evaluation point (run mean)
    same_as: str | None = None  # another (arm, seed) whose run this one is (identical spec, trained once)
    head_means: dict[str, list[list[float]]] | None = None  # per head metric: each head's run mean (layers x heads)
    emergence_evaluated: int | None = None  # the first evaluated step at or above the threshold for good
    score_at_reference: float | None = None  # continuous outcomes (`add_outcomes`)
    auc: float | None = None

    @property
    def end_step(self) -> int:
        return self.steps[-1]

    @property
    def run_id(self) -> str:
        """The run this is: runs copied to several seeds (`same_as`) are one distinct run."""
        return self.same_as or self.run_dir

    def outcome(self, name: str) -> tuple[float | None, bool]:
        """(value, censored) of an outcome (`OUTCOMES`): a run that never formed has emergence step > its end step."""
        if name == "emergence":
            return (float(self.emergence), False) if self.emergence is not None else (float(self.end_step), True)
        return getattr(self, name), False

    def to_json(self) -> dict:
        return asdict(self)


def distinct_runs(runs: dict[int, RunMetrics]) -> int:
    """How many different runs an arm's seeds are (an external model's one baseline copied to 3 seeds is 1)."""
    return len({r.run_id for r in runs.values()})


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
    best = curves[f"{circuit_metric}_best"]
    return RunMetrics(
        arm=arm, seed=seed, run_dir=run_dir, lineage=lineage, eval_every=eval_every, steps=steps, curves=curves,
        emergence=interpolated_emergence(steps, best, threshold),
        emergence_targeted=interpolated_emergence(steps, curves["targeted_max"], threshold),
        emergence_other_metric=interpolated_emergence(steps, curves[f"{other_metric}_best"], threshold),
        final=final,
        mean=mean,
        head_means=head_means,
        emergence_evaluated=emergence_step(steps, best, threshold),
    )


def read_run_metrics(arm: str, seed: int, run_dir: Path, circuit_metric: str, targeted: list[HeadRef],
                     threshold: float, lineage: bool) -> RunMetrics:
    """RunMetrics of a finished run folder (curves.json + summary.json written by `training.trainer`)."""
    run_dir = Path(run_dir)
    try:
        points = json.loads((run_dir / CURVES_JSON).read_text())["points"]
        summary = json.loads((run_dir / SUMMARY_JSON).read_text())
    except (OSError, json.JSONDecodeError, KeyError) as e:
        raise CurateError(f"{run_dir}: cannot read the run's curves ({type(e).__name__})") from None
    return metrics_from_points(arm, seed, str(run_dir), points, circuit_metric, targeted, threshold,
                               int(summary.get("eval_every") or 1), lineage)


@dataclass
class OutcomeSteps:
    """Where the continuous outcomes are read: the reference step (the baseline's mean emergence step; None when
    some baseline run never formed) and the span of the area (the steps every run evaluated)."""

    reference: float | None
    auc_from: float
    auc_to: float

    def to_json(self) -> dict:
        return asdict(self)


def add_outcomes(runs: dict[str, dict[int, RunMetrics]], circuit_metric: str, baseline: str = "baseline") -> OutcomeSteps:
    """Fill every run's continuous outcomes (`score_at_reference`, `auc`); returns where they were read."""
    every = [r for arm in runs.values() for r in arm.values()]
    if not every:
        raise CurateError("no runs to read outcomes from")
    base = list(runs.get(baseline, {}).values())
    formed = [r.emergence for r in base]
    reference = float(np.mean(formed)) if base and all(e is not None for e in formed) else None  # type: ignore[arg-type]
    start = float(max(r.steps[0] for r in every))
    end = float(min(r.end_step for r in every))
    key = f"{circuit_metric}_best"
    for r in every:
        curve = r.curves[key]
        r.score_at_reference = value_at(r.steps, curve, reference) if reference is not None else None
        r.auc = area_mean(r.steps, curve, start, end)
    return OutcomeSteps(reference, start, end)
