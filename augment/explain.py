"""What kind of rows carry the influence: structural classes enriched among the top-k rows of a
scores folder, against the window's base rate, and how heavy the tail is.

A scores folder (written by the scoring pipeline): `summary.json` (at least `corpus`, `circuit`,
`heads`, `window` [start_step, end_step], `batch_size`) and `shards/*.parquet` with columns
`row_id`, `step`, `loss`, `head_{L}_{H}` per head and `score`. Shards are streamed one at a time,
reading only the columns needed.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from curate.amounts import parse_amount
from curate.augment.tags import LABELS, tag_rows
from curate.corpus import Corpus, open_corpus
from curate.atomic import read_json
from curate.errors import CurateError

SUMMARY_FILE = "summary.json"
SHARDS_DIR = "shards"
_HEAD_RE = re.compile(r"^(\d+)[._](\d+)$")
TAILS = ("top", "bottom")


@dataclass
class ScoresFolder:
    """A scores folder: its summary and shard files."""

    path: Path
    summary: dict
    shards: list[Path]
    num_rows: int
    columns: list[str]

    @property
    def corpus_path(self) -> str:
        """The scored corpus: `summary.json` `corpus`, relative paths taken from the folder first."""
        raw = str(self.summary["corpus"])
        p = Path(raw)
        if not p.is_absolute() and (self.path / p).exists():
            return str(self.path / p)
        return raw

    def column_for(self, head: str | None) -> str:
        """The score column: `score`, or `head_L_H` for a head written `L.H`."""
        if head is None:
            return "score"
        m = _HEAD_RE.match(head.strip())
        if not m:
            raise CurateError(f"--head {head!r}: expected LAYER.HEAD, e.g. 1.3")
        col = f"head_{int(m.group(1))}_{int(m.group(2))}"
        if col not in self.columns:
            heads = ", ".join(c[5:].replace("_", ".") for c in self.columns if c.startswith("head_"))
            raise CurateError(f"{self.path}: no scores for head {head} (heads scored: {heads or 'none'})")
        return col

    def iter_columns(self, columns: list[str], batch_rows: int = 65536) -> Iterator[dict[str, np.ndarray]]:
        """Stream the given columns shard by shard, in batches."""
        import pyarrow.parquet as pq

        for f in self.shards:
            pf = pq.ParquetFile(f)
            for batch in pf.iter_batches(batch_size=batch_rows, columns=columns):
                yield {c: batch.column(c).to_numpy(zero_copy_only=False) for c in columns}


def open_scores(path: str | Path) -> ScoresFolder:
    """Open a scores folder; anything missing or malformed is one CurateError line."""
    import pyarrow.parquet as pq

    folder = Path(path)
    if not folder.exists():
        raise CurateError(f"{folder}: scores folder not found")
    if not folder.is_dir():
        raise CurateError(f"{folder}: not a folder (expected a scores folder with {SUMMARY_FILE} and {SHARDS_DIR}/)")
    summary_path = folder / SUMMARY_FILE
    if not summary_path.is_file():
        raise CurateError(f"{folder}: no {SUMMARY_FILE} (not a scores folder, or scoring has not finished)")
    summary = read_json(summary_path, SUMMARY_FILE)
    if not isinstance(summary, dict) or "corpus" not in summary:
        raise CurateError(f"{summary_path}: missing the 'corpus' field")
    shards = sorted((folder / SHARDS_DIR).glob("*.parquet"))
    if not shards:
        raise CurateError(f"{folder}: no score shards ({SHARDS_DIR}/*.parquet)")
    num_rows = 0
    columns: list[str] | None = None
    for f in shards:
        try:
            pf = pq.ParquetFile(f)
        except Exception as e:  # pyarrow raises several types for corrupt files
            raise CurateError(f"{f}: not a readable Parquet file ({type(e).__name__})") from None
        names = pf.schema_arrow.names
        for need in ("row_id", "score"):
            if need not in names:
                raise CurateError(f"{f}: not a score shard (no {need!r} column)")
        columns = names if columns is None else [c for c in columns if c in names]
        num_rows += pf.metadata.num_rows
    if num_rows == 0:
        raise CurateError(f"{folder}: the score shards hold no rows")
    return ScoresFolder(folder, summary, shards, num_rows, columns or [])


@dataclass
class TopRows:
    """The k best rows by one column (`tail` top: highest first; bottom: lowest first), ties by row id."""

    row_ids: np.ndarray
    values: np.ndarray


def top_rows(scores: ScoresFolder, k: int, column: str = "score", tail: str = "top") -> TopRows:
    """Streaming top-k over the shards (holds at most k + one batch of rows)."""
    if tail not in TAILS:
        raise CurateError(f"tail {tail!r}: expected one of {', '.join(TAILS)}")
    sign = 1.0 if tail == "top" else -1.0
    best_ids = np.zeros(0, dtype=np.int64)
    best_vals = np.zeros(0, dtype=np.float64)
    for batch in scores.iter_columns(["row_id", column]):
        ids = np.concatenate([best_ids, batch["row_id"].astype(np.int64)])
        vals = np.concatenate([best_vals, sign * batch[column].astype(np.float64)])
        if len(ids) > k:
            order = np.lexsort((ids, -vals))[:k]
            ids, vals = ids[order], vals[order]
        best_ids, best_vals = ids, vals
    order = np.lexsort((best_ids, -best_vals))[:k]
    return TopRows(best_ids[order], sign * best_vals[order])


def tail_shares(scores: ScoresFolder, column: str = "score", tail: str = "top", fractions: tuple[float, ...] = (0.01, 0.10)) -> dict[str, float]:
    """Share of the total positive influence (negative for `bottom`) carried by the top 1% and 10% of rows."""
    sign = 1.0 if tail == "top" else -1.0
    total = 0.0
    for batch in scores.iter_columns([column]):
        v = sign * batch[column].astype(np.float64)
        total += float(v[v > 0].sum())
    out: dict[str, float] = {}
    ks = {f: parse_amount(f"{f * 100:g}%", scores.num_rows) for f in fractions}
    best = top_rows(scores, max(ks.values()), column, tail)
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

    best = top_rows(scores, k, column, tail)
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
