"""Repeat probes `[r, r]` and the differentiable probe functions f_probe whose gradient the attribution code
takes w.r.t. a head's weights.

`build_probes` is the ONE place that decides which tokens a probe may hold and how long it is: the training
run's evaluation, the score job, the in-process scorer and `curate circuits` all draw their probes with it.

The probe functions keep the model's train/eval mode as the caller set it and build an autograd graph
whenever grad mode is on. Reduction `sum` (the spec's definition) or `mean` (the same sum divided by the
number of terms).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import torch
from torch import nn

from curate.attribution.heads import HeadGeometry, HeadRef
from curate.attribution.metrics import (
    attention_weights_hooks,
    check_tokens,
    previous_token_diagonal,
    repeat_half_len,
    run_base,
)
from curate.corpus import Corpus
from curate.errors import CurateError

Reduction = Literal["sum", "mean"]

ProbeFn = Callable[[nn.Module, torch.Tensor, HeadRef], torch.Tensor]
"""f_probe(model, probe tokens, head) -> scalar tensor (differentiable w.r.t. the model's weights)."""

DEFAULT_PROBES = 32
"""Repeat probes per draw (the paper uses 32 to 200)."""
MAX_HALF_LEN = 32
"""Default length L of r: min(MAX_HALF_LEN, context // 2)."""


# --------------------------------------------------------------------------- probe tokens


def special_token_ids(config: object) -> list[int]:
    """bos/eos/pad ids named in a model config (excluded from random probes)."""
    ids = {getattr(config, name, None) for name in ("bos_token_id", "eos_token_id", "pad_token_id")}
    flat: set[int] = set()
    for value in ids:
        if isinstance(value, int):
            flat.add(value)
        elif isinstance(value, (list, tuple)):
            flat.update(int(v) for v in value if isinstance(v, int))
    return sorted(flat)


def _draw(vocab_size: int, n: int, half_len: int, seed: int, exclude_ids: Sequence[int]) -> torch.Tensor:
    """`n` sequences `[r, r]` (LongTensor (n, 2*half_len)), r uniform over the vocabulary minus `exclude_ids`."""
    if n < 1:
        raise CurateError(f"the number of probes must be at least 1 (got {n})")
    if half_len < 2:
        raise CurateError(f"probe half length must be at least 2 (got {half_len})")
    excluded = {int(i) for i in exclude_ids if 0 <= int(i) < vocab_size}
    allowed = torch.tensor([t for t in range(vocab_size) if t not in excluded], dtype=torch.long)
    if allowed.numel() < 2:
        raise CurateError(f"vocabulary of {vocab_size} minus {len(excluded)} excluded ids leaves fewer than 2 tokens")
    gen = torch.Generator().manual_seed(int(seed))
    first = allowed[torch.randint(0, allowed.numel(), (n, half_len), generator=gen)]
    return torch.cat([first, first], dim=1)


@dataclass(frozen=True)
class ProbeSpec:
    """What a draw of repeat probes is made of: r uniform over ids [0, vocab_size) minus `excluded_ids`."""

    vocab_size: int
    excluded_ids: tuple[int, ...]
    half_len: int
    n: int
    seed: int

    def draw(self) -> torch.Tensor:
        """The probes: LongTensor (n, 2 * half_len), each row `[r, r]`."""
        return _draw(self.vocab_size, self.n, self.half_len, self.seed, self.excluded_ids)

    def to_json(self) -> dict:
        return {"n": self.n, "half_len": self.half_len, "seed": self.seed, "vocab_size": self.vocab_size,
                "excluded_ids": list(self.excluded_ids)}


def probe_spec(
    config: object,
    *,
    vocab_size: int | None = None,
    eot_id: int | None = None,
    context: int | None = None,
    n: int = DEFAULT_PROBES,
    half_len: int | None = None,
    seed: int = 0,
) -> ProbeSpec:
    """The probes for a model with config `config` (see `build_probes`)."""
    vocab = int(getattr(config, "vocab_size"))
    if vocab_size:
        vocab = min(vocab, int(vocab_size))
    exclude = set(special_token_ids(config))
    if eot_id is not None:
        exclude.add(int(eot_id))
    known = [int(c) for c in (getattr(config, "max_position_embeddings", None), context) if c is not None]
    ctx = min(known) if known else None
    if half_len is None:
        half = MAX_HALF_LEN if ctx is None else min(MAX_HALF_LEN, ctx // 2)
    else:
        half = int(half_len)
        if ctx is not None and 2 * half > ctx:
            raise CurateError(
                f"probe half length {half} does not fit the context of {ctx} tokens "
                f"(probes are 2 x {half} = {2 * half} tokens; the half length can be at most {ctx // 2})"
            )
    return ProbeSpec(vocab, tuple(sorted(exclude)), half, int(n), int(seed))


def build_probes(config: object, **options) -> torch.Tensor:
    """`n` repeat probes `[r, r]` (LongTensor (n, 2L)) for a model with config `config` (options: those of `probe_spec`).

    r is uniform over the first min(config vocabulary, `vocab_size`) ids (the tokenizer's real size when
    known: Pythia pads its embedding table) minus the config's special ids and the end-of-text id `eot_id`.
    The context is min(config.max_position_embeddings, `context`) (the rows' context when known);
    L defaults to min(32, context // 2), and an explicit L with 2L > context is refused.
    """
    return probe_spec(config, **options).draw()


def corpus_probes(config: object, corpus: Corpus, *, n: int = DEFAULT_PROBES, half_len: int | None = None,
                  seed: int = 0) -> torch.Tensor:
    """`build_probes` for a model trained or scored on `corpus`: its tokenizer's vocabulary and end-of-text
    (when its metadata records them) and its rows' context."""
    meta = corpus.meta
    return build_probes(
        config,
        vocab_size=meta.vocab_size if meta is not None else None,
        eot_id=meta.eot_id if meta is not None else None,
        context=corpus.row_len - 1,
        n=n,
        half_len=half_len,
        seed=seed,
    )


# --------------------------------------------------------------------------- probe functions


def _reduce(values: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    if reduction == "sum":
        return values.sum()
    if reduction == "mean":
        return values.mean()
    raise CurateError(f"probe reduction must be 'sum' or 'mean' (got {reduction!r})")


def induction_probe(model: nn.Module, probes: torch.Tensor, reduction: Reduction = "sum") -> torch.Tensor:
    """Sum over probes and second-copy positions of log p(token after the earlier occurrence).

    For `[r, r]` of length 2L: at position i in [L, 2L-1) the model predicts token i+1, which equals
    token i-L+1 (the token that followed the earlier occurrence of token i). The last position
    (target out of range) is excluded: L-1 terms per probe.
    """
    half = repeat_half_len(probes)
    check_tokens(model, probes)
    length = probes.shape[1]
    hidden = run_base(model, probes)
    logits = model.get_output_embeddings()(hidden[:, half : length - 1]).float()
    targets = probes[:, half + 1 : length].to(logits.device)
    log_probs = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return _reduce(log_probs, reduction)


def previous_token_probe(model: nn.Module, probes: torch.Tensor, head: HeadRef, reduction: Reduction = "sum") -> torch.Tensor:
    """Sum over probes and positions i in [1, T) of `head`'s attention weight A[i, i-1].

    Runs eager attention and stops the forward after the head's layer, so later layers cost nothing.
    """
    if probes.dim() != 2 or probes.dtype != torch.long or probes.shape[1] < 2:
        raise CurateError(f"probes must be a 2-D LongTensor with at least 2 positions (got shape {tuple(probes.shape)})")
    check_tokens(model, probes)
    (head,) = HeadGeometry.of(model).check([head])
    captured: list[torch.Tensor] = []

    def keep(_layer: int, weights: torch.Tensor) -> None:
        captured.append(previous_token_diagonal(weights[:, head.head]).float())

    with attention_weights_hooks(model, keep, layers=[head.layer], stop_after=head.layer):
        run_base(model, probes)
    return _reduce(captured[0], reduction)


__all__ = [
    "DEFAULT_PROBES",
    "MAX_HALF_LEN",
    "ProbeFn",
    "ProbeSpec",
    "Reduction",
    "build_probes",
    "corpus_probes",
    "induction_probe",
    "previous_token_probe",
    "probe_spec",
    "special_token_ids",
]
