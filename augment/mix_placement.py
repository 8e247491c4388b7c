"""Where a mix's added rows go among the kept window rows (`training.plan` semantics: each added row sits right
before the kept row at its anchor), the output positions of both, and the run-wise row copy that merges them."""
from __future__ import annotations

import numpy as np

from curate.attribution.scores_folder import Window
from curate.errors import CurateError


def placement(added: int, kept: int, window: Window, at_step: int | None) -> tuple[np.ndarray, dict]:
    """Anchors (positions among the kept rows) of the added rows, and the plan's `step`/`steps` field."""
    b = window.batch_size
    if at_step is not None:
        if not window.start_step <= at_step < window.end_step:
            raise CurateError(f"at step {at_step}: outside the window (steps {window.start_step} to {window.end_step - 1})")
        rel = (at_step - window.start_step) * b
        if rel > kept:
            raise CurateError(
                f"at step {at_step}: after the removal only {kept} window rows remain, which end before step {at_step}"
            )
        return np.full(added, rel, dtype=np.int64), {"step": int(at_step)}
    steps = kept // b
    if steps < 1:
        raise CurateError(f"after the removal only {kept} window rows remain, less than one step of {b}: nothing to spread over")
    anchors = (np.arange(added, dtype=np.int64) * steps * b) // added
    return anchors, {"steps": [window.start_step, window.start_step + steps]}


def copy_runs(dst: np.ndarray, dst_rows: np.ndarray, src: np.ndarray, src_rows: np.ndarray) -> None:
    """dst[dst_rows[i]] = src[src_rows[i]], one slice copy per run that is consecutive on both sides."""
    if len(dst_rows) == 0:
        return
    breaks = np.flatnonzero((np.diff(src_rows) != 1) | (np.diff(dst_rows) != 1)) + 1
    starts = np.concatenate([[0], breaks]).tolist()
    ends = np.concatenate([breaks, [len(dst_rows)]]).tolist()
    for s, e in zip(starts, ends):
        d, r = int(dst_rows[s]), int(src_rows[s])
        dst[d : d + e - s] = src[r : r + e - s]


def merge_positions(anchors: np.ndarray, kept: int) -> tuple[np.ndarray, np.ndarray]:
    """Output positions of the kept rows and of the added rows (each added row right before the kept row at its anchor)."""
    ins_pos = anchors + np.arange(len(anchors), dtype=np.int64)
    base_pos = np.arange(kept, dtype=np.int64) + np.searchsorted(anchors, np.arange(kept, dtype=np.int64), side="right")
    return base_pos, ins_pos
