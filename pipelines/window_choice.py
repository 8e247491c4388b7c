"""The experiment's attribution window, chosen on its baseline run: given, or up to the checkpoint where the circuit
formed (or, never formed, a share of the baseline)."""
from __future__ import annotations

import json
from dataclasses import dataclass

from curate.attribution.scores_folder import Window
from curate.errors import CurateError
from curate.pipelines.run_metrics import curve_metrics, emergence_step
from curate.pipelines.experiment_setting import Setting
from curate.pipelines.score_request import parse_window
from curate.training.curves import CURVES_JSON
from curate.training.models import list_checkpoints

FALLBACK_WINDOW_SHARE = 2 / 3  # window end when the circuit never formed: the last checkpoint at 2/3 of the baseline


@dataclass(frozen=True)
class WindowChoice:
    """The chosen window, why it was chosen, and the baseline's emergence step (curate runs only)."""

    window: Window
    reason: str
    emergence: int | None


def choose_window(s: Setting, run_json: dict) -> WindowChoice:
    """The attribution window [start, end): --window, else 0 to the first checkpoint at/after the baseline's
    emergence, else (never formed) 0 to the last checkpoint at 2/3 of the baseline."""
    start, end = parse_window(s.opts.window) if s.opts.window is not None else (None, None)
    start = start or 0
    if s.baseline.mode == "external":
        assert end is not None
        return WindowChoice(Window(start, end, s.baseline.batch_size), "given (--window)", None)
    assert s.baseline.run_dir is not None
    checkpoints = sorted(list_checkpoints(s.baseline.run_dir))
    points = json.loads((s.baseline.run_dir / CURVES_JSON).read_text())["points"]
    metric = s.circuit.metric  # type: ignore[attr-defined]
    best = curve_metrics(points, metric, [])[f"{metric}_best"]
    formed = emergence_step([int(p["step"]) for p in points], best, s.threshold)
    if end is None and s.opts.revision is not None:
        m = s.opts.revision[4:] if s.opts.revision.startswith("step") else ""
        if not m.isdigit():
            raise CurateError(f"revision {s.opts.revision!r}: expected stepK")
        end, reason = int(m), f"the checkpoint given (--revision {s.opts.revision})"
    elif end is not None:
        reason = "given (--window)"
    elif formed is not None:
        after = [c for c in checkpoints if c >= formed]
        if not after:
            raise CurateError(f"{s.baseline.run_dir}: no saved checkpoint at or after step {formed}, where the circuit formed")
        end, reason = after[0], f"the first checkpoint at/after the baseline's emergence (step {formed})"
    else:
        final = int(run_json["spec"]["steps"])
        limit = int(final * FALLBACK_WINDOW_SHARE)
        before = [c for c in checkpoints if start < c <= limit]
        if not before:
            raise CurateError(f"{s.baseline.run_dir}: no checkpoint after step {start} and before step {limit}; give the window")
        end = before[-1]
        reason = (f"the circuit never formed in the baseline (best score {max(best):.3f} < threshold {s.threshold:g}): "
                  f"the last checkpoint at 2/3 of the baseline")
    if end <= start:
        raise CurateError(f"the window {start}:{end} is empty")
    if end not in checkpoints:
        have = ", ".join(f"step{c}" for c in checkpoints[:14])
        raise CurateError(f"{s.baseline.run_dir}: no checkpoint step{end} to score the window's end at (have: {have}, ...)")
    if start > 0 and start not in checkpoints:
        raise CurateError(f"{s.baseline.run_dir}: no checkpoint step{start} for the arms to start from (the window's start)")
    return WindowChoice(Window(start, end, s.baseline.batch_size), reason, formed)
