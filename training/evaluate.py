"""What a run measures at each evaluation: per-head circuit scores on fixed repeat probes, held-out loss and the
ICL score."""
from __future__ import annotations

import hashlib

import numpy as np
import torch
import torch.nn.functional as F

from curate.attribution.metrics import head_scores, icl_score


class Evaluator:
    """Per-head scores on fixed repeat probes, held-out loss and ICL score, for one model."""

    def __init__(self, probes: torch.Tensor, heldout: np.ndarray | None, device: str):
        self.probes = probes
        self.heldout = None if heldout is None else torch.from_numpy(heldout)
        self.device = device
        self.batch = 32

    def key(self) -> str:
        """Identifies what this evaluator measures (probe tokens, held-out rows): equal keys, comparable curves."""
        h = hashlib.sha256(self.probes.numpy().tobytes())
        if self.heldout is not None:
            h.update(self.heldout.numpy().tobytes())
        return h.hexdigest()[:16]

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module) -> dict:
        scores = head_scores(model, self.probes)
        out: dict = {"induction": scores.induction.tolist(), "previous_token": scores.previous_token.tolist(),
                     "heldout_loss": None, "icl": None}
        if self.heldout is not None:
            was_training = model.training
            model.eval()
            total, count = 0.0, 0
            for a in range(0, self.heldout.shape[0], self.batch):
                rows = self.heldout[a : a + self.batch].to(self.device)
                logits = model(input_ids=rows[:, :-1], use_cache=False).logits
                total += float(F.cross_entropy(logits.float().flatten(0, 1), rows[:, 1:].flatten(), reduction="sum"))
                count += rows[:, 1:].numel()
            model.train(was_training)
            out["heldout_loss"] = total / count
            if self.heldout.shape[1] - 1 >= 8:
                out["icl"] = icl_score(model, self.heldout)
        return out
