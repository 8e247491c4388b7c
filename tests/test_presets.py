"""Pythia presets: shapes whose parameter counts equal the published models', and their training settings."""
from __future__ import annotations

import pytest
import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from curate.training.presets import PRESETS, find_preset, preset_for

# Total parameters of the released checkpoints (Pythia paper, Table 1 / the HF model cards).
PUBLISHED_PARAMETERS = {
    "pythia-14m": 14_067_712,
    "pythia-31m": 30_494_720,
    "pythia-70m": 70_426_624,
    "pythia-160m": 162_322_944,
    "pythia-410m": 405_334_016,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMETERS))
def test_preset_has_the_published_parameter_count(name):
    config = GPTNeoXConfig(**PRESETS[name].architecture.config_fields())
    with torch.device("meta"):
        model = GPTNeoXForCausalLM(config)
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED_PARAMETERS[name]
    assert config.max_position_embeddings == 2048 and config.vocab_size == 50304
    assert config.use_parallel_residual and not config.tie_word_embeddings


def test_training_settings_follow_the_configs():
    seventy = PRESETS["pythia-70m"].training
    assert (seventy.lr, seventy.min_lr_ratio, seventy.warmup_steps, seventy.schedule_steps) == (1e-3, 0.1, 1430, 143_000)
    assert (seventy.beta1, seventy.beta2, seventy.eps, seventy.weight_decay, seventy.grad_clip) == (0.9, 0.95, 1e-8, 0.1, 1.0)
    assert seventy.batch_size == 1024
    assert PRESETS["pythia-160m"].training.lr == 6e-4 and PRESETS["pythia-410m"].training.lr == 3e-4


def test_preset_lookup_by_hub_name():
    assert preset_for("EleutherAI/pythia-70m-deduped").name == "pythia-70m"
    assert preset_for("Pythia-14M").name == "pythia-14m"
    assert find_preset("gpt2") is None
    with pytest.raises(ValueError, match="unknown preset"):
        preset_for("pythia-7b")


def test_weights_bring_their_presets_optimiser_settings_else_the_checkpoint_recipe() -> None:
    """One rule for `curate train --from` and `curate experiment --model`: a Pythia hub name, a folder named like one
    or its stepK/ checkpoint subfolder take Pythia's settings; any other model the checkpoint recipe."""
    from curate.training.presets import preset_of_weights, weights_training_fields
    from curate.training.recipes import recipe_fields

    for name in ("EleutherAI/pythia-70m", "/data/models/pythia-70m", "/data/models/pythia-70m/step1000/",
                 "EleutherAI/pythia-70m-deduped"):
        assert preset_of_weights(name) is PRESETS["pythia-70m"], name
        fields = weights_training_fields(name)
        assert (fields["weight_decay"], fields["warmup_steps"], fields["schedule_steps"], fields["lr"]) == (0.1, 1430, 143_000, 1e-3)
        assert "batch_size" not in fields  # the batch is the corpus's
    assert weights_training_fields("EleutherAI/pythia-160m")["lr"] == 6e-4
    for name in ("gpt2", "/runs/my-run", "/runs/my-run/step1000", "step1000"):
        assert preset_of_weights(name) is None
        assert weights_training_fields(name) == recipe_fields("from_checkpoint")
