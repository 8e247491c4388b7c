"""What a training command asks of the trainer (`TrainRequest`): the flags that decide its `TrainSpec`, with their
help, and how they become TrainSpec fields.

Each flag is None unless given. All but the model-shape flags (`SHAPE_FLAGS`) ARE TrainSpec fields, under the same
names and given ones replace the recipe's (`overrides`); the shape flags map explicitly to other spec fields
(`shape_fields`: --preset to the preset's settings and model config, --layers/--hidden/--attention-heads/--context to
`architecture`, --precision to `autocast`, --config to `model_config`). Kept free of torch (the command line is built
from it): TrainSpec itself is not imported here."""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from curate.errors import CurateError
from curate.options import flag, named, opt
from curate.training.presets import preset_for
from curate.training.recipes import autocast_of

ARCHITECTURE_OPTIONS = {"layers": "num_hidden_layers", "hidden": "hidden_size", "heads": "num_attention_heads",
                        "context": "max_position_embeddings"}
"""The architecture flags -> the GPTNeoXConfig field each sets."""
SHAPE_FLAGS = ("config", "preset", *ARCHITECTURE_OPTIONS, "precision")
"""The flags that map to other TrainSpec fields (`TrainRequest.shape_fields`); every other field is a TrainSpec field."""


@dataclass
class TrainRequest:
    """The flags that decide a run's TrainSpec (None: not given, the recipe's value)."""

    corpus: str | None = opt(None, "--corpus", help="Training corpus (Megatron prefix/.idx, .npy, .parquet or corpus folder).")
    config: Path | None = opt(None, "--config", help="GPT-NeoX config JSON for a fresh model (default: the embedded default model).")
    init_from: str | None = opt(None, "--model", deprecated=("--from",), help="Start from these weights: HF folder, run folder, checkpoint, or hub name.")
    revision: str | None = opt(None, "--revision", help="Checkpoint of --model (stepK), as on the hub.")
    plan: str | None = opt(None, "--plan", help="Training plan JSON (drops/insertions) or a corpus whose row order is the stream.")
    steps: int | None = opt(None, "--steps", help="Train until this step (default 1000, or the whole steps of --epochs; --default: the reference length).")
    epochs: int | None = opt(None, "--epochs", help="Passes over the corpus's rows (or the plan's); the first in the corpus's order, each later one in a fresh permutation seeded by --seed, recorded in the run's plan.json. Without --steps the run trains every whole step of them.")
    batch_size: int | None = opt(None, "--batch-size", help="Rows per step (default: the corpus's).")
    eval_every: int | None = opt(None, "--eval-every", help="Evaluate every K steps (default 100).")
    checkpoints: str | None = opt(None, "--checkpoints", help="Checkpoint steps: log, log:K, every:N, step numbers, none (comma-separated; default log,every:1000; --default: log,every:100). The final step is always saved.")
    seed: int | None = opt(None, "--seed", help="Seed for the initialisation and the RNG (default 0).")
    lr: float | None = opt(None, "--lr", help="Peak learning rate (default 1e-3); linear warm-up, then constant for a fresh model (the default recipe), cosine decay to 10% from --model weights.")
    warmup_steps: int | None = opt(None, "--warmup-steps", help="Linear warm-up steps (default 100).")
    start_step: int | None = opt(None, "--start-step", help="Data/schedule position of the first update (default: from --model).")
    heldout: str | None = opt(None, "--heldout", help="Held-out corpus for held-out loss and ICL.")
    threads: int | None = opt(None, "--threads", help="CPU threads (1 keeps runs bit-reproducible).")
    device: str | None = opt(None, "--device", help="cpu or cuda.")
    preset: str | None = opt(None, "--preset", help="A published architecture and its training settings for a fresh model: pythia-14m, pythia-31m, pythia-70m, pythia-160m, pythia-410m.")
    layers: int | None = opt(None, "--layers", help="Layers of a fresh default model (default 2).")
    hidden: int | None = opt(None, "--hidden", help="Hidden width of a fresh default model (default 64; the MLP is 4x).")
    heads: int | None = opt(None, "--attention-heads", deprecated=("--heads",), help="Attention heads of a fresh default model (default 4; must divide --hidden).")
    context: int | None = opt(None, "--context", help="Context of a fresh default model in tokens (default 64; corpus rows hold one more).")
    micro_batch: int | None = opt(None, "--micro-batch", help="Rows per forward/backward; gradients are accumulated over the step (default: the whole batch).")
    precision: str | None = opt(None, "--precision", help="Forward precision: bf16 (autocast, fp32 master weights) or fp32 (default: bf16 on cuda, fp32 on cpu).")

    def shape(self) -> list[str]:
        """The architecture flags given (field names)."""
        return [name for name in ARCHITECTURE_OPTIONS if getattr(self, name) is not None]

    def validate(self) -> None:
        """The flags' own checks (the spec's values are checked by TrainSpec); an error names the flag."""
        for name in [*self.shape(), "micro_batch", "epochs"]:
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise CurateError(f"{flag(self, name)} must be at least 1 (got {getattr(self, name)})")
        if self.shape() and self.preset:
            raise CurateError(f"{flag(self, 'preset')} fixes the architecture: drop {', '.join(flag(self, n) for n in self.shape())}")
        if self.preset is not None:
            with named(self, "preset"):
                preset_for(self.preset)
        if self.hidden is not None and self.heads is not None and self.hidden % self.heads:
            raise CurateError(f"{flag(self, 'hidden')} {self.hidden} is not a multiple of {flag(self, 'heads')} {self.heads}")
        with named(self, "precision"):
            autocast_of(self.precision)

    def overrides(self) -> dict:
        """The given flags that are TrainSpec fields (all but `SHAPE_FLAGS`), by their TrainSpec names."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in SHAPE_FLAGS and getattr(self, f.name) is not None}

    def architecture(self) -> dict | None:
        """GPTNeoXConfig fields from --layers/--hidden/--attention-heads/--context (None when none is given)."""
        config = {ARCHITECTURE_OPTIONS[name]: getattr(self, name) for name in self.shape()}
        if "hidden_size" in config:
            config["intermediate_size"] = 4 * config["hidden_size"]
        return config or None

    def shape_fields(self) -> dict:
        """TrainSpec fields for the model's shape and numerics: a preset, the architecture flags, precision, --config."""
        out: dict = {}
        if self.preset is not None:
            preset = preset_for(self.preset)
            out.update(preset.training.spec_fields())
            out["model_config"] = preset.architecture.config_fields()
        if self.architecture():
            out["architecture"] = self.architecture()
        if self.precision is not None:
            out["autocast"] = autocast_of(self.precision)
        if self.config is not None:
            # transformers (seconds, measured): only when a run is set up, never at the command line's start
            from curate.training.models import load_config_file

            out["model_config"] = load_config_file(self.config)
        return out
