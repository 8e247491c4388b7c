"""What kind of rows carry the influence: structural classes enriched among the top-k rows of a
scores folder, against the window's base rate, and how heavy the tail is.

The scores folder is read with `attribution.scores_folder` (shards streamed one at a time, reading only
the columns needed).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from curate.amounts import parse_amount
from curate.attribution.scores_folder import ScoresFolder, open_scores
from curate.augment.tags import LABELS, tag_rows
from curate.corpus import Corpus, open_corpus
from curate.errors import CurateError

TAILS = ("top", "bottom")


def tail_shares(scores: ScoresFolder, column: str = "score", tail: str = "top", fractions: tuple[float, ...] = (0.01, 0.10)) -> dict[str, float]:
    """Share of the total positive influence (negative for `bottom`) carried by the top 1% and 10% of rows."""
    sign = 1.0 if tail == "top" else -1.0
    total = 0.0
    for batch in scores.iter_columns([column]):
        v = sign * batch[column].astype(np.float64)
        total += float(v[v > 0].sum())
    out: dict[str, float] = {}
    ks = {f: parse_amount(f"{f * 100:g}%", scores.num_rows) for f in fractions}
    best = scores.top_rows(max(ks.values()), column, tail)
    signed = sign * best.values
    for f, k in ks.items():
        carried = float(np.clip(signed[:k], 0.0, None).sum())
        out[f"top_{f * 100:g}%"] = carried / total if total > 0 else float("nan")
    return out


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95% by default)."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass
class ClassEnrichment:
    """One structural class among the top rows vs. the base rate."""

    label: str
    top_count: int
    top_share: float
    base_count: int
    base_share: float
    ratio: float | None  # top_share / base_share (None when the class is absent from the base)
    ci_low: float | None  # 95% Wilson interval of the top share, divided by the base share
    ci_high: float | None


def enrichment(top_tags: list[str], base_tags: list[str]) -> list[ClassEnrichment]:
    """Per class: share among the top rows, share in the base, ratio, and a 95% CI on the ratio.

    The interval is the Wilson interval of the top-k share divided by the base share (the base is
    the whole window, or a large sample of it, so its own error is treated as negligible).
    """
    if not top_tags or not base_tags:
        raise CurateError("enrichment needs at least one top row and one base row")
    out = []
    k, n = len(top_tags), len(base_tags)
    for label in LABELS:
        tc = sum(1 for t in top_tags if t == label)
        bc = sum(1 for t in base_tags if t == label)
        ts, bs = tc / k, bc / n
        lo, hi = wilson_interval(tc, k)
        if bc:
            out.append(ClassEnrichment(label, tc, ts, bc, bs, ts / bs, lo / bs, hi / bs))
        else:
            out.append(ClassEnrichment(label, tc, ts, bc, bs, None, None, None))
    return out


@dataclass
class ExplainReport:
    """Everything `curate explain` prints."""

    scores: str
    corpus: str
    circuit: str | None
    heads: list
    window: list | None
    column: str
    tail: str
    num_rows: int
    top_k: int
    base_rows: int
    base_sampled: bool
    classes: list[ClassEnrichment]
    tail_share: dict[str, float]
    top_row_ids: list[int] = field(default_factory=list)

    def to_json(self) -> dict:
        out = asdict(self)
        out["classes"] = [asdict(c) for c in self.classes]
        return out


def _tokenizer_for(corpus: Corpus):
    from curate.tokenize import load_tokenizer

    spec = corpus.tokenizer_spec()
    if spec is None:
        raise CurateError(f"{corpus.path}: no tokenizer recorded for this corpus (corpus.json 'tokenizer'); tagging rows needs one to decode them")
    return load_tokenizer(spec)


def tag_corpus_rows(corpus: Corpus, row_ids: np.ndarray, tokenizer=None, chunk: int = 4096) -> list[str]:
    """Structure tags of rows of a corpus (decoded with its tokenizer), in the order given."""
    tokenizer = tokenizer or _tokenizer_for(corpus)
    out: list[str] = []
    ids = np.asarray(row_ids, dtype=np.int64)
    for a in range(0, len(ids), chunk):
        out += tag_rows(corpus.take(ids[a : a + chunk]), tokenizer)
    return out


def explain_scores(
    path: str | Path,
    top: str | int = "10%",
    head: str | None = None,
    tail: str = "top",
    corpus: str | Path | None = None,
    base_sample: int = 20_000,
    seed: int = 0,
) -> ExplainReport:
    """Enrichment of structural classes among the top rows of a scores folder, and the tail's weight."""
    scores = open_scores(path)
    if tail not in TAILS:
        raise CurateError(f"tail {tail!r}: expected one of {', '.join(TAILS)}")
    if base_sample < 1:
        raise CurateError(f"base sample {base_sample}: must be positive")
    column = scores.column_for(head)
    k = parse_amount(top, scores.num_rows, "top")
    corp = open_corpus(corpus if corpus is not None else scores.corpus_path)
    tokenizer = _tokenizer_for(corp)

    best = scores.top_rows(k, column, tail)
    all_ids = np.concatenate([b["row_id"].astype(np.int64) for b in scores.iter_columns(["row_id"])])
    sampled = len(all_ids) > base_sample
    base_ids = np.sort(np.random.default_rng(seed).choice(all_ids, size=base_sample, replace=False)) if sampled else np.sort(all_ids)
    if len(all_ids) and (all_ids.max() >= corp.num_rows):
        raise CurateError(f"{scores.path}: row id {int(all_ids.max())} is outside the corpus {corp.path} ({corp.num_rows} rows); give the corpus that was scored")

    top_tags = tag_corpus_rows(corp, best.row_ids, tokenizer)
    base_tags = tag_corpus_rows(corp, base_ids, tokenizer)
    return ExplainReport(
        scores=str(scores.path),
        corpus=str(corp.path),
        circuit=scores.summary.get("circuit"),
        heads=list(scores.summary.get("heads") or []),
        window=scores.summary.get("window"),
        column=column,
        tail=tail,
        num_rows=scores.num_rows,
        top_k=k,
        base_rows=len(base_ids),
        base_sampled=sampled,
        classes=enrichment(top_tags, base_tags),
        tail_share=tail_shares(scores, column, tail),
        top_row_ids=[int(i) for i in best.row_ids[:20]],
    )
