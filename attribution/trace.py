"""One forward/backward of a GPT-NeoX model that exposes, at every target layer, what head-restricted
curvature and influence need — and nothing else:

- `on_qkv(layer, x, g)`: x = the input of `attention.query_key_value` (LayerNorm output), (n, T, hidden);
  g = the gradient of the summed row losses w.r.t. its output (pre-rotary Q/K/V), (n, T, 3 * hidden);
- `on_dense(layer, a, g)`: a = the input of `attention.dense` (heads' attention outputs side by side),
  (n, T, hidden); g = the gradient w.r.t. the dense output, (n, T, hidden).

No parameter requires grad (so no weight gradient is ever formed); the graph starts at the lowest target
layer's query_key_value input (a detached leaf), so the layers below build no graph, and the backward pass
runs only the paths from the loss to the hooked outputs (`torch.autograd.grad` on them). Each row's loss is the sum over its tokens, so everything stays separable per row.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from curate.attribution.heads import attention_of
from curate.attribution.metrics import model_device
from curate.errors import CurateError


class TraceConsumer(Protocol):
    """Receives per-layer activations and output gradients during the backward pass."""

    def on_qkv(self, layer: int, x: torch.Tensor, g: torch.Tensor) -> None: ...

    def on_dense(self, layer: int, a: torch.Tensor, g: torch.Tensor) -> None: ...


def as_rows(rows: "np.ndarray | torch.Tensor") -> torch.Tensor:
    """Token rows as a 2-D int64 tensor (uint16 corpora included)."""
    if isinstance(rows, torch.Tensor):
        t = rows.to(torch.int64)
    else:
        t = torch.from_numpy(np.asarray(rows, dtype=np.int64))
    if t.ndim != 2 or t.shape[1] < 2:
        raise CurateError(f"rows: expected a 2-D (rows, tokens) batch with at least 2 tokens per row, got shape {tuple(t.shape)}")
    return t


def row_seeds(seed: int, row_ids: Sequence[int]) -> list[int]:
    """One sampling seed per row, a function of (seed, row id) only: sharding does not change the draw."""
    return [int(np.random.SeedSequence([int(seed), int(r)]).generate_state(1, dtype=np.uint64)[0] >> 1) for r in row_ids]


@torch.no_grad()
def sample_labels(logits: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
    """Labels drawn from the model's own next-token distribution (true Fisher), row by row, by inverse CDF."""
    n, t, v = logits.shape
    out = torch.empty((n, t), dtype=torch.int64, device=logits.device)
    for i in range(n):
        gen = torch.Generator().manual_seed(int(seeds[i]))
        u = torch.rand(t, 1, generator=gen, dtype=torch.float32).to(logits.device)
        cdf = torch.softmax(logits[i].float(), dim=-1).cumsum_(dim=-1)
        out[i] = torch.searchsorted(cdf, u).squeeze(-1).clamp_(max=v - 1)
    return out


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """No parameter requires grad and the model is in eval mode for the block; both restored after."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    was_training = model.training
    for p, _ in flags:
        p.requires_grad_(False)
    model.eval()
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def autocast_on(dev: torch.device, autocast: bool | None) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on CUDA (unless `autocast` is False), nothing elsewhere."""
    use = autocast if autocast is not None else dev.type == "cuda"
    if use and dev.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def mean_token_loss(model: nn.Module, rows: "np.ndarray | torch.Tensor", autocast: bool | None = None) -> torch.Tensor:
    """Each row's mean next-token loss (n,), forward only: inputs row[:-1], labels row[1:] (`HeadTracer.run`'s
    loss, without the backward)."""
    dev = model_device(model)
    batch = as_rows(rows).to(dev)
    was_training = model.training
    model.eval()
    try:
        with autocast_on(dev, autocast):
            logits = model(input_ids=batch[:, :-1], use_cache=False).logits
    finally:
        model.train(was_training)
    n, t, v = logits.shape
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()
    return F.cross_entropy(logits.reshape(n * t, v), batch[:, 1:].reshape(n * t), reduction="none").view(n, t).mean(dim=1)


