"""How a row's per-position contributions form its score (torch-free, so the command line can name the choices).

A row's gradient on a head's linear maps is a sum over positions (sum_t g_t x_t^T), so its influence score is a sum
of per-position contributions c_t = -<P, g_t x_t^T> (P the preconditioned probe gradient; the Q/K/V rows and the O
columns of the head at the same position summed). `sum`: the score is sum_t c_t (the plain influence); `positive`:
sum_t max(c_t, 0), only the positions that build the head (`attribution.influence.HeadInfluenceScorer`)."""
from __future__ import annotations

TOKEN_AGGREGATES = ("sum", "positive")
"""`curate score --token-aggregate` (gradient methods only); `sum` is the plain influence."""
