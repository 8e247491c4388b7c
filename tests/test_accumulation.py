"""Gradient accumulation: k micro-batches give the full batch's gradient and the same weights after a step."""
from __future__ import annotations


import pytest
import torch

from curate.training.models import build_model, config_from_dict
from curate.training.gradients import backward_batch
from curate.training.spec import TrainSpec
from curate.training.trainer import train
from tests.test_training import TINY, spec, write_corpus, copy_rows


def tiny_model(seed: int = 0) -> torch.nn.Module:
    return build_model(config_from_dict(dict(TINY)), seed).double()


def batch_of(rows: int, seed: int = 1) -> torch.Tensor:
    return torch.from_numpy(copy_rows(rows, seed))


@pytest.mark.parametrize("micro", [1, 3, 4, 7])
def test_micro_batches_accumulate_the_full_batch_gradient(micro):
    full, parts = tiny_model(), tiny_model()
    batch = batch_of(8)
    loss_full = backward_batch(full, batch, None)
    loss_parts = backward_batch(parts, batch, micro)
    assert float(loss_parts) == pytest.approx(float(loss_full), rel=1e-12)
    for (name, a), b in zip(full.named_parameters(), parts.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-10, atol=1e-13), name


def test_same_weights_after_an_optimizer_step():
    full, parts = tiny_model(), tiny_model()
    batch = batch_of(8)
    for model, micro in ((full, None), (parts, 3)):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        backward_batch(model, batch, micro)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    for a, b in zip(full.parameters(), parts.parameters()):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
    moved = sum(float((a - b).detach().abs().sum()) for a, b in zip(full.parameters(), tiny_model().parameters()))
    assert moved > 0


def test_training_with_micro_batches_matches_to_float_tolerance(tmp_path):
    corpus = write_corpus(tmp_path / "c", copy_rows(400, 0), 360)
    whole = train(spec(corpus, steps=6, checkpoints="none"), tmp_path / "whole", progress=False)
    micro = train(spec(corpus, steps=6, checkpoints="none", micro_batch=3), tmp_path / "micro", progress=False)
    a = whole.curves[-1]["loss"]
    b = micro.curves[-1]["loss"]
    assert b == pytest.approx(a, rel=1e-4)
    run = (tmp_path / "micro" / "run.json").read_text()
    assert '"micro_batch": 3' in run


def test_unset_optional_fields_leave_the_recorded_spec_unchanged():
    body = TrainSpec(corpus="c").to_json()
    assert "micro_batch" not in body and "autocast" not in body
    assert TrainSpec(corpus="c", micro_batch=4).to_json()["micro_batch"] == 4
