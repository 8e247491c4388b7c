"""The `copy-share` scoring method: the heuristic that knows the induction mechanism, the share of a row's 4-grams
that repeat an earlier 4-gram of the same row. The model is not run."""
from __future__ import annotations

import numpy as np
from torch import nn

from curate.augment.features import repetition_features

COPY_NGRAM = 4
"""copy-share counts repeats of n-grams of this length."""


def copy_share(model: nn.Module | None, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The `copy-share` method: (NaN losses, share) per row; the model is not used.

    For a stored row of L tokens t_0..t_{L-1} (the whole row, the first input token to the last label), the 4-grams
    start at p = 0..L-4; share = #{p : t[q:q+4] == t[p:p+4] for some q < p} / (L - 3), 0 when L < 4. This is
    `augment.features.repetition_features(rows).repeat_share[:, 1]` (its default orders are (2, 4, 8): column 1 is
    n = 4), computed for n = 4 alone; 4-grams count as equal when their 64-bit hashes agree on 40+ bits.
    """
    rows = np.asarray(rows)
    share = repetition_features(rows, orders=(COPY_NGRAM,), span_order=COPY_NGRAM).repeat_share[:, 0]
    return np.full(len(rows), np.nan, dtype=np.float32), share.astype(np.float64)