class HeadTracer:
    """Runs batches of rows through `model`, calling a consumer at the target layers during backward."""

    def __init__(self, model: nn.Module, layers: Sequence[int], need_dense: bool, autocast: bool | None = None) -> None:
        if not layers:
            raise CurateError("no target layer to trace")
        self.model = model
        self.layers = sorted(set(int(l) for l in layers))
        self.need_dense = need_dense
        self.autocast = autocast

    @property
    def device(self) -> torch.device:
        return model_device(self.model)

    def _autocast(self) -> contextlib.AbstractContextManager:
        return autocast_on(self.device, self.autocast)

    def run(
        self,
        rows: "np.ndarray | torch.Tensor",
        consumer: TraceConsumer,
        labels: str = "true",
        seeds: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Forward + backward of the per-row summed loss; returns each row's mean token loss (n,).

        labels="true": inputs row[:-1], labels row[1:]. labels="sampled": labels drawn from the model
        (one seed per row, `seeds`) for the same inputs.
        """
        batch = as_rows(rows).to(self.device)
        vocab = int(self.model.config.vocab_size)
        if batch.numel() and (int(batch.min()) < 0 or int(batch.max()) >= vocab):
            raise CurateError(
                f"rows: token ids span [{int(batch.min())}, {int(batch.max())}], outside the model's vocabulary of {vocab}"
            )
        inputs = batch[:, :-1]
        handles = []
        pending: dict[tuple[str, int], torch.Tensor] = {}
        outputs: list[torch.Tensor] = []
        lowest = self.layers[0]

        def start_graph(module: nn.Module, args: tuple) -> tuple:
            # the graph starts at the lowest target layer's query_key_value input (its LayerNorm output)
            return (args[0].detach().requires_grad_(True), *args[1:])

        def make_hooks(layer: int):
            def qkv_fwd(module: nn.Module, inp: tuple, out: torch.Tensor) -> None:
                pending[("qkv", layer)] = inp[0].detach()

                def grad_hook(g: torch.Tensor) -> None:
                    consumer.on_qkv(layer, pending.pop(("qkv", layer)), g)

                out.register_hook(grad_hook)
                outputs.append(out)

            def dense_fwd(module: nn.Module, inp: tuple, out: torch.Tensor) -> None:
                pending[("dense", layer)] = inp[0].detach()

                def grad_hook(g: torch.Tensor) -> None:
                    consumer.on_dense(layer, pending.pop(("dense", layer)), g)

                out.register_hook(grad_hook)
                outputs.append(out)

            return qkv_fwd, dense_fwd

        try:
            with frozen(self.model), torch.enable_grad():
                handles.append(attention_of(self.model, lowest).query_key_value.register_forward_pre_hook(start_graph))
                for layer in self.layers:
                    attn = attention_of(self.model, layer)
                    qkv_fwd, dense_fwd = make_hooks(layer)
                    handles.append(attn.query_key_value.register_forward_hook(qkv_fwd))
                    if self.need_dense:
                        handles.append(attn.dense.register_forward_hook(dense_fwd))
                with self._autocast():
                    logits = self.model(input_ids=inputs, use_cache=False).logits
                if labels == "true":
                    targets = batch[:, 1:]
                elif labels == "sampled":
                    if seeds is None or len(seeds) != batch.shape[0]:
                        raise ValueError("sampled labels need one seed per row")
                    targets = sample_labels(logits.detach(), seeds)
                else:
                    raise ValueError(f"labels={labels!r}")
                n, t, v = logits.shape
                if logits.dtype not in (torch.float32, torch.float64):
                    logits = logits.float()
                token_loss = F.cross_entropy(logits.reshape(n * t, v), targets.reshape(n * t), reduction="none").view(n, t)
                # only the paths to the hooked outputs run (no input or weight gradients are formed)
                torch.autograd.grad(token_loss.sum(), outputs)
        finally:
            for h in handles:
                h.remove()
            pending.clear()
            outputs.clear()
        return token_loss.detach().mean(dim=1)
