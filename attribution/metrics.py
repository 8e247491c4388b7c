"""Per-head circuit metrics on repeated random tokens (induction, previous-token) and the ICL score.

All heads of a GPT-NeoX model (HF `GPTNeoXForCausalLM`, Pythia architecture) are scored in one
forward pass: a forward hook on every `layer.attention` reads the attention weights the module
returns and reduces them to per-head means on the spot, so no (B, H, T, T) tensor outlives its layer.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from curate.attribution.heads import HeadRef
from curate.errors import CurateError


# --------------------------------------------------------------------------- model access


def base_model(model: nn.Module) -> nn.Module:
    """The GPTNeoXModel inside a GPTNeoXForCausalLM (or the model itself when it already is one)."""
    inner = getattr(model, "gpt_neox", model)
    if not isinstance(getattr(inner, "layers", None), nn.ModuleList):
        raise CurateError(f"{type(model).__name__}: not a GPT-NeoX model (no gpt_neox.layers)")
    return inner


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """Each layer's attention module, in layer order."""
    return [layer.attention for layer in base_model(model).layers]


def model_shape(model: nn.Module) -> tuple[int, int]:
    """(num_layers, num_heads) from the model's config."""
    cfg = model.config
    return int(cfg.num_hidden_layers), int(cfg.num_attention_heads)


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Run the block with eager attention (the only kind that returns real weights), then restore."""
    cfg = model.config
    old = cfg._attn_implementation
    if old != "eager":
        cfg._attn_implementation = "eager"
    try:
        yield
    finally:
        if old != "eager":
            cfg._attn_implementation = old


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put the model in eval mode for the block and restore its train/eval flag after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


class StopForward(Exception):
    """Raised from a hook to end a forward pass once the layers that matter have run."""


WeightsHandler = Callable[[int, torch.Tensor], None]


@contextmanager
def attention_weights_hooks(model: nn.Module, on_weights: WeightsHandler, layers: Sequence[int] | None = None,
                            stop_after: int | None = None) -> Iterator[None]:
    """Call `on_weights(layer, weights (B, H, T, T))` after each hooked attention module runs.

    With `stop_after=l`, the hook on layer l raises StopForward after its handler, so the forward
    skips the later layers; the caller catches it. Hooks are removed on exit. Forces eager attention.
    """
    modules = attention_modules(model)
    chosen = range(len(modules)) if layers is None else layers

    def make_hook(layer: int) -> Callable:
        def hook(_module: nn.Module, _inputs: tuple, output: tuple) -> None:
            weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if weights is None:
                raise CurateError(f"layer {layer} attention returned no weights: the model must run eager attention")
            on_weights(layer, weights)
            if stop_after is not None and layer == stop_after:
                raise StopForward

        return hook

    handles = [modules[i].register_forward_hook(make_hook(i)) for i in chosen]
    try:
        with eager_attention(model):
            yield
    finally:
        for h in handles:
            h.remove()


def run_base(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor | None:
    """Forward the base transformer (no LM head); returns the last hidden state, or None if a hook stopped it."""
    try:
        out = base_model(model)(input_ids=tokens.to(model_device(model)), use_cache=False)
    except StopForward:
        return None
    return out.last_hidden_state


# --------------------------------------------------------------------------- probe inputs


def repeat_half_len(probes: torch.Tensor) -> int:
    """L for probes `[r, r]` of length 2L; raises CurateError on anything else."""
    if probes.dim() != 2 or probes.dtype != torch.long:
        raise CurateError(f"probes must be a 2-D LongTensor (got {probes.dim()}-D {probes.dtype})")
    n, t = probes.shape
    if n < 1 or t < 4 or t % 2:
        raise CurateError(f"probes must be [r, r] with an even length >= 4 (got shape {tuple(probes.shape)})")
    half = t // 2
    if not torch.equal(probes[:, :half], probes[:, half:]):
        raise CurateError("probes are not repeated sequences [r, r]: the two halves differ")
    return half


def check_tokens(model: nn.Module, tokens: torch.Tensor) -> None:
    """Token ids must fit the model's embedding table."""
    vocab = int(model.config.vocab_size)
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab):
        raise CurateError(f"token ids span [{int(tokens.min())}, {int(tokens.max())}], outside the model's vocabulary of {vocab}")


# --------------------------------------------------------------------------- head scores


def induction_diagonal(weights: torch.Tensor, half_len: int) -> torch.Tensor:
    """Attention from each second-copy position i (L..2L-1) to i-L+1: shape (..., L)."""
    return torch.diagonal(weights, offset=-(half_len - 1), dim1=-2, dim2=-1)[..., 1:]


def previous_token_diagonal(weights: torch.Tensor) -> torch.Tensor:
    """Attention from each position i (1..T-1) to i-1: shape (..., T-1)."""
    return torch.diagonal(weights, offset=-1, dim1=-2, dim2=-1)


def first_candidate_layer(metric: str, num_layers: int) -> int:
    """The lowest layer whose heads count for `metric`: an induction head needs a previous-token head below it, so a
    layer-0 head cannot do induction (its prefix-matching score would be positional) and is left out when the
    model has more layers; previous-token heads count in every layer."""
    return 1 if metric == "induction" and num_layers > 1 else 0


