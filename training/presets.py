"""The published Pythia architectures and training settings, as named presets.

Every number comes from EleutherAI's training configs, `models/<size>/pythia-<size>.yml` in the
EleutherAI/pythia repository (read for this module: 14M at commit 6baee23, 31M at b9426f2, 70M at
ae1ce75, 160M at 0075322, 410M at ddad623). Shared by all five sizes in those files:
- "seq-length" / "max-position-embeddings": 2048; "pos-emb": rotary with "rotary-pct": 0.25;
- "no-weight-tying": true (untied input and output embeddings); "gpt-j-residual": true (parallel residual);
- "hidden-dropout" / "attention-dropout": 0;
- optimizer Adam, "betas": [0.9, 0.95], "eps": 1e-8; "weight-decay": 0.1; "gradient_clipping": 1.0;
- "train-iters" = "lr-decay-iters" = 143000, "lr-decay-style": cosine, "warmup": 0.01 (a fraction of the
  decay iterations: 1,430 steps), "min_lr" = lr / 10;
- batch: "train_micro_batch_size_per_gpu": 32 on 32 GPUs, "gas": 1 -> 1,024 rows of 2,049 tokens per step.
The vocabulary is the GPT-NeoX-20B tokenizer's 50,277 tokens padded to 50,304 embeddings (MDA-SPEC section 6).
The MLP is 4 x hidden (GPT-NeoX's default when the config names no other size).
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import PurePath

from curate.training.recipes import recipe_fields

PYTHIA_VOCAB = 50304
PYTHIA_CONTEXT = 2048
PYTHIA_BATCH = 1024
PYTHIA_STEPS = 143_000
PYTHIA_WARMUP_FRACTION = 0.01


@dataclass(frozen=True)
class Architecture:
    """The shape of a GPT-NeoX model (the fields a preset fixes)."""

    layers: int
    hidden: int
    heads: int
    context: int = PYTHIA_CONTEXT
    vocab: int = PYTHIA_VOCAB
    rotary_pct: float = 0.25
    parallel_residual: bool = True

    def config_fields(self) -> dict:
        """`GPTNeoXConfig` keyword arguments for this shape (eager attention: curate reads attention weights)."""
        return {
            "vocab_size": self.vocab,
            "hidden_size": self.hidden,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "intermediate_size": 4 * self.hidden,
            "max_position_embeddings": self.context,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": self.rotary_pct},
            "use_parallel_residual": self.parallel_residual,
            "tie_word_embeddings": False,
            "hidden_dropout": 0.0,
            "attention_dropout": 0.0,
            "layer_norm_eps": 1e-5,
            "hidden_act": "gelu",
            "attn_implementation": "eager",
        }


@dataclass(frozen=True)
class PythiaTraining:
    """The optimizer and schedule settings of a Pythia run (TrainSpec field names)."""

    lr: float
    min_lr_ratio: float = 0.1
    warmup_steps: int = round(PYTHIA_WARMUP_FRACTION * PYTHIA_STEPS)
    schedule_steps: int = PYTHIA_STEPS
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    batch_size: int = PYTHIA_BATCH

    def to_json(self) -> dict:
        return asdict(self)

    def spec_fields(self) -> dict:
        """The TrainSpec fields these settings fix. The batch is left to the corpus (Pythia's data records
        1,024 rows per step), so a step K run on it starts at row 1,024 K."""
        return {k: v for k, v in asdict(self).items() if k != "batch_size"}


@dataclass(frozen=True)
class Preset:
    name: str
    hub_name: str
    architecture: Architecture
    training: PythiaTraining


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("pythia-14m", "EleutherAI/pythia-14m", Architecture(layers=6, hidden=128, heads=4), PythiaTraining(lr=1e-3)),
        Preset("pythia-31m", "EleutherAI/pythia-31m", Architecture(layers=6, hidden=256, heads=8), PythiaTraining(lr=1e-3)),
        Preset("pythia-70m", "EleutherAI/pythia-70m", Architecture(layers=6, hidden=512, heads=8), PythiaTraining(lr=1e-3)),
        Preset("pythia-160m", "EleutherAI/pythia-160m", Architecture(layers=12, hidden=768, heads=12), PythiaTraining(lr=6e-4)),
        Preset("pythia-410m", "EleutherAI/pythia-410m", Architecture(layers=24, hidden=1024, heads=16), PythiaTraining(lr=3e-4)),
    )
}


def preset_for(name: str) -> Preset:
    """A preset by name ("pythia-70m") or by hub model name, also "-deduped" ("EleutherAI/pythia-70m-deduped")."""
    key = name.strip().lower().rsplit("/", 1)[-1]
    key = key[: -len("-deduped")] if key.endswith("-deduped") else key
    if key not in PRESETS:
        raise ValueError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})")
    return PRESETS[key]


def find_preset(model_name: str) -> Preset | None:
    """The preset of a hub model name, or None when it is not a known Pythia size."""
    try:
        return preset_for(model_name)
    except ValueError:
        return None


CHECKPOINT_NAME_RE = re.compile(r"^step\d+$")


def preset_of_weights(model: str) -> Preset | None:
    """The preset of the weights a run starts from: a hub name ("EleutherAI/pythia-70m"), or a folder named like one
    (".../pythia-70m", also its checkpoint subfolder ".../pythia-70m/step1000"); None for any other model."""
    parts = PurePath(str(model).rstrip("/")).parts
    if len(parts) > 1 and CHECKPOINT_NAME_RE.match(parts[-1]):
        parts = parts[:-1]
    return find_preset(parts[-1]) if parts else None


def weights_training_fields(model: str) -> dict:
    """The optimiser and schedule (TrainSpec fields) of a run that starts from the weights `model`: the model's own
    published settings when it is a Pythia size (`preset_of_weights`), else the checkpoint recipe. The one rule
    `curate train --from` and `curate experiment --model` (the arms of an external model) both follow."""
    preset = preset_of_weights(model)
    return {**recipe_fields("from_checkpoint"), **(preset.training.spec_fields() if preset is not None else {})}
