"""The default model: a CPU-sized GPT-NeoX that forms a previous-token head and then an induction head
on the embedded mini-Pile corpus within a few minutes on 2 cores (trained with `training.recipes`).

Tuned together with `curate.minipile.MixtureConfig` (see bench/RESULTS.md for the measurements); its context
is the default corpus's (`curate.default_corpus.DEFAULT_CONTEXT`).
"""
from __future__ import annotations

from curate.default_corpus import DEFAULT_CONTEXT
from curate.errors import CurateError

DEFAULT_HIDDEN = 64
DEFAULT_LAYERS = 2
DEFAULT_HEADS = 4
DEFAULT_MLP_MULT = 4


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
