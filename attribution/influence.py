"""Head-restricted influence (the MDA score): I(z) = - grad_sub L(z)^T H_sub^-1 grad_sub f_probe.

Pieces: `probe_gradients` (grad of f_probe w.r.t. each target head's blocks), `EKFACFactors.precondition`
(once per head), `HeadInfluenceScorer.score_batch` (all target heads of a batch of rows in one
forward/backward, never forming a per-row weight gradient: score_i = - sum_t g_t^T P x_t), and each row's
gradient norm over each head's blocks (`row_block_sq_norms`). The driver that
runs them end to end (fit -> precondition -> score) is `attribution.scoring`.
Sign: positive = a gradient-descent step on the row increases f_probe (the row builds the head).
`token_aggregate="positive"` (`attribution.token_aggregation`): each row's score sums only its positive
per-position contributions, from the same x and g (no per-token backward).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from curate.attribution.ekfac import EKFACFactors, TargetHeads
from curate.attribution.heads import HeadBlocks, HeadGeometry, HeadRef, attention_of, check_mode, slice_head_grads
from curate.attribution.token_aggregation import TOKEN_AGGREGATES
from curate.attribution.trace import HeadTracer, frozen
from curate.errors import CurateError

BoundProbe = Callable[[nn.Module, HeadRef], torch.Tensor]
"""A probe with its tokens bound (`probes.ProbeFn` applied to fixed probes): (model, head) -> scalar tensor."""
Progress = Callable[[str, int, int], None]
"""progress(phase, done, total)."""

NORM_CHUNK_ELEMENTS = 1 << 24
"""Most elements of per-row gradients formed at once by `row_block_sq_norms` (64 MiB in float32)."""
HEAD_INDEPENDENT_CIRCUITS = {"induction"}
"""Circuits whose probe reads the model output, not one head: one probe gradient serves every head."""


# --------------------------------------------------------------------------- probe gradients


def probe_gradients(
    model: nn.Module, probe: BoundProbe, heads: Sequence[HeadRef], mode: str, shared: bool = False
) -> dict[HeadRef, HeadBlocks]:
    """grad of f_probe w.r.t. each head's blocks. `shared`: the probe ignores its head argument, so one
    backward gives every head's gradient. A block the probe does not reach (e.g. V/O under a probe that
    only reads attention weights) gets zeros; a probe that reaches none of a head's blocks is an error.
    """
    check_mode(mode)
    geo = HeadGeometry.of(model)
    heads = geo.check(heads)
    groups = [list(heads)] if shared else [[h] for h in heads]
    out: dict[HeadRef, HeadBlocks] = {}
    for group in groups:
        layers = sorted({h.layer for h in group})
        weights: list[torch.Tensor] = []
        for layer in layers:
            attn = attention_of(model, layer)
            weights += [attn.query_key_value.weight, attn.dense.weight]
        with frozen(model), torch.enable_grad():
            for w in weights:
                w.requires_grad_(True)
            value = probe(model, group[0])
            if not isinstance(value, torch.Tensor) or value.numel() != 1:
                raise CurateError("probe must return a scalar tensor")
            if not value.requires_grad:
                raise CurateError(f"probe has no gradient on head(s) {', '.join(map(str, group))}: it does not read them")
            grads = torch.autograd.grad(value.float().sum(), weights, allow_unused=True)
        by_layer = {layer: (grads[2 * i], grads[2 * i + 1]) for i, layer in enumerate(layers)}
        for h in group:
            qkv_g, dense_g = by_layer[h.layer]
            blocks = slice_head_grads(geo, qkv_g, dense_g, h.head, mode)
            if not any(bool(b.abs().sum() > 0) for b in blocks.values()):
                raise CurateError(f"probe has no gradient on head {h} (mode {mode}): it does not read that head")
            out[h] = {k: v if v.dtype == torch.float64 else v.float() for k, v in blocks.items()}
    return out


# --------------------------------------------------------------------------- scoring


def row_block_sq_norms(shared: torch.Tensor, per_head: torch.Tensor) -> torch.Tensor:
    """||sum_t u_t v_t^T||_F^2 per row and head, (n, k): the squared norm of a row's weight gradient on one head's
    block, from its factors: `per_head` (n, T, k, c) the head's slice of one factor, `shared` (n, T, d) the other
    (qkv: c = output-gradient rows, d = the LayerNorm output; dense: c = the head's attention output, d = the output
    gradient). Exact either way; computed through the T x T Gram matrices of both factors (sum_{t,s} (u_t.u_s)
    (v_t.v_s)) when they are smaller than the per-row gradients (k, c, d per row), else through the gradients,
    `NORM_CHUNK_ELEMENTS` at most at a time (a few rows at once, so long rows of a wide model fit beside the batch)."""
    n, t, k, c = per_head.shape
    d = shared.shape[-1]
    if t * t <= c * d:
        gram_shared = shared @ shared.transpose(1, 2)  # (n, T, T)
        gram_head = torch.einsum("ntkc,nskc->nkts", per_head, per_head)
        return torch.einsum("nkts,nts->nk", gram_head, gram_shared)
    step = max(1, NORM_CHUNK_ELEMENTS // (k * c * d))
    parts = [torch.einsum("ntkc,ntd->nkcd", per_head[a : a + step], shared[a : a + step]).square().sum(dim=(2, 3))
             for a in range(0, n, step)]
    return torch.cat(parts) if parts else per_head.new_zeros((0, k))


class HeadInfluenceScorer:
    """Scores batches of training rows against preconditioned probe gradients, all heads at once."""

    def __init__(
        self,
        model: nn.Module,
        factors: EKFACFactors | None,
        preconditioned_probe_grads: dict[HeadRef, HeadBlocks],
        heads: Sequence[HeadRef],
        mode: str,
        autocast: bool | None = None,
        dtype: torch.dtype = torch.float32,
        token_aggregate: str = "sum",
    ) -> None:
        if token_aggregate not in TOKEN_AGGREGATES:
            raise CurateError(f"token aggregate {token_aggregate!r}: expected one of {', '.join(TOKEN_AGGREGATES)}")
        self.token_aggregate = token_aggregate
        self.model = model
        self.targets = TargetHeads(HeadGeometry.of(model), heads, mode)
        self.heads = self.targets.heads
        if factors is not None:
            if factors.mode != mode:
                raise CurateError(f"factors were fitted for mode {factors.mode}, scoring asks for {mode}")
            missing = [str(h) for h in self.heads if h not in factors.heads]
            if missing:
                raise CurateError(f"no EK-FAC factors for head(s) {', '.join(missing)}")
        missing = [str(h) for h in self.heads if h not in preconditioned_probe_grads]
        if missing:
            raise CurateError(f"no preconditioned probe gradient for head(s) {', '.join(missing)}")
        self.dtype = dtype
        self.tracer = HeadTracer(model, self.targets.layers, self.targets.need_dense, autocast=autocast)
        dev = self.tracer.device
        # Per layer: P of the Q/K(/V) rows stacked (k * c, hidden), c = 2hd (qk) or 3hd (qkvo: QK then V,
        # the layout of a head's rows in query_key_value); P_O side by side (hidden, k * hd).
        self._p_qkv: dict[int, torch.Tensor] = {}
        self._p_o: dict[int, torch.Tensor] = {}
        self._col: dict[int, list[int]] = {}
        index = {h: i for i, h in enumerate(self.heads)}
        for layer in self.targets.layers:
            group = [HeadRef(layer, h) for h in self.targets.by_layer[layer]]
            self._col[layer] = [index[h] for h in group]
            rows = []
            for h in group:
                p = preconditioned_probe_grads[h]
                rows.append(torch.cat([p["qk"], p["v"]], 0) if self.targets.need_dense else p["qk"])
            self._p_qkv[layer] = torch.cat(rows, 0).to(device=dev, dtype=dtype)
            if self.targets.need_dense:
                self._p_o[layer] = torch.cat([preconditioned_probe_grads[h]["o"] for h in group], 1).to(device=dev, dtype=dtype)
        self._scores: torch.Tensor | None = None  # (n, heads): `sum`'s running scores
        self._positions: torch.Tensor | None = None  # (n, T, heads): `positive`'s per-position contributions
        self._sq_norms: torch.Tensor | None = None  # (n, heads): squared gradient norms, when asked for

    # TraceConsumer
    def on_qkv(self, layer: int, x: torch.Tensor, g: torch.Tensor) -> None:
        hd = self.targets.geo.head_dim
        c = 3 * hd if self.targets.need_dense else 2 * hd
        p = self._p_qkv[layer]
        y = (x.to(self.dtype) @ p.T).view(*x.shape[:-1], -1, c)  # (n, T, k, c): P x_t per head
        gs = self.targets.qkv_heads(layer, g, "qkv" if self.targets.need_dense else "qk").to(self.dtype)
        self._add(layer, y, gs)
        if self._sq_norms is not None:
            self._add_sq_norms(layer, row_block_sq_norms(x.to(self.dtype), gs))

    def on_dense(self, layer: int, a: torch.Tensor, g: torch.Tensor) -> None:
        hd = self.targets.geo.head_dim
        z = (g.to(self.dtype) @ self._p_o[layer]).view(*g.shape[:-1], -1, hd)  # (n, T, k, hd): P^T g_t per head
        ah = self.targets.dense_heads(layer, a).to(self.dtype)
        self._add(layer, z, ah)
        if self._sq_norms is not None:
            self._add_sq_norms(layer, row_block_sq_norms(g.to(self.dtype), ah))

    def _add(self, layer: int, u: torch.Tensor, v: torch.Tensor) -> None:
        """Subtract the per-head dots of (n, T, k, c) `u` and `v`: summed over positions (`sum`), or kept per position
        (`positive`, clamped once every block of the position is in)."""
        if self._positions is not None:
            self._positions[:, :, self._col[layer]] -= torch.einsum("ntkc,ntkc->ntk", u, v)
        else:
            assert self._scores is not None
            self._scores[:, self._col[layer]] -= torch.einsum("ntkc,ntkc->nk", u, v)

    def _trace(self, rows: "np.ndarray | torch.Tensor", per_position: bool,
               with_norms: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(mean token loss (n,), scores (n, heads) or per position (n, T, heads), squared gradient norms (n, heads)
        or None) of one forward/backward."""
        n, positions = len(rows), int(rows.shape[1]) - 1  # the inputs are row[:-1]
        dev = self.tracer.device
        shape = (n, positions, len(self.heads)) if per_position else (n, len(self.heads))
        acc = torch.zeros(shape, dtype=self.dtype, device=dev)
        sq = torch.zeros(n, len(self.heads), dtype=self.dtype, device=dev) if with_norms else None
        if per_position:
            self._positions = acc
        else:
            self._scores = acc
        self._sq_norms = sq
        try:
            loss = self.tracer.run(rows, self, labels="true")
        finally:
            self._scores = self._positions = self._sq_norms = None
        return loss, acc, sq

    def contributions(self, rows: "np.ndarray | torch.Tensor") -> np.ndarray:
        """Per-position contributions of each row to each head's score (n, T, n_heads): a row's `sum` score is their
        sum over positions, its `positive` score the sum of the positive ones."""
        return self._trace(rows, per_position=True)[1].double().cpu().numpy()

    def _add_sq_norms(self, layer: int, sq: torch.Tensor) -> None:
        assert self._sq_norms is not None
        self._sq_norms[:, self._col[layer]] += sq

    def score_batch(self, rows: "np.ndarray | torch.Tensor") -> tuple[np.ndarray, np.ndarray]:
        """(mean token loss per row (n,), score per row and target head (n, n_heads)) for one batch."""
        loss, scores, _ = self._score(rows, with_norms=False)
        return loss, scores

    def score_batch_with_norms(self, rows: "np.ndarray | torch.Tensor") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`score_batch` plus each row's gradient norm per target head (n, n_heads): the L2 norm of the gradient of
        the row's summed token loss (the gradient the score uses) restricted to the head's blocks of the mode
        (qk: its Q/K rows of query_key_value; qkvo: also its V rows and its dense columns)."""
        loss, scores, norms = self._score(rows, with_norms=True)
        assert norms is not None
        return loss, scores, norms

    def _score(self, rows: "np.ndarray | torch.Tensor", with_norms: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """One forward/backward: mean token loss, scores by the token aggregate, gradient norms when asked for."""
        positive = self.token_aggregate == "positive"
        loss, acc, sq = self._trace(rows, per_position=positive, with_norms=with_norms)
        scores = acc.clamp(min=0).sum(dim=1) if positive else acc
        norms = None if sq is None else sq.clamp(min=0).sqrt().double().cpu().numpy()
        return loss.float().cpu().numpy(), scores.double().cpu().numpy(), norms


# --------------------------------------------------------------------------- fit rows and probes


def fit_data_key(corpus, fit_ids: np.ndarray, seed: int, by_path: bool = False) -> str:
    """What the factors were fitted on: the corpus (by its content, so a moved workspace keeps its cache;
    `by_path`: the resolved path, as folders written before content keys recorded it), the fit rows (hashed)
    and the label seed."""
    ids = np.ascontiguousarray(fit_ids, dtype=np.int64)
    if not hasattr(corpus, "path"):
        where = "?"
    elif by_path or not hasattr(corpus, "content_key"):
        where = str(Path(corpus.path).resolve())
    else:
        where = "content:" + corpus.content_key()
    desc = {
        "corpus": where,
        "rows": int(getattr(corpus, "num_rows", 0)),
        "fit": hashlib.blake2b(ids.tobytes(), digest_size=8).hexdigest(),
        "n_fit": int(len(ids)),
        "seed": int(seed),
    }
    return json.dumps(desc, sort_keys=True)


def fit_row_ids(rows: tuple[int, int], fit_rows: int | None, seed: int) -> np.ndarray:
    """The EK-FAC fit rows: the whole row range, or `fit_rows` of it sampled with `seed` (sorted)."""
    window = np.arange(rows[0], rows[1], dtype=np.int64)
    if fit_rows is None or fit_rows >= len(window):
        return window
    return np.sort(np.random.default_rng(seed).choice(window, size=int(fit_rows), replace=False))


def iter_row_batches(corpus, ids: np.ndarray, batch_rows: int):
    """(row ids, rows) batches of `ids` (sorted runs read in one call)."""
    for a in range(0, len(ids), batch_rows):
        chunk = ids[a : a + batch_rows]
        if len(chunk) and chunk[-1] - chunk[0] == len(chunk) - 1:
            rows = np.asarray(corpus.rows(int(chunk[0]), int(chunk[-1]) + 1))
        else:
            rows = corpus.take(chunk)
        yield chunk, rows


def circuit_probe(circuit, probes: torch.Tensor) -> tuple[BoundProbe, bool]:
    """(f_probe(model, head), shared) for a registry circuit (`attribution.circuits`)."""
    reads_head = getattr(circuit, "probe_reads_head", None)
    shared = (circuit.name in HEAD_INDEPENDENT_CIRCUITS) if reads_head is None else not reads_head

    def fn(model: nn.Module, head: HeadRef) -> torch.Tensor:
        return circuit.probe(model, probes.to(next(model.parameters()).device), head)

    return fn, shared


__all__ = [
    "HeadInfluenceScorer",
    "BoundProbe",
    "circuit_probe",
    "fit_data_key",
    "fit_row_ids",
    "iter_row_batches",
    "probe_gradients",
    "row_block_sq_norms",
]
