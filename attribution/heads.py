"""One attention head's own parameters in a GPT-NeoX model: the ONE head-slicing implementation.

Layout (HF `GPTNeoXAttention`): `query_key_value.weight` is (3 * hidden, hidden) with its output
rows laid out head by head, `[heads, 3 * head_dim]`; inside head h's `3 * head_dim` rows the
first `head_dim` are Q, the next K, the last V. The output projection `dense.weight` is
(hidden, hidden) and head h owns its `head_dim` input columns `[h * head_dim, (h + 1) * head_dim)`.
Biases are never part of a head's subspace.

Blocks (each a matrix in (out, in) orientation, as the weight itself):
- `qk`: Q and K rows together, (2 * head_dim, hidden) — one block, because Q and K interact;
- `v`: V rows, (head_dim, hidden);
- `o`: the dense columns, (hidden, head_dim).
Modes: `qk` = the `qk` block only; `qkvo` = `qk`, `v` and `o`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from curate.errors import CurateError

MODES: dict[str, tuple[str, ...]] = {"qk": ("qk",), "qkvo": ("qk", "v", "o")}
"""Blocks of each subspace mode, in a fixed order."""

HeadBlocks = dict[str, torch.Tensor]
"""Block name -> matrix in (out, in) orientation."""

_HEAD_RE = re.compile(r"^\s*(\d+)\s*[.:,_]\s*(\d+)\s*$")
_LIST_SEP = re.compile(r"\s*[,;]\s*|\s+")
_COLUMN_RE = re.compile(r"^head_(\d+)_(\d+)$")
_QKV_PARTS = {"qk": (0, 2), "v": (2, 3), "qkv": (0, 3)}
"""Where each part sits inside one head's 3 * head_dim rows of query_key_value, in units of head_dim."""


def check_mode(mode: str) -> tuple[str, ...]:
    """The blocks of `mode`, or a CurateError naming the valid modes."""
    if mode not in MODES:
        raise CurateError(f"unknown head subspace mode {mode!r} (expected one of: {', '.join(MODES)})")
    return MODES[mode]


@dataclass(frozen=True, order=True)
class HeadRef:
    """An attention head: 0-based layer and head index; written "L.H"."""

    layer: int
    head: int

    @classmethod
    def parse(cls, text: str) -> "HeadRef":
        """Parse one head "L.H" (also "L:H", "L,H", "L_H"; spaces around the parts are ignored)."""
        m = _HEAD_RE.match(str(text))
        if not m:
            raise CurateError(f"{str(text).strip()!r} is not LAYER.HEAD (e.g. 1.3)")
        return cls(int(m.group(1)), int(m.group(2)))

    @classmethod
    def parse_list(cls, text: str) -> list["HeadRef"]:
        """Parse heads "L.H" separated by commas, semicolons or spaces ("1.0,1.3", "1.0 1.3"); duplicates are
        dropped, the order kept. An empty item (e.g. a trailing comma) is an error."""
        stripped = str(text).strip()
        if not stripped:
            raise CurateError("no head given (expected LAYER.HEAD, e.g. 1.3)")
        parts = _LIST_SEP.split(stripped)
        if "" in parts:
            raise CurateError(f"{stripped!r}: an empty item in the list of heads (expected LAYER.HEAD,LAYER.HEAD, e.g. 1.0,1.3)")
        return list(dict.fromkeys(cls.parse(p) for p in parts))

    @classmethod
    def from_column(cls, name: str) -> "HeadRef | None":
        """The head of a score-table column "head_L_H" (see `column`), or None for any other column."""
        m = _COLUMN_RE.match(name)
        return cls(int(m.group(1)), int(m.group(2))) if m else None

    def __str__(self) -> str:
        return f"{self.layer}.{self.head}"

    @property
    def column(self) -> str:
        """The score-table column for this head."""
        return f"head_{self.layer}_{self.head}"

    @property
    def key(self) -> str:
        """A file-name-safe key, e.g. "L1_H3"."""
        return f"L{self.layer}_H{self.head}"


