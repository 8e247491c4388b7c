"""The default model and training settings: a CPU-sized GPT-NeoX that forms a previous-token head
and then an induction head on the embedded mini-Pile corpus within a few minutes on 2 cores.

Tuned together with `curate.minipile.MixtureConfig` (see bench/RESULTS.md for the measurements).
"""
from __future__ import annotations

from dataclasses import dataclass

from curate.errors import CurateError

DEFAULT_CONTEXT = 64  # tokens of context; corpus rows hold one more (the label shift)
DEFAULT_HIDDEN = 64
DEFAULT_LAYERS = 2
DEFAULT_HEADS = 4
DEFAULT_MLP_MULT = 4


@dataclass(frozen=True)
class DefaultTraining:
    """Hyper-parameters of the reference run on the default corpus."""

    batch_size: int = 32
    lr: float = 1e-3
    warmup_steps: int = 100
    total_steps: int = 4000
    eval_every: int = 100
    min_lr_ratio: float = 1.0  # cosine decay to lr * min_lr_ratio at total_steps (1.0: constant after warm-up)
    weight_decay: float = 0.0
    beta2: float = 0.999
    grad_clip: float = 1.0
    seed: int = 0

    @property
    def rows_needed(self) -> int:
        """Training rows the run consumes (each row is seen once)."""
        return self.batch_size * self.total_steps


DEFAULT_TRAINING = DefaultTraining()


def default_model_config(vocab_size: int, **overrides):
    """The default `GPTNeoXConfig`: 2 layers x 4 heads of 16, hidden 64, context 64, full rotary,
    eager attention (real attention weights), untied embeddings. `overrides` replace any field."""
    from transformers import GPTNeoXConfig

    if vocab_size < 2:
        raise CurateError(f"vocabulary size must be at least 2, got {vocab_size}")
    hidden = int(overrides.pop("hidden_size", DEFAULT_HIDDEN))
    fields = dict(
        vocab_size=int(vocab_size),
        hidden_size=hidden,
        num_hidden_layers=DEFAULT_LAYERS,
        num_attention_heads=DEFAULT_HEADS,
        intermediate_size=DEFAULT_MLP_MULT * hidden,
        max_position_embeddings=DEFAULT_CONTEXT,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 1.0},
        attn_implementation="eager",
        tie_word_embeddings=False,
        use_parallel_residual=True,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        bos_token_id=None,
        eos_token_id=None,
    )
    if "rotary_pct" in overrides:  # the older name of the rotary fraction
        fields["rope_parameters"] = dict(fields["rope_parameters"], partial_rotary_factor=float(overrides.pop("rotary_pct")))
    fields.update(overrides)
    if fields["hidden_size"] % fields["num_attention_heads"]:
        raise CurateError(
            f"hidden size {fields['hidden_size']} is not a multiple of the number of heads {fields['num_attention_heads']}"
        )
    return GPTNeoXConfig(**fields)
