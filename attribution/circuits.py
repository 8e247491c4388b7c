"""The circuit registry: which head metric defines a circuit, its probe, its threshold, and localization.

`CIRCUITS["induction"]` and `CIRCUITS["previous-token"]`. Localization picks the heads whose metric
reaches the threshold at a checkpoint (or takes them from an explicit "L.H,L.H" spec). An induction
(prefix-matching) score alone can come from positional attention, so an induction head is only
localized automatically when a previous-token head sits in an earlier layer.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from curate.attribution.heads import HeadGeometry, HeadRef
from curate.attribution.metrics import HeadScores, head_scores
from curate.attribution.probes import ProbeFn, induction_probe, previous_token_probe
from curate.errors import CurateError

PREVIOUS_TOKEN_THRESHOLD = 0.3
"""Previous-token score that counts as a previous-token head (uniform attention at 64 tokens: ~0.07)."""
INDUCTION_THRESHOLD = 0.3
"""Prefix-matching score that counts as an induction head (paper: ~0.3-0.5; calibration uses 0.3)."""


@dataclass
class Localization:
    """The heads a circuit lives in at one checkpoint, with their scores and the evidence for them."""

    circuit: str
    metric: str
    threshold: float
    mode: str  # "auto" or "explicit"
    heads: list[HeadRef]
    scores: list[float]
    supporting: dict[HeadRef, list[HeadRef]] = field(default_factory=dict)
    """Per localized head: previous-token heads in earlier layers (induction only)."""
    rejected: list[HeadRef] = field(default_factory=list)
    """Heads over the threshold left out for lack of a supporting previous-token head."""
    notes: list[str] = field(default_factory=list)
    head_scores: HeadScores | None = None

    def require(self) -> list[HeadRef]:
        """The heads, or a CurateError naming the best candidate when none were localized."""
        if self.heads:
            return self.heads
        detail = "; ".join(self.notes) if self.notes else "no head passes"
        raise CurateError(f"no {self.circuit} head localized at threshold {self.threshold:g}: {detail} (name the heads, e.g. 1.3, to choose)")

    def to_json(self) -> dict:
        return {
            "circuit": self.circuit,
            "metric": self.metric,
            "threshold": self.threshold,
            "mode": self.mode,
            "heads": [str(h) for h in self.heads],
            "scores": self.scores,
            "supporting": {str(h): [str(p) for p in ps] for h, ps in self.supporting.items()},
            "rejected": [str(h) for h in self.rejected],
            "notes": self.notes,
        }


def _previous_token_heads(scores: HeadScores, below_layer: int) -> list[HeadRef]:
    values = scores.previous_token
    return [HeadRef(l, h) for l in range(min(below_layer, scores.num_layers)) for h in range(scores.num_heads)
            if float(values[l, h]) >= PREVIOUS_TOKEN_THRESHOLD]


@dataclass(frozen=True)
class Circuit:
    """A circuit: its head metric (a HeadScores field), its probe f_probe, and its default threshold."""

    name: str
    metric: str
    probe: ProbeFn
    default_threshold: float
    needs_previous_token_head: bool
    description: str
    default_mode: str  # head subspace scored when none is asked for ("qk" or "qkvo")

    def localize(self, model: nn.Module, probes: torch.Tensor, threshold: float | None = None,
                 heads: str | None = None, scores: HeadScores | None = None) -> Localization:
        """Heads whose metric reaches `threshold` (heads None/"auto"), or the heads of an "L.H,L.H" spec
        (`HeadRef.parse_list`).

        Pass `scores` (from `head_scores(model, probes)`) to skip recomputing them.
        """
        geo = HeadGeometry.of(model)
        num_layers, num_heads = geo.num_layers, geo.num_heads
        scores = head_scores(model, probes) if scores is None else scores
        if (scores.num_layers, scores.num_heads) != (num_layers, num_heads):
            raise CurateError(f"head scores are {scores.num_layers}x{scores.num_heads} but the model has {num_layers}x{num_heads} heads")
        threshold = self.default_threshold if threshold is None else float(threshold)
        values = scores.metric(self.metric)
        explicit = heads is not None and heads.strip().lower() != "auto"
        if explicit:
            candidates = [geo.check_head(h) for h in HeadRef.parse_list(heads)]
        else:
            candidates = [HeadRef(l, h) for l in range(num_layers) for h in range(num_heads) if float(values[l, h]) >= threshold]
        loc = Localization(circuit=self.name, metric=self.metric, threshold=threshold,
                           mode="explicit" if explicit else "auto", heads=[], scores=[], head_scores=scores)
        for head in candidates:
            score = float(values[head.layer, head.head])
            if explicit and score < threshold:
                loc.notes.append(f"head {head} {self.metric} score {score:.3f} is below the threshold {threshold:g}")
            if self.needs_previous_token_head:
                support = _previous_token_heads(scores, head.layer)
                if not support:
                    loc.notes.append(f"no previous-token head below layer {head.layer}: induction score of head "
                                     f"{head} ({score:.3f}) may be positional")
                    if not explicit:
                        loc.rejected.append(head)
                        continue
                loc.supporting[head] = support
            loc.heads.append(head)
            loc.scores.append(score)
        if not candidates:
            best, best_value = scores.best(self.metric)
            loc.notes.append(f"no head reaches {self.metric} {threshold:g}; best is {best} at {best_value:.3f}")
        return loc


def _induction(model: nn.Module, probes: torch.Tensor, head: HeadRef) -> torch.Tensor:
    """Induction probe; the head is ignored (the probe reads the model's output)."""
    return induction_probe(model, probes)


def _previous_token(model: nn.Module, probes: torch.Tensor, head: HeadRef) -> torch.Tensor:
    return previous_token_probe(model, probes, head)


CIRCUITS: dict[str, Circuit] = {
    "induction": Circuit(
        name="induction",
        metric="induction",
        probe=_induction,
        default_threshold=INDUCTION_THRESHOLD,
        needs_previous_token_head=True,
        description="prefix-matching heads: attend from a repeated token to the token after its earlier occurrence",
        # the probe is a log-prob of the copied token, which the head's V/O (the copying) moves as much as its
        # Q/K; on the default, qkvo ranks copy-rich rows far better than qk (bench/RESULTS.md)
        default_mode="qkvo",
    ),
    "previous-token": Circuit(
        name="previous-token",
        metric="previous_token",
        probe=_previous_token,
        default_threshold=PREVIOUS_TOKEN_THRESHOLD,
        needs_previous_token_head=False,
        description="heads that attend from each token to the one before it",
        default_mode="qk",  # the probe is the head's attention pattern: V/O get no gradient from it
    ),
}


def get_circuit(name: str) -> Circuit:
    """The registered circuit called `name`; CurateError listing the known names otherwise."""
    try:
        return CIRCUITS[name]
    except KeyError:
        raise CurateError(f"unknown circuit {name!r} (known: {', '.join(sorted(CIRCUITS))})") from None
