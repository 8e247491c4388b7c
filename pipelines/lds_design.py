"""How an evaluation subset's retrain leaves its dropped rows out (`curate evaluate --design`), as a training plan.

Both designs drop the same rows: subset S's mix is `build-mix --remove DROP --control random --seed S`.
- compact: the retrain trains that mix's plan.json: the dropped rows are removed and every later row moves up into
  the freed positions (`training.plan` stream semantics), so every later row trains earlier than in the baseline.
- replace: the retrain trains the baseline's stream position for position, except that each dropped row's position
  holds a filler row, a base-corpus row the retrain never trains otherwise: after its trained rows (steps x batch)
  and before the first row no run may read (the held-out rows, `pipelines.arm_plan.row_limit`). Fillers are drawn
  with the subset's seed, without replacement, and fill the dropped positions in ascending order. Written into the
  mix folder (before its manifest) as a plan with an explicit order (REPLACE_PLAN with `order_file` REPLACE_ORDER:
  rows 0 .. steps x batch - 1 with the dropped ones swapped for their fillers; no drop, no insert) and the record
  FILLER_FILE (the dropped rows, window-relative and absolute, and the filler row of each).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from curate.errors import CurateError
from curate.paths import portable
from curate.pipelines.evaluate_options import DESIGNS
from curate.training.plan import PLAN_VERSION, plan_from_json

REPLACE, COMPACT = DESIGNS
SEED_FILL = 4  # the filler draw's seed stream, after build-mix's (augment.mix_spec SEED_REMOVE, SEED_ADD, SEED_ORDER)

REPLACE_PLAN = "replace-plan.json"
REPLACE_ORDER = "replace-order.npy"
FILLER_FILE = "filler.json"


def design_identity(design: str) -> dict:
    """The design's entry in the evaluation's identity: none for compact, so that the evaluation folders written
    before the design existed (all compact) stay valid; a folder of one design refuses the other."""
    return {} if design == COMPACT else {"design": design}


@dataclass(frozen=True)
class FillerRange:
    """The base-corpus rows [start, stop) a retrain never trains: after its trained rows, before the unreadable ones."""

    start: int
    stop: int

    @property
    def rows(self) -> int:
        return max(0, self.stop - self.start)

    def to_json(self) -> list[int]:
        return [self.start, self.stop]


def filler_range(steps: int, batch_size: int, row_limit: int) -> FillerRange:
    """The rows after a retrain of `steps` steps at `batch_size` and before `row_limit` (its first unreadable row)."""
    return FillerRange(steps * batch_size, row_limit)


def check_filler(needed: int, fill: FillerRange) -> None:
    """Enough rows the retrains never train to replace `needed` dropped rows, or one error line."""
    if needed > fill.rows:
        raise CurateError(f"--design replace: each subset's {needed} dropped rows need as many filler rows the retrains never "
                          f"train (rows {fill.start} to {fill.stop} of the corpus, before its held-out rows), but only "
                          f"{fill.rows} exist; use fewer --steps, a smaller --drop or --design compact")


def filler_rows(count: int, fill: FillerRange, seed: int) -> np.ndarray:
    """`count` distinct filler rows drawn from `fill` with the subset's seed (the same seed, the same rows)."""
    check_filler(count, fill)
    rng = np.random.default_rng([int(seed), SEED_FILL])
    return fill.start + rng.choice(fill.rows, size=count, replace=False).astype(np.int64)


def replace_order(dropped: np.ndarray, filler: np.ndarray, trained_rows: int) -> np.ndarray:
    """The retrain's row order: rows 0 .. trained_rows - 1 with the i-th dropped row (ascending) swapped for filler[i]."""
    dropped = np.asarray(dropped, dtype=np.int64)
    if len(dropped) != len(filler):
        raise CurateError(f"{len(dropped)} dropped rows but {len(filler)} filler rows")
    if len(dropped) and (dropped.min() < 0 or dropped.max() >= trained_rows):
        raise CurateError(f"a dropped row lies outside the retrain's {trained_rows} trained rows")
    if len(np.unique(dropped)) != len(dropped) or (np.diff(dropped) < 0).any():
        raise CurateError("the dropped rows must be distinct and ascending")
    order = np.arange(trained_rows, dtype=np.int64)
    order[dropped] = filler
    return order


def write_replace_plan(tmp: Path, final: Path, corpus: str, fill: FillerRange, seed: int, first_row: int) -> None:
    """Into a mix's (temporary) folder `tmp`, whose plan.json drops the subset's rows: the replace design's plan, its
    order and the filler record; paths inside relative to the mix's final folder `final` where they share a root."""
    dropped = np.asarray(json.loads((tmp / "plan.json").read_text()).get("drop", []), dtype=np.int64)
    filler = filler_rows(len(dropped), fill, seed)
    np.save(tmp / REPLACE_ORDER, replace_order(dropped, filler, fill.start))
    plan = {"version": PLAN_VERSION, "corpus": portable(corpus, final), "order_file": REPLACE_ORDER,
            "note": f"evaluate --design replace: {len(dropped)} dropped rows replaced in place by rows "
                    f"{fill.start}-{fill.stop} drawn with seed {seed}"}
    plan_from_json(json.loads(json.dumps(plan)), tmp, str(tmp / REPLACE_PLAN))  # what the trainer will parse
    (tmp / REPLACE_PLAN).write_text(json.dumps(plan, sort_keys=True) + "\n")
    record = {"design": REPLACE, "seed": int(seed), "filler_range": fill.to_json(),
              "dropped_window_rows": (dropped - first_row).tolist(), "dropped": dropped.tolist(), "filler": filler.tolist()}
    (tmp / FILLER_FILE).write_text(json.dumps(record, sort_keys=True) + "\n")
