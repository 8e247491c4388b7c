"""The learning-rate schedule (Pythia-like linear warm-up + cosine decay) and checkpoint-step specs."""
from __future__ import annotations

import math

from curate.errors import CurateError

DEFAULT_CHECKPOINTS = "log,every:1000"
LOG_MAX = 512


def lr_at(step: int, base_lr: float, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.1) -> float:
    """Learning rate of update `step` (0-based): linear warm-up to `base_lr` over `warmup_steps` updates
    ((step + 1) / warmup), then cosine decay to `min_lr_ratio * base_lr` at `total_steps`, flat after.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    min_lr = base_lr * min_lr_ratio
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def parse_checkpoint_steps(spec: str, steps: int, start_step: int = 0) -> list[int]:
    """Checkpoint steps in [start_step, steps] from a spec, always including the final step `steps`.

    Comma-separated items: `log` (0, 1, 2, 4, ..., 512, like Pythia's early revisions), `log:K`
    (powers of two up to K, plus 0), `every:N` (N, 2N, ...), a step number, or `none` (only the
    final step). Default: "log,every:1000". A checkpoint `stepK` holds the model after K updates.
    """
    chosen: set[int] = {steps}
    for raw in spec.split(","):
        item = raw.strip().lower()
        if not item or item == "none":
            continue
        try:
            if item == "log" or item.startswith("log:"):
                top = LOG_MAX if item == "log" else int(item[4:])
                if top < 1:
                    raise ValueError
                chosen.add(0)
                k = 1
                while k <= top:
                    chosen.add(k)
                    k *= 2
            elif item.startswith("every:"):
                every = int(item[6:])
                if every < 1:
                    raise ValueError
                chosen.update(range(every, steps + 1, every))
            else:
                step = int(item)
                if step < 0:
                    raise ValueError
                chosen.add(step)
        except ValueError:
            raise CurateError(
                f"checkpoint steps {spec!r}: {raw.strip()!r} is not log, log:K, every:N, a step number or none"
            ) from None
    return sorted(s for s in chosen if start_step <= s <= steps)
