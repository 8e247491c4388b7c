"""EK-FAC curvature of attention heads' own parameters, fitted with labels sampled from the model.

Per block (see `attribution.heads`), with x the block's input and g the gradient w.r.t. its output:
A = E_tokens[x x^T], S = E_tokens[g g^T] -> eigenvectors Q_A, Q_S; then the eigenvalues are refit in
that basis: Lambda[i, j] = E_rows[(Q_S^T dW_row Q_A)_ij^2], dW_row = G_row^T X_row (one row's summed
loss). The damped inverse is applied in the eigenbasis: H^-1 V = Q_S [(Q_S^T V Q_A) / D] Q_A^T,
D = max(Lambda + damping * mean(Lambda), floor) per eigenvalue (`attribution.damping`: the floor clamps the whole
denominator).

Inputs: the QK and V blocks share the layer's LayerNorm output (A fitted once per layer); the O block's
input is the head's attention output (hd), its output gradient is the dense output's (S_O once per layer).

Distribution: `CovarianceAccumulator` (pass 1) and `LambdaAccumulator` (pass 2) each take `update(rows,
row_ids)` on a shard, `merge(other)` partial sums, `state_dict()` / `from_state()` as plain CPU tensors
(picklable), and `finalize()` on the driver. The label draw depends only on (seed, row id), so the
result does not depend on how the rows are sharded.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from curate.attribution.damping import DEFAULT_DAMPING, DEFAULT_DAMPING_FLOOR
from curate.attribution.heads import MODES, HeadBlocks, HeadGeometry, HeadRef, check_mode
from curate.attribution.trace import HeadTracer, row_seeds
from curate.errors import CurateError



# --------------------------------------------------------------------------- target heads


class TargetHeads:
    """Target heads grouped by layer, and how to pick their slices out of per-layer tensors."""

    def __init__(self, geo: HeadGeometry, heads: Sequence[HeadRef], mode: str) -> None:
        check_mode(mode)
        self.geo = geo
        self.mode = mode
        self.heads = geo.check(heads)
        self.by_layer: dict[int, list[int]] = {}
        for h in self.heads:
            self.by_layer.setdefault(h.layer, []).append(h.head)
        self.layers = sorted(self.by_layer)
        self.need_dense = "o" in MODES[mode]

    def pick(self, layer: int) -> "slice | torch.Tensor":
        """Index of the layer's target heads along a heads axis (a slice when contiguous: no copy)."""
        idx = self.by_layer[layer]
        if idx == list(range(idx[0], idx[-1] + 1)):
            return slice(idx[0], idx[-1] + 1)
        return torch.tensor(idx, dtype=torch.long)

    def _select(self, layer: int, per_head: torch.Tensor) -> torch.Tensor:
        """The layer's target heads out of a (..., heads, c) tensor: (..., k, c)."""
        idx = self.pick(layer)
        if isinstance(idx, torch.Tensor):
            return per_head.index_select(-2, idx.to(per_head.device))
        return per_head[..., idx, :]

    def qkv_heads(self, layer: int, t: torch.Tensor, part: str) -> torch.Tensor:
        """(n, T, 3*hidden) -> (n, T, k, rows): the target heads' rows of `part` ("qk", "v" or "qkv")."""
        return self._select(layer, self.geo.qkv_by_head(t))[..., self.geo.rows_in_head(part)]

    def dense_heads(self, layer: int, a: torch.Tensor) -> torch.Tensor:
        """(n, T, hidden) dense input -> (n, T, k, hd): the target heads' attention outputs."""
        return self._select(layer, self.geo.dense_by_head(a))

    def meta(self) -> dict:
        g = self.geo
        return {
            "mode": self.mode,
            "heads": [[h.layer, h.head] for h in self.heads],
            "geometry": [g.num_layers, g.num_heads, g.hidden],
        }

    @classmethod
    def from_meta(cls, meta: dict) -> "TargetHeads":
        geo = HeadGeometry(*[int(v) for v in meta["geometry"]])
        return cls(geo, [HeadRef(int(l), int(h)) for l, h in meta["heads"]], str(meta["mode"]))

    def same_as(self, other: "TargetHeads") -> bool:
        return self.meta() == other.meta()


# --------------------------------------------------------------------------- state plumbing


