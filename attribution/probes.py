"""Differentiable probe functions f_probe whose gradient the attribution code takes w.r.t. a head's weights.

Both keep the model's train/eval mode as the caller set it and build an autograd graph whenever
grad mode is on. Reduction `sum` (the spec's definition) or `mean` (the same sum divided by the
number of terms).
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from curate.attribution.metrics import (
    Head,
    attention_weights_hooks,
    check_tokens,
    model_shape,
    previous_token_diagonal,
    repeat_half_len,
    run_base,
)
from curate.errors import CurateError

Reduction = Literal["sum", "mean"]


def _reduce(values: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    if reduction == "sum":
        return values.sum()
    if reduction == "mean":
        return values.mean()
    raise CurateError(f"probe reduction must be 'sum' or 'mean' (got {reduction!r})")


def check_head(model: nn.Module, head: Head) -> Head:
    """Validate a (layer, head) pair against the model's shape."""
    num_layers, num_heads = model_shape(model)
    try:
        layer, h = int(head[0]), int(head[1])
    except (TypeError, ValueError, IndexError):
        raise CurateError(f"head must be a (layer, head) pair (got {head!r})") from None
    if not (0 <= layer < num_layers and 0 <= h < num_heads):
        raise CurateError(f"head {layer}.{h} is out of range: the model has {num_layers} layers x {num_heads} heads")
    return layer, h


def induction_probe(model: nn.Module, probes: torch.Tensor, reduction: Reduction = "sum") -> torch.Tensor:
    """Sum over probes and second-copy positions of log p(token after the earlier occurrence).

    For `[r, r]` of length 2L: at position i in [L, 2L-1) the model predicts token i+1, which equals
    token i-L+1 (the token that followed the earlier occurrence of token i). The last position
    (target out of range) is excluded: L-1 terms per probe.
    """
    half = repeat_half_len(probes)
    check_tokens(model, probes)
    length = probes.shape[1]
    hidden = run_base(model, probes)
    logits = model.get_output_embeddings()(hidden[:, half : length - 1]).float()
    targets = probes[:, half + 1 : length].to(logits.device)
    log_probs = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return _reduce(log_probs, reduction)


def previous_token_probe(model: nn.Module, probes: torch.Tensor, head: Head, reduction: Reduction = "sum") -> torch.Tensor:
    """Sum over probes and positions i in [1, T) of head `(layer, h)`'s attention weight A[i, i-1].

    Runs eager attention and stops the forward after `layer`, so later layers cost nothing.
    """
    if probes.dim() != 2 or probes.dtype != torch.long or probes.shape[1] < 2:
        raise CurateError(f"probes must be a 2-D LongTensor with at least 2 positions (got shape {tuple(probes.shape)})")
    check_tokens(model, probes)
    layer, h = check_head(model, head)
    captured: list[torch.Tensor] = []

    def keep(_layer: int, weights: torch.Tensor) -> None:
        captured.append(previous_token_diagonal(weights[:, h]).float())

    with attention_weights_hooks(model, keep, layers=[layer], stop_after=layer):
        run_base(model, probes)
    return _reduce(captured[0], reduction)


__all__ = ["Reduction", "check_head", "induction_probe", "previous_token_probe"]
