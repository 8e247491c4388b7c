"""The scoring methods of `curate score --method`: MDA and three baselines, each written as the same scores folder
(`attribution.scores_folder`), so explain, index, build-mix and experiment take any of them.

- `mda` (default): I(z) = - grad_sub L(z)^T H_sub^-1 grad_sub f_probe on the circuit's heads, H_sub the EK-FAC
  curvature (`attribution.influence`); one `head_L_H` column per head, `score` = their sum.
- `gradient-dot`: the same with the identity in place of H_sub^-1: score = - grad_sub L(z)^T grad_sub f_probe,
  same heads, same subspace, same sign (positive = a gradient-descent step on the row increases f_probe); no
  factor fit. Per-head columns as for MDA.
- `copy-share`: the heuristic that knows the mechanism, `copy_share`: the share of the row's 4-grams that repeat
  an earlier 4-gram of the same row. The model is not run (`loss` is NaN); no head columns.
- `loss`: the row's mean next-token loss under the checkpoint (`attribution.scoring.row_loss`): score = loss,
  higher loss = higher score; no head columns.
Every method still resolves the circuit's heads (recorded in summary.json: what an experiment measures).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import nn

from curate.attribution.scoring import RowStatistic, row_loss
from curate.augment.features import repetition_features
from curate.errors import CurateError
from curate.pipelines.score_request import METHODS

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


@dataclass(frozen=True)
class ScoreMethod:
    """What a method needs: a curvature for the probe gradients (a gradient method), or a row statistic."""

    name: str
    curvature: str | None  # "ekfac" or "identity" (`attribution.scoring.CURVATURES`); None: `statistic` scores
    statistic: RowStatistic | None = None

    @property
    def per_head(self) -> bool:
        """Does it write one column per head (and need the probe gradients)?"""
        return self.statistic is None

    @property
    def fits_factors(self) -> bool:
        return self.curvature == "ekfac"


_METHODS = {
    "mda": ScoreMethod("mda", "ekfac"),
    "gradient-dot": ScoreMethod("gradient-dot", "identity"),
    "copy-share": ScoreMethod("copy-share", None, copy_share),
    "loss": ScoreMethod("loss", None, row_loss),
}
assert tuple(_METHODS) == METHODS


def score_method(name: str) -> ScoreMethod:
    """The method called `name` (one of `score_request.METHODS`)."""
    if name not in _METHODS:
        raise CurateError(f"scoring method {name!r}: expected one of {', '.join(METHODS)}")
    return _METHODS[name]