class _Partial:
    """Named tensors plus metadata; partial sums merge by addition."""

    kind = "?"

    def __init__(self, targets: TargetHeads, tensors: dict[str, torch.Tensor], counts: dict[str, int]) -> None:
        self.targets = targets
        self.tensors = tensors
        self.counts = counts
        self._runner: "EKFACFitter | None" = None

    def state_dict(self) -> dict:
        """Plain CPU tensors and JSON-able metadata (picklable; what a Ray actor returns)."""
        return {
            "kind": self.kind,
            "meta": self.targets.meta(),
            "counts": dict(self.counts),
            "tensors": {k: v.detach().cpu() for k, v in self.tensors.items()},
        }

    def merge(self, other: "_Partial") -> "_Partial":
        """Add another shard's partial sums into this one (in place); returns self."""
        if type(other) is not type(self) or not self.targets.same_as(other.targets):
            raise CurateError(f"cannot merge {other.kind} partial sums fitted for other heads/mode")
        if self.tensors.keys() != other.tensors.keys():
            raise CurateError(f"cannot merge {other.kind} partial sums: different blocks")
        for k, v in other.tensors.items():
            self.tensors[k] += v.to(self.tensors[k])
        for k, c in other.counts.items():
            self.counts[k] = self.counts.get(k, 0) + int(c)
        return self

    def attach(self, fitter: "EKFACFitter") -> "_Partial":
        """Bind to a fitter (model + tracer) so `update` can run batches; returns self."""
        if not self.targets.same_as(fitter.targets):
            raise CurateError("accumulator and fitter target different heads/mode")
        self._runner = fitter
        for k, v in self.tensors.items():
            self.tensors[k] = v.to(device=fitter.device, dtype=fitter.dtype)
        return self

    def update(self, rows: "np.ndarray | torch.Tensor", row_ids: Sequence[int] | None = None) -> None:
        """Accumulate one batch of rows (labels sampled from the model, seeded by row id)."""
        if self._runner is None:
            raise CurateError(f"{self.kind} accumulator is not attached to a model (call attach(fitter))")
        self._runner.run_batch(self, rows, row_ids)

    def _check_counts(self, key: str) -> int:
        n = int(self.counts.get(key, 0))
        if n <= 0:
            raise CurateError(f"EK-FAC {self.kind}: no data was accumulated (0 {key})")
        return n


def _sym_eigvecs(m: torch.Tensor) -> torch.Tensor:
    """Eigenvectors of a symmetric matrix (or a stack), computed in float64."""
    m64 = m.double()
    m64 = 0.5 * (m64 + m64.transpose(-1, -2))
    return torch.linalg.eigh(m64).eigenvectors.to(m.dtype)


# --------------------------------------------------------------------------- pass 1: covariances