@dataclass(frozen=True)
class HeadGeometry:
    """The attention shape of a GPT-NeoX model."""

    num_layers: int
    num_heads: int
    hidden: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.num_heads

    @classmethod
    def of(cls, model: nn.Module) -> "HeadGeometry":
        cfg = model.config
        geo = cls(int(cfg.num_hidden_layers), int(cfg.num_attention_heads), int(cfg.hidden_size))
        if geo.hidden % geo.num_heads:
            raise CurateError(f"model: hidden size {geo.hidden} is not a multiple of {geo.num_heads} heads")
        return geo

    def check_head(self, head: HeadRef) -> HeadRef:
        """`head` itself, or a CurateError when the model has no such head."""
        if not (0 <= head.layer < self.num_layers and 0 <= head.head < self.num_heads):
            raise CurateError(
                f"head {head} is out of range: the model has {self.num_layers} layers x {self.num_heads} heads (0-based)"
            )
        return head

    def check(self, heads: Iterable[HeadRef]) -> list[HeadRef]:
        """Sorted, de-duplicated heads, each checked against the model's shape."""
        out = sorted(set(heads))
        if not out:
            raise CurateError("no target head")
        return [self.check_head(h) for h in out]

    def all_heads(self, min_layer: int = 0) -> list[HeadRef]:
        return [HeadRef(l, h) for l in range(min_layer, self.num_layers) for h in range(self.num_heads)]

    # -- where each block lives --------------------------------------------------------------
    def rows_in_head(self, part: str) -> slice:
        """Rows of `part` ("qk", "v", or "qkv" for both) inside one head's 3 * head_dim rows of `query_key_value`."""
        if part not in _QKV_PARTS:
            raise ValueError(f"block {part!r} is not a query_key_value block")
        a, b = _QKV_PARTS[part]
        return slice(a * self.head_dim, b * self.head_dim)

    def qkv_rows(self, head: int, block: str) -> slice:
        """Rows of `query_key_value` (its weight, or the last dim of its output) for a Q/K/V block."""
        inner = self.rows_in_head(block)
        base = head * 3 * self.head_dim
        return slice(base + inner.start, base + inner.stop)

    def dense_cols(self, head: int) -> slice:
        """Input columns of `dense` (or the last dim of its input) owned by `head`."""
        d = self.head_dim
        return slice(head * d, (head + 1) * d)

    def qkv_by_head(self, t: torch.Tensor) -> torch.Tensor:
        """A `query_key_value` output (..., 3 * hidden) viewed per head: (..., heads, 3 * head_dim)."""
        return t.view(*t.shape[:-1], self.num_heads, 3 * self.head_dim)

    def dense_by_head(self, a: torch.Tensor) -> torch.Tensor:
        """A `dense` input (..., hidden) viewed per head: (..., heads, head_dim)."""
        return a.view(*a.shape[:-1], self.num_heads, self.head_dim)

    def block_shape(self, block: str) -> tuple[int, int]:
        """(out, in) of a block."""
        d = self.head_dim
        return {"qk": (2 * d, self.hidden), "v": (d, self.hidden), "o": (self.hidden, d)}[block]

    def slice_block(self, qkv_weight: torch.Tensor, dense_weight: torch.Tensor | None, head: int, block: str) -> torch.Tensor:
        """A view of one block of a head in (out, in) orientation (weights or same-shaped gradients)."""
        if block == "o":
            if dense_weight is None:
                raise ValueError("block 'o' needs the dense weight")
            return dense_weight[:, self.dense_cols(head)]
        return qkv_weight[self.qkv_rows(head, block)]


def attention_of(model: nn.Module, layer: int) -> nn.Module:
    """`layer`'s GPTNeoXAttention module."""
    inner = getattr(model, "gpt_neox", model)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise CurateError(f"{type(model).__name__}: not a GPT-NeoX model (no gpt_neox.layers)")
    return layers[layer].attention


def head_views(model: nn.Module, head: HeadRef, mode: str) -> HeadBlocks:
    """Live views of a head's weight blocks (writing to them changes the model)."""
    geo = HeadGeometry.of(model)
    attn = attention_of(model, head.layer)
    return {b: geo.slice_block(attn.query_key_value.weight, attn.dense.weight, head.head, b) for b in check_mode(mode)}


def read_head(model: nn.Module, head: HeadRef, mode: str) -> HeadBlocks:
    """A copy of a head's weight blocks."""
    return {b: v.detach().clone() for b, v in head_views(model, head, mode).items()}


@torch.no_grad()
def write_head(model: nn.Module, head: HeadRef, blocks: HeadBlocks) -> None:
    """Overwrite a head's blocks (any subset of qk / v / o) in place."""
    views = head_views(model, head, "qkvo")
    for name, value in blocks.items():
        if name not in views:
            raise ValueError(f"unknown block {name!r}")
        if tuple(value.shape) != tuple(views[name].shape):
            raise ValueError(f"block {name}: shape {tuple(value.shape)}, expected {tuple(views[name].shape)}")
        views[name].copy_(value.to(views[name]))


@torch.no_grad()
def add_to_head(model: nn.Module, head: HeadRef, delta: HeadBlocks, scale: float = 1.0) -> None:
    """Add `scale * delta` to a head's blocks in place (e.g. one SGD step on the subspace)."""
    views = head_views(model, head, "qkvo")
    for name, value in delta.items():
        views[name].add_(value.to(views[name]), alpha=scale)


@torch.no_grad()
def zero_head(model: nn.Module, head: HeadRef, mode: str) -> None:
    """Zero a head's subspace (the blocks of `mode`)."""
    for view in head_views(model, head, mode).values():
        view.zero_()


def slice_head_grads(
    geo: HeadGeometry, qkv_grad: torch.Tensor | None, dense_grad: torch.Tensor | None, head: int, mode: str
) -> HeadBlocks:
    """A head's blocks out of full `query_key_value` / `dense` weight gradients; a missing gradient is zeros."""
    out: HeadBlocks = {}
    for b in check_mode(mode):
        src = dense_grad if b == "o" else qkv_grad
        if src is None:
            ref = qkv_grad if qkv_grad is not None else dense_grad
            out[b] = torch.zeros(geo.block_shape(b), dtype=ref.dtype if ref is not None else torch.float32)
        else:
            out[b] = geo.slice_block(src, src, head, b).detach().clone()
    return out
