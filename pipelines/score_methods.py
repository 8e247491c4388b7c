"""What each scoring method of `curate score --method` needs at scoring time, resolved from its registry line
(`pipelines.methods`): a curvature for the probe gradients (a gradient method), or a row statistic. Every method
writes the same scores folder (`attribution.scores_folder`), so explain, index, build-mix and experiment take any.

- `mda` (default): I(z) = - grad_sub L(z)^T H_sub^-1 grad_sub f_probe on the circuit's heads, H_sub the EK-FAC
  curvature (`attribution.influence`); one `head_L_H` column per head, `score` = their sum.
- `gradient-dot`: the same with the identity in place of H_sub^-1: score = - grad_sub L(z)^T grad_sub f_probe,
  same heads, same subspace, same sign (positive = a gradient-descent step on the row increases f_probe); no
  factor fit. Per-head columns as for MDA.
- `copy-share` (`pipelines.copy_share`): the share of the row's 4-grams that repeat an earlier 4-gram of the same
  row. The model is not run (`loss` is NaN); no head columns.
- `loss`: the row's mean next-token loss under the checkpoint (`attribution.scoring.row_loss`): score = loss,
  higher loss = higher score; no head columns.
Every method still resolves the circuit's heads (recorded in summary.json: what an experiment measures).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

from curate.attribution.scoring import RowStatistic
from curate.errors import CurateError
from curate.pipelines.methods import REGISTRY, method_names


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


def load_scorer(target: str) -> RowStatistic:
    """The function a registry line names as "module:function" (imported here: the registry stays torch-free)."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def score_method(name: str) -> ScoreMethod:
    """The method called `name` (one of `pipelines.methods.method_names()`)."""
    if name not in REGISTRY:
        raise CurateError(f"scoring method {name!r}: expected one of {', '.join(method_names())}")
    m = REGISTRY[name]
    return ScoreMethod(m.name, m.curvature, load_scorer(m.scorer) if m.scorer is not None else None)