class CovarianceAccumulator(_Partial):
    """Pass 1: token sums of x x^T and g g^T for every needed block."""

    kind = "covariance"

    @classmethod
    def empty(cls, targets: TargetHeads, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> "CovarianceAccumulator":
        g = targets.geo
        d, hd = g.hidden, g.head_dim
        t: dict[str, torch.Tensor] = {}
        for layer in targets.layers:
            k = len(targets.by_layer[layer])
            t[f"A/{layer}"] = torch.zeros(d, d, dtype=dtype, device=device)
            t[f"S_qk/{layer}"] = torch.zeros(k, 2 * hd, 2 * hd, dtype=dtype, device=device)
            if targets.need_dense:
                t[f"S_v/{layer}"] = torch.zeros(k, hd, hd, dtype=dtype, device=device)
                t[f"A_o/{layer}"] = torch.zeros(k, hd, hd, dtype=dtype, device=device)
                t[f"S_o/{layer}"] = torch.zeros(d, d, dtype=dtype, device=device)
        return cls(targets, t, {"tokens": 0, "rows": 0})

    @classmethod
    def from_state(cls, state: dict) -> "CovarianceAccumulator":
        if state.get("kind") != cls.kind:
            raise CurateError(f"not a {cls.kind} state (kind {state.get('kind')!r})")
        return cls(TargetHeads.from_meta(state["meta"]), {k: v.clone() for k, v in state["tensors"].items()}, dict(state["counts"]))

    def on_qkv(self, layer: int, x: torch.Tensor, g: torch.Tensor) -> None:
        dt = self.tensors[f"A/{layer}"].dtype
        xf = x.reshape(-1, x.shape[-1]).to(dt)
        self.tensors[f"A/{layer}"].addmm_(xf.T, xf)
        qk = self.targets.qkv_heads(layer, g, "qk").to(dt).flatten(0, 1)  # (N, k, 2hd)
        self.tensors[f"S_qk/{layer}"] += torch.einsum("nki,nkj->kij", qk, qk)
        if self.targets.need_dense:
            v = self.targets.qkv_heads(layer, g, "v").to(dt).flatten(0, 1)
            self.tensors[f"S_v/{layer}"] += torch.einsum("nki,nkj->kij", v, v)
        if layer == self.targets.layers[0]:
            self.counts["tokens"] += int(x.shape[0] * x.shape[1])
            self.counts["rows"] += int(x.shape[0])

    def on_dense(self, layer: int, a: torch.Tensor, g: torch.Tensor) -> None:
        dt = self.tensors[f"S_o/{layer}"].dtype
        ah = self.targets.dense_heads(layer, a).to(dt).flatten(0, 1)  # (N, k, hd)
        self.tensors[f"A_o/{layer}"] += torch.einsum("nki,nkj->kij", ah, ah)
        gf = g.reshape(-1, g.shape[-1]).to(dt)
        self.tensors[f"S_o/{layer}"].addmm_(gf.T, gf)

    def finalize(self) -> "EigenBases":
        """Eigenvectors of every covariance (scale does not matter: the eigenvalues are refit)."""
        self._check_counts("tokens")
        return EigenBases(self.targets, {"Q" + k: _sym_eigvecs(v) for k, v in self.tensors.items()}, {})


class EigenBases(_Partial):
    """Q_A / Q_S of every block (what the driver sends back to the workers for pass 2)."""

    kind = "eigenbases"

    @classmethod
    def from_state(cls, state: dict) -> "EigenBases":
        if state.get("kind") != cls.kind:
            raise CurateError(f"not a {cls.kind} state (kind {state.get('kind')!r})")
        return cls(TargetHeads.from_meta(state["meta"]), dict(state["tensors"]), dict(state["counts"]))

    def merge(self, other: "_Partial") -> "_Partial":  # pragma: no cover - bases are not partial sums
        raise CurateError("eigenbases are not partial sums; merge the covariance accumulators instead")


# --------------------------------------------------------------------------- pass 2: eigenvalue refit


class LambdaAccumulator(_Partial):
    """Pass 2: row sums of the squared per-row gradient expressed in the Kronecker eigenbasis."""

    kind = "lambda"

    def __init__(self, targets: TargetHeads, tensors: dict[str, torch.Tensor], counts: dict[str, int], bases: EigenBases) -> None:
        super().__init__(targets, tensors, counts)
        self.bases = bases

    @classmethod
    def empty(cls, bases: EigenBases, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> "LambdaAccumulator":
        targets = bases.targets
        g = targets.geo
        d, hd = g.hidden, g.head_dim
        t: dict[str, torch.Tensor] = {}
        for layer in targets.layers:
            k = len(targets.by_layer[layer])
            t[f"L_qk/{layer}"] = torch.zeros(k, 2 * hd, d, dtype=dtype, device=device)
            if targets.need_dense:
                t[f"L_v/{layer}"] = torch.zeros(k, hd, d, dtype=dtype, device=device)
                t[f"L_o/{layer}"] = torch.zeros(k, d, hd, dtype=dtype, device=device)
        bases_here = EigenBases(targets, {k: v.to(device=device, dtype=dtype) for k, v in bases.tensors.items()}, {})
        return cls(targets, t, {"rows": 0}, bases_here)

    def state_dict(self) -> dict:
        out = super().state_dict()
        out["bases"] = self.bases.state_dict()
        return out

    @classmethod
    def from_state(cls, state: dict) -> "LambdaAccumulator":
        if state.get("kind") != cls.kind:
            raise CurateError(f"not a {cls.kind} state (kind {state.get('kind')!r})")
        bases = EigenBases.from_state(state["bases"])
        return cls(bases.targets, {k: v.clone() for k, v in state["tensors"].items()}, dict(state["counts"]), bases)

    def attach(self, fitter: "EKFACFitter") -> "LambdaAccumulator":
        super().attach(fitter)
        self.bases = EigenBases(self.targets, {k: v.to(device=fitter.device, dtype=fitter.dtype) for k, v in self.bases.tensors.items()}, {})
        return self

    def _add_rows(self, key: str, proj: torch.Tensor) -> None:
        self.tensors[key] += proj.square().sum(dim=0)

    def on_qkv(self, layer: int, x: torch.Tensor, g: torch.Tensor) -> None:
        b = self.bases.tensors
        dt = self.tensors[f"L_qk/{layer}"].dtype
        xr = x.to(dt) @ b[f"QA/{layer}"]  # (n, T, d) in A's eigenbasis
        qk = self.targets.qkv_heads(layer, g, "qk").to(dt)  # (n, T, k, 2hd)
        gr = torch.einsum("ntko,kop->ntkp", qk, b[f"QS_qk/{layer}"])
        self._add_rows(f"L_qk/{layer}", torch.einsum("ntkp,nti->nkpi", gr, xr))
        if self.targets.need_dense:
            v = self.targets.qkv_heads(layer, g, "v").to(dt)
            gr = torch.einsum("ntko,kop->ntkp", v, b[f"QS_v/{layer}"])
            self._add_rows(f"L_v/{layer}", torch.einsum("ntkp,nti->nkpi", gr, xr))
        if layer == self.targets.layers[0]:
            self.counts["rows"] += int(x.shape[0])

    def on_dense(self, layer: int, a: torch.Tensor, g: torch.Tensor) -> None:
        b = self.bases.tensors
        dt = self.tensors[f"L_o/{layer}"].dtype
        ar = torch.einsum("ntki,kij->ntkj", self.targets.dense_heads(layer, a).to(dt), b[f"QA_o/{layer}"])
        gr = g.to(dt) @ b[f"QS_o/{layer}"]  # (n, T, d)
        self._add_rows(f"L_o/{layer}", torch.einsum("nto,ntkj->nkoj", gr, ar))

    def finalize(self, damping: float = DEFAULT_DAMPING, floor: float = DEFAULT_DAMPING_FLOOR) -> "EKFACFactors":
        """Per-head block factors: Q_A, Q_S and the refit eigenvalues (mean over rows)."""
        rows = self._check_counts("rows")
        b = {k: v.cpu() for k, v in self.bases.tensors.items()}
        lam = {k: v.cpu() / rows for k, v in self.tensors.items()}
        heads: dict[HeadRef, dict[str, BlockFactors]] = {}
        for layer in self.targets.layers:
            for i, h in enumerate(self.targets.by_layer[layer]):
                blocks = {"qk": BlockFactors(b[f"QA/{layer}"], b[f"QS_qk/{layer}"][i], lam[f"L_qk/{layer}"][i])}
                if self.targets.need_dense:
                    blocks["v"] = BlockFactors(b[f"QA/{layer}"], b[f"QS_v/{layer}"][i], lam[f"L_v/{layer}"][i])
                    blocks["o"] = BlockFactors(b[f"QA_o/{layer}"][i], b[f"QS_o/{layer}"], lam[f"L_o/{layer}"][i])
                heads[HeadRef(layer, h)] = blocks
        return EKFACFactors(self.targets.mode, heads, damping, floor)


# --------------------------------------------------------------------------- fitted factors


@dataclass
class BlockFactors:
    """EK-FAC of one block: eigenvectors of A (in x in) and S (out x out), refit eigenvalues (out x in)."""

    q_a: torch.Tensor
    q_s: torch.Tensor
    lam: torch.Tensor

    def __post_init__(self) -> None:
        # Row-major, as a factor file stores them: LAPACK returns eigenvectors column-major, and the products
        # below round differently by memory layout, so fresh and cached factors would precondition differently.
        self.q_a, self.q_s, self.lam = self.q_a.contiguous(), self.q_s.contiguous(), self.lam.contiguous()

    def denominator(self, factor: float, floor: float) -> torch.Tensor:
        """The damped eigenvalues: max(Lambda + factor * mean(Lambda), floor), per eigenvalue."""
        return torch.clamp(self.lam + float(factor) * float(self.lam.mean()), min=float(floor))

    def precondition(self, grad: torch.Tensor, factor: float, floor: float) -> torch.Tensor:
        """H^-1 grad for a (out, in) matrix: Q_S [(Q_S^T grad Q_A) / D] Q_A^T, D = `denominator`."""
        dt = self.lam.dtype
        q_a, q_s = self.q_a.to(grad.device, dt), self.q_s.to(grad.device, dt)
        rot = q_s.T @ grad.to(dt) @ q_a
        rot = rot / self.denominator(factor, floor).to(grad.device)
        return q_s @ rot @ q_a.T


@dataclass
class EKFACFactors:
    """Fitted EK-FAC of every target head's blocks, with the damping they are used with."""

    mode: str
    heads: dict[HeadRef, dict[str, BlockFactors]]
    damping: float = DEFAULT_DAMPING
    damping_floor: float = DEFAULT_DAMPING_FLOOR

    def precondition(self, grads: dict[HeadRef, HeadBlocks]) -> dict[HeadRef, HeadBlocks]:
        """H_sub^-1 grad for each head's blocks (block-diagonal across blocks)."""
        out: dict[HeadRef, HeadBlocks] = {}
        for head, blocks in grads.items():
            if head not in self.heads:
                raise CurateError(f"head {head}: no EK-FAC factors fitted for it")
            f = self.heads[head]
            out[head] = {b: f[b].precondition(blocks[b], self.damping, self.damping_floor) for b in MODES[self.mode]}
        return out

    def subset(self, heads: Sequence[HeadRef]) -> "EKFACFactors":
        missing = [str(h) for h in heads if h not in self.heads]
        if missing:
            raise CurateError(f"no EK-FAC factors for head(s) {', '.join(missing)}")
        return EKFACFactors(self.mode, {h: self.heads[h] for h in heads}, self.damping, self.damping_floor)

    def merged_with(self, other: "EKFACFactors") -> "EKFACFactors":
        if other.mode != self.mode:
            raise CurateError(f"cannot combine EK-FAC factors of modes {self.mode} and {other.mode}")
        return EKFACFactors(self.mode, {**self.heads, **other.heads}, self.damping, self.damping_floor)


@dataclass(frozen=True)
class IdentityCurvature:
    """The identity in place of H_sub: `precondition` returns the probe gradients unchanged (the gradient-dot
    baseline, score = - grad_sub L(z)^T grad_sub f_probe); `EKFACFactors`' interface, nothing to fit."""

    mode: str

    def precondition(self, grads: dict[HeadRef, HeadBlocks]) -> dict[HeadRef, HeadBlocks]:
        """Each head's blocks, as given (the mode's blocks only)."""
        check_mode(self.mode)
        return {head: {b: blocks[b] for b in MODES[self.mode]} for head, blocks in grads.items()}


# --------------------------------------------------------------------------- driving the two passes


class EKFACFitter:
    """Runs batches of a model through the tracer for the accumulators (one per worker)."""

    def __init__(
        self,
        model: nn.Module,
        heads: Sequence[HeadRef],
        mode: str,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        autocast: bool | None = None,
    ) -> None:
        self.model = model
        self.targets = TargetHeads(HeadGeometry.of(model), heads, mode)
        self.seed = int(seed)
        self.dtype = dtype
        self.tracer = HeadTracer(model, self.targets.layers, self.targets.need_dense, autocast=autocast)
        self._auto_row = 0

    @property
    def device(self) -> torch.device:
        return self.tracer.device

    def covariance_accumulator(self) -> CovarianceAccumulator:
        return CovarianceAccumulator.empty(self.targets, self.dtype, self.device).attach(self)  # type: ignore[return-value]

    def lambda_accumulator(self, bases: EigenBases) -> LambdaAccumulator:
        if not bases.targets.same_as(self.targets):
            raise CurateError("eigenbases were fitted for other heads/mode")
        return LambdaAccumulator.empty(bases, self.dtype, self.device).attach(self)

    def run_batch(self, acc: _Partial, rows: "np.ndarray | torch.Tensor", row_ids: Sequence[int] | None) -> None:
        n = len(rows)
        if row_ids is None:
            row_ids = range(self._auto_row, self._auto_row + n)
            self._auto_row += n
        if len(row_ids) != n:
            raise ValueError("one row id per row")
        self.tracer.run(rows, acc, labels="sampled", seeds=row_seeds(self.seed, row_ids))  # type: ignore[arg-type]

    def fit(
        self,
        batches: "Sequence[tuple[Sequence[int], np.ndarray]]",
        damping: float = DEFAULT_DAMPING,
        floor: float = DEFAULT_DAMPING_FLOOR,
        progress=None,
    ) -> EKFACFactors:
        """Both passes in this process over (row_ids, rows) batches (a list: it is read twice)."""
        total = sum(len(ids) for ids, _ in batches)
        cov = self.covariance_accumulator()
        done = 0
        for ids, rows in batches:
            cov.update(rows, ids)
            done += len(ids)
            if progress:
                progress("fit covariances", done, total)
        lam = self.lambda_accumulator(cov.finalize())
        done = 0
        for ids, rows in batches:
            lam.update(rows, ids)
            done += len(ids)
            if progress:
                progress("fit eigenvalues", done, total)
        return lam.finalize(damping, floor)
