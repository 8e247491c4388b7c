"""Training recipes: the TrainSpec settings each kind of run starts from, under TrainSpec's own field names.

Three cases, one table:
- `from_checkpoint`: weights from a checkpoint (warm start or branch) train with the Pythia-style recipe
  (AdamW beta2 0.95, weight decay 0.01, cosine decay to 10%); these are also `TrainSpec`'s defaults.
- `fresh`: any freshly initialised model trains with the default small-model recipe (constant learning
  rate after warm-up, no weight decay, beta2 0.999), tuned with the default corpus (bench/RESULTS.md).
- `reference`: the workspace's reference run: the fresh recipe plus its batch size, length, evaluation
  and checkpoint cadence, and seed.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from curate.default_corpus import DEFAULT_BATCH_SIZE, REFERENCE_STEPS

RecipeCase = Literal["reference", "fresh", "from_checkpoint"]


@dataclass(frozen=True)
class Recipe:
    """Optimizer and learning-rate schedule settings (TrainSpec field names)."""

    lr: float = 1e-3
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # cosine decay to lr * min_lr_ratio at the schedule's end (1.0: constant after warm-up)
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0


CHECKPOINT_RECIPE = Recipe()
"""For weights that come from a checkpoint; TrainSpec's defaults."""

FRESH_RECIPE = Recipe(min_lr_ratio=1.0, weight_decay=0.0, beta2=0.999)
"""The default small-model recipe, for any fresh model."""

REFERENCE_CHECKPOINTS = "log,every:100"
"""The reference run keeps Pythia's early log-spaced checkpoints, then one at every evaluation (the model is
small), so any formation window can be re-trained from, or attributed at, an evaluated step."""

REFERENCE_RUN = {
    "batch_size": DEFAULT_BATCH_SIZE,
    "steps": REFERENCE_STEPS,
    "eval_every": 100,
    "checkpoints": REFERENCE_CHECKPOINTS,
    "seed": 0,
}
"""The reference run's settings besides its recipe (FRESH_RECIPE)."""


def recipe_fields(case: RecipeCase) -> dict:
    """The TrainSpec fields a run of this kind starts from (the caller's own settings go on top)."""
    if case == "from_checkpoint":
        return asdict(CHECKPOINT_RECIPE)
    if case == "fresh":
        return asdict(FRESH_RECIPE)
    if case == "reference":
        return {**asdict(FRESH_RECIPE), **REFERENCE_RUN}
    raise ValueError(f"unknown training recipe case {case!r}")


PRECISIONS = ("bf16", "fp32")
"""`--precision` values: bf16 (autocast of the forward on CUDA, fp32 master weights) or fp32."""


def autocast_of(precision: str | None) -> bool | None:
    """TrainSpec.autocast for a `--precision` value (None: the trainer's default, bf16 on cuda, fp32 on cpu)."""
    if precision is None:
        return None
    if precision not in PRECISIONS:
        raise ValueError(f"{precision!r}: expected {' or '.join(PRECISIONS)}")
    return precision == "bf16"