def best_of(values, metric: str) -> tuple[HeadRef, float]:
    """The best head for `metric` among those that count for it (`first_candidate_layer`) in a
    (layers x heads) array or nested list of its values, and the value."""
    arr = np.asarray(values, dtype=np.float64)
    first = first_candidate_layer(metric, arr.shape[0])
    sub = arr[first:]
    layer, head = divmod(int(np.argmax(sub)), sub.shape[1])
    return HeadRef(layer + first, head), float(sub[layer, head])


@dataclass(frozen=True)
class HeadScores:
    """Per-head metric values, each (num_layers, num_heads) float32 on the CPU."""

    induction: torch.Tensor
    previous_token: torch.Tensor

    METRICS = ("induction", "previous_token")

    @property
    def num_layers(self) -> int:
        return int(self.induction.shape[0])

    @property
    def num_heads(self) -> int:
        return int(self.induction.shape[1])

    def metric(self, name: str) -> torch.Tensor:
        if name not in self.METRICS:
            raise CurateError(f"unknown head metric {name!r} (known: {', '.join(self.METRICS)})")
        return getattr(self, name)

    def best(self, name: str) -> tuple[HeadRef, float]:
        """The best head for metric `name` among those that count for it (`best_of`), and its value."""
        return best_of(self.metric(name).numpy(), name)

    def to_json(self) -> dict:
        return {"induction": self.induction.tolist(), "previous_token": self.previous_token.tolist()}


@torch.no_grad()
def head_scores(model: nn.Module, probes: torch.Tensor) -> HeadScores:
    """Induction and previous-token scores of every head, from one no-grad eval-mode pass over `probes`.

    induction[l, h] = mean over probes and second-copy positions i in [L, 2L) of A[i, i-L+1];
    previous_token[l, h] = mean over probes and all positions i in [1, 2L) of A[i, i-1] (both copies,
    as in the calibration runs; the positions are random tokens apart from the exact repeat).
    """
    half = repeat_half_len(probes)
    check_tokens(model, probes)
    num_layers, num_heads = model_shape(model)
    induction = torch.zeros(num_layers, num_heads, dtype=torch.float32)
    previous = torch.zeros(num_layers, num_heads, dtype=torch.float32)

    def reduce(layer: int, weights: torch.Tensor) -> None:
        w = weights.float()
        induction[layer] = induction_diagonal(w, half).mean(dim=(0, 2)).cpu()
        previous[layer] = previous_token_diagonal(w).mean(dim=(0, 2)).cpu()

    with eval_mode(model), attention_weights_hooks(model, reduce, stop_after=num_layers - 1):
        run_base(model, probes)
    return HeadScores(induction=induction, previous_token=previous)


# --------------------------------------------------------------------------- ICL score


def icl_positions(context_len: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Early and late loss windows (half-open position ranges) for a context of `context_len` tokens.

    The paper (Olsson et al.'s ICL score) takes the loss at token 500 minus the mean loss over
    tokens 0-50 at a 2048 context. Scaled: early = [0, ceil(0.025*T)) (tokens 0-51 at 2048) and
    late = [floor(0.2*T), ceil(0.3*T)), a window centred near 0.25*T (500/2048 = 0.244) so that one
    position's noise does not dominate at small T. Position t is the loss of predicting token t+1.
    """
    t = int(context_len)
    if t < 8:
        raise CurateError(f"context length {t} is too short for an ICL score (need at least 8 tokens)")
    early = (0, math.ceil(0.025 * t))
    late = (max(math.floor(0.2 * t), early[1]), math.ceil(0.3 * t))
    return early, late


def _check_window(name: str, window: tuple[int, int], context_len: int) -> None:
    a, b = int(window[0]), int(window[1])
    if not 0 <= a < b <= context_len:
        raise CurateError(f"ICL {name} window [{a}, {b}) must satisfy 0 <= start < end <= context length {context_len}")


@torch.no_grad()
def icl_score(model: nn.Module, rows: torch.Tensor, early: tuple[int, int] | None = None,
              late: tuple[int, int] | None = None, batch_size: int = 8) -> float:
    """Mean per-token loss in the late window minus the mean in the early window (more negative = more ICL).

    `rows` (n, R) are held-out token rows including the +1 label shift (corpus rows), so the
    context is T = R - 1 and position t's loss is -log p(rows[:, t+1] | rows[:, :t+1]). Windows
    default to `icl_positions(T)`. Only the logits of window positions are computed.
    """
    if rows.dim() != 2 or rows.shape[0] < 1:
        raise CurateError(f"ICL rows must be a non-empty 2-D token tensor (got shape {tuple(rows.shape)})")
    rows = rows.long()
    check_tokens(model, rows)
    context = int(rows.shape[1]) - 1
    default_early, default_late = icl_positions(context)
    early = default_early if early is None else early
    late = default_late if late is None else late
    _check_window("early", early, context)
    _check_window("late", late, context)
    positions = {"early": torch.arange(early[0], early[1]), "late": torch.arange(late[0], late[1])}
    totals = {"early": 0.0, "late": 0.0}
    head = model.get_output_embeddings()
    device = model_device(model)
    with eval_mode(model):
        for start in range(0, rows.shape[0], batch_size):
            chunk = rows[start : start + batch_size].to(device)
            hidden = run_base(model, chunk[:, :-1])
            for name, pos in positions.items():
                logits = head(hidden[:, pos.to(device)]).float()
                targets = chunk[:, pos.to(device) + 1]
                nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum")
                totals[name] += float(nll)
    n = rows.shape[0]
    mean_early = totals["early"] / (n * positions["early"].numel())
    mean_late = totals["late"] / (n * positions["late"].numel())
    return mean_late - mean_early

