"""The gradient of one training step: the backward of the mean next-token loss, in micro-batches (gradient
accumulation) and under bf16 autocast when asked."""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F


def backward_batch(model: torch.nn.Module, batch: torch.Tensor, micro_batch: int | None, autocast: bool = False) -> torch.Tensor:
    """Backward of one step's mean next-token loss; returns the loss (detached).

    With `micro_batch` below the batch, the rows are run `micro_batch` at a time and each part's
    summed token loss, divided by the whole batch's token count, is backpropagated: the accumulated
    gradient equals the full batch's up to float rounding, in the memory of one micro-batch.
    `autocast`: the forward in bf16 on CUDA; weights, gradients and the optimizer stay fp32.
    """
    device_type = batch.device.type
    cast = torch.autocast(device_type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    rows = batch.shape[0]
    if not micro_batch or micro_batch >= rows:
        with cast:
            logits = model(input_ids=batch[:, :-1], use_cache=False).logits
        loss = F.cross_entropy(_at_least_fp32(logits).flatten(0, 1), batch[:, 1:].flatten())
        loss.backward()
        return loss.detach()
    tokens = rows * (batch.shape[1] - 1)
    total: torch.Tensor | None = None
    for a in range(0, rows, micro_batch):
        part = batch[a : a + micro_batch]
        with cast:
            logits = model(input_ids=part[:, :-1], use_cache=False).logits
        loss = F.cross_entropy(_at_least_fp32(logits).flatten(0, 1), part[:, 1:].flatten(), reduction="sum") / tokens
        loss.backward()
        total = loss.detach() if total is None else total + loss.detach()
    assert total is not None
    return total


def _at_least_fp32(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t
