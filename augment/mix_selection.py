"""Which window rows a mix removes: every window row's aggregate score (streamed from the scores folder's
shards), the scored rows ranked best first, and the removed rows (the top rows, or seeded random rows for
the control)."""
from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq

from curate.attribution.score_table import top_indices
from curate.attribution.scores_folder import ScoresFolder, Window
from curate.augment.mix_spec import SEED_REMOVE, MixSpec
from curate.errors import CurateError


def window_scores(scores: ScoresFolder, window: Window) -> np.ndarray:
    """Aggregate score of each window row (window-relative index), NaN where unscored; streamed shard by shard."""
    values = np.full(window.rows, np.nan, dtype=np.float64)
    seen = np.zeros(window.rows, dtype=bool)
    for f in scores.shards:
        table = pq.read_table(f, columns=["row_id", "score"])
        ids = table.column("row_id").to_numpy().astype(np.int64)
        vals = table.column("score").to_numpy(zero_copy_only=False).astype(np.float64)
        outside = (ids < window.first_row) | (ids >= window.stop_row)
        if outside.any():
            raise CurateError(
                f"{f}: row {int(ids[outside][0])} is outside the window's rows [{window.first_row}, {window.stop_row}) "
                f"(steps {window.start_step}-{window.end_step} x {window.batch_size})"
            )
        bad = ~np.isfinite(vals)
        if bad.any():
            raise CurateError(f"{f}: row {int(ids[bad][0])} has a non-finite score ({vals[bad][0]})")
        rel = ids - window.first_row
        uniq, counts = np.unique(rel, return_counts=True)
        if (counts > 1).any() or seen[rel].any():
            dup = uniq[counts > 1][0] if (counts > 1).any() else rel[seen[rel]][0]
            raise CurateError(f"{f}: row {int(dup) + window.first_row} is scored more than once")
        seen[rel] = True
        values[rel] = vals
    return values


def rank_rows(values: np.ndarray) -> np.ndarray:
    """Indices of the scored entries, highest score first, ties by lower index."""
    scored = np.flatnonzero(~np.isnan(values))
    return scored[top_indices(values[scored], scored)]


def removed_rows(spec: MixSpec, ranked: np.ndarray, total: int, n_remove: int) -> np.ndarray:
    """Window-relative rows to remove: the `n_remove` best ranked, or (random control) as many seeded random rows."""
    if spec.control == "random":
        return np.random.default_rng([spec.seed, SEED_REMOVE]).choice(total, size=n_remove, replace=False)
    return ranked[:n_remove]
