"""What kind of rows carry the influence: classes enriched in the top and the bottom tail of a scores
folder, against the window's base rate, before and after matching row size, and how heavy the tails are.

Classes are a label column of the corpus sidecar (`by`, e.g. `domain` or `source`) or, by default, the
structure tagger's (`augment.tags`). For each class and each tail (the k highest and the k lowest rows):

- share in the tail, share in the base (the window's rows, or a seeded sample of them), ratio = tail share /
  base share, and a 95% interval: the Wilson score interval of the tail share divided by the base share
  (the base is the whole window or a large sample, its own error is treated as negligible);
- the same against a size-matched base ("adjusted"): the rows are cut into `SIZE_BINS` quantile bins of a
  size measure over the base rows, and the expected tail share is the mean, over the tail's rows, of the
  class's base share in the row's bin (indirect standardisation); ratio = tail share / expected share, with
  the same Wilson interval. Size measures: `tokens` (tokens of the row's main document, end-of-text
  tokens excluded) always; `grad_norm` (the row's gradient norm on the ranked column's heads) where the score
  shards carry it (gradient methods). A class whose share only follows size comes out near 1 after the adjustment.
- `size_effect`: enriched in both tails (Wilson lower bound above 1 in the top and in the bottom tail) -
  larger rows get larger |scores| in either direction, a size effect rather than a builder or suppressor.
- by the magnitude-normalised score (`normalised`, gradient methods whose shards carry the gradient norms,
  `attribution.score_table`): the same raw enrichment (shares, ratios, Wilson intervals, both tails) over the
  tails of score / grad_norm, the score per unit of the row's gradient norm on the scored heads' blocks (a
  relative influence: it keeps the direction of the row's gradient and drops its length; for gradient-dot it is
  the cosine between the row's and the probe's gradients times the probe gradient's norm, one constant). With
  `--head`, that head's score over that head's norm (`grad_norm_L_H`). A row with a zero gradient scores 0.
- `magnitude`: enriched in both raw tails (`size_effect`) but not in both tails by the normalised score: the class
  sits in both raw tails because its rows' gradients are large, not because of their direction. None where the
  folder records no gradient norm (a statistic method, which has no gradient, or a folder scored before norms
  were recorded: re-score it for the normalised view).

The scores folder is read with `attribution.scores_folder` (shards streamed one at a time, reading only
the columns needed).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from curate.amounts import parse_amount
from curate.attribution.heads import HeadRef
from curate.attribution.score_table import GRAD_NORM_COLUMN, grad_norm_column
from curate.attribution.scores_folder import ScoresFolder, TopK, TopRows, open_checked_corpus, open_scores
from curate.augment.tags import LABELS, main_segment, tag_rows, vote_by_document
from curate.corpus import Corpus
from curate.errors import CurateError
from curate.labels import label_columns, label_names, read_labels, sidecar_schema
from curate.stats import wilson_interval
from curate.tokenize import load_tokenizer

TAILS = ("top", "bottom")
TAGGER = "tag"  # the name of the structure tagger's classes in a report
TAG_PER = ("document", "row")  # structure tags voted over each row's document (when the sidecar knows it), or per row
DOC_COLUMN = "doc_id"  # ingest's sidecar column: the document that supplies most of a row
SIZE_BINS = 10  # quantile bins of a size measure for the adjusted enrichment
NO_GRADIENT_NOTE = "normalised view: none (a statistic method: its scores have no gradient)"
RESCORE_NOTE = "normalised view: needs a re-score (this scores folder records no per-row gradient norm)"


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


@dataclass
class Adjusted:
    """A tail's enrichment against the base matched on one size measure."""

    measure: str  # `tokens` or `grad_norm`
    expected_share: float  # the class's share expected in the tail from the rows' sizes alone
    ratio: float | None  # tail share / expected share (None when nothing is expected)
    ci_low: float | None
    ci_high: float | None


@dataclass
class TailEnrichment:
    """One class in one tail."""

    count: int
    share: float
    ratio: float | None  # tail share / base share (None when the class is absent from the base)
    ci_low: float | None  # 95% Wilson interval of the tail share, divided by the base share
    ci_high: float | None
    adjusted: list[Adjusted] = field(default_factory=list)


@dataclass
class NormalisedEnrichment:
    """One class in the tails of the magnitude-normalised score (score / grad_norm): raw ratios, no size matching."""

    top: TailEnrichment
    bottom: TailEnrichment
    both_tails: bool  # enriched in both normalised tails (lower bound above 1 in each)


@dataclass
class ClassEnrichment:
    """One class: its base rate, and its enrichment in the top and in the bottom tail."""

    label: str
    base_count: int
    base_share: float
    top: TailEnrichment
    bottom: TailEnrichment
    size_effect: bool  # enriched in both tails (lower bound above 1 in each)
    normalised: NormalisedEnrichment | None = None  # None: no gradient norms recorded
    magnitude: bool | None = None  # both raw tails but not both normalised tails (None: no gradient norms)


def ratio_interval(count: int, k: int, reference: float) -> tuple[float | None, float | None, float | None]:
    """count/k divided by `reference`, and the 95% Wilson interval of count/k divided by it (None: no reference)."""
    if reference <= 0:
        return None, None, None
    lo, hi = wilson_interval(count, k)
    return (count / k) / reference, lo / reference, hi / reference


def size_bins(base_sizes: np.ndarray, bins: int = SIZE_BINS) -> np.ndarray:
    """Interior edges of `bins` quantile bins of the base rows' sizes (a row's bin: searchsorted right)."""
    return np.quantile(np.asarray(base_sizes, dtype=np.float64), np.arange(1, bins) / bins)


def expected_share(label: str, base_labels: list[str], base_sizes: np.ndarray, tail_sizes: np.ndarray, edges: np.ndarray) -> float:
    """The class's share expected in the tail from sizes alone: the mean over tail rows of its base share in
    the row's size bin (bins without base rows fall back to the overall base share)."""
    base_bin = np.searchsorted(edges, np.asarray(base_sizes, dtype=np.float64), side="right")
    tail_bin = np.searchsorted(edges, np.asarray(tail_sizes, dtype=np.float64), side="right")
    nb = len(edges) + 1
    hit = (np.asarray(base_labels, dtype=object) == label).astype(np.float64)
    rows = np.bincount(base_bin, minlength=nb).astype(np.float64)
    share = np.bincount(base_bin, weights=hit, minlength=nb)
    overall = float(hit.mean()) if len(hit) else 0.0
    per_bin = np.where(rows > 0, share / np.maximum(rows, 1.0), overall)
    return float(per_bin[tail_bin].mean()) if len(tail_bin) else 0.0


def tail_enrichment(label: str, tail_labels: list[str], base_labels: list[str],
                    tail_sizes: dict[str, np.ndarray] | None = None, base_sizes: dict[str, np.ndarray] | None = None,
                    edges: dict[str, np.ndarray] | None = None) -> TailEnrichment:
    """One class in one tail: share, ratio to the base share with its interval, and the size-adjusted ratios."""
    k, n = len(tail_labels), len(base_labels)
    count = int(np.count_nonzero(np.asarray(tail_labels, dtype=object) == label))
    base_share = int(np.count_nonzero(np.asarray(base_labels, dtype=object) == label)) / n
    ratio, lo, hi = ratio_interval(count, k, base_share)
    adjusted = []
    for measure, sizes in (tail_sizes or {}).items():
        assert base_sizes is not None
        cut = edges[measure] if edges else size_bins(base_sizes[measure])
        exp = expected_share(label, base_labels, base_sizes[measure], sizes, cut)
        adjusted.append(Adjusted(measure, exp, *ratio_interval(count, k, exp)))
    return TailEnrichment(count, count / k, ratio, lo, hi, adjusted)


def enrichment(tails: dict[str, list[str]], base_labels: list[str], classes: list[str] | None = None,
               tail_sizes: dict[str, dict[str, np.ndarray]] | None = None,
               base_sizes: dict[str, np.ndarray] | None = None) -> list[ClassEnrichment]:
    """Per class: base rate and enrichment in the `top` and `bottom` tails (labels of their rows), raw and,
    where sizes are given (per tail: measure -> sizes of its rows; base: measure -> sizes), size-adjusted.
    `classes`: the classes to report (default: every label seen, most common in the base first)."""
    if not base_labels or any(not t for t in tails.values()):
        raise CurateError("enrichment needs at least one row in each tail and one base row")
    if classes is None:
        seen = Counter(base_labels)
        for t in tails.values():
            seen.update({lab: 0 for lab in t})
        classes = [lab for lab, _ in sorted(seen.items(), key=lambda kv: (-kv[1], kv[0]))]
    edges = {m: size_bins(v) for m, v in (base_sizes or {}).items()}
    n = len(base_labels)
    out = []
    base_counts = Counter(base_labels)
    for label in classes:
        bc = base_counts[label]
        per_tail = {
            name: tail_enrichment(label, labels, base_labels, (tail_sizes or {}).get(name), base_sizes, edges)
            for name, labels in tails.items()
        }
        out.append(ClassEnrichment(label, bc, bc / n, per_tail["top"], per_tail["bottom"], in_both_tails(per_tail)))
    return out


def in_both_tails(per_tail: dict[str, TailEnrichment]) -> bool:
    """Over-represented in every tail: the Wilson lower bound of the ratio above 1 in each."""
    return all(t.ci_low is not None and t.ci_low > 1.0 for t in per_tail.values())


def add_normalised(classes: list[ClassEnrichment], tails: dict[str, list[str]], base_labels: list[str]) -> None:
    """Attach to each class its enrichment in the tails of the normalised score (labels of their rows) and the
    `magnitude` flag: over-represented in both raw tails, not in both normalised tails."""
    if any(not t for t in tails.values()):
        raise CurateError("enrichment needs at least one row in each tail and one base row")
    for c in classes:
        per_tail = {name: tail_enrichment(c.label, labels, base_labels) for name, labels in tails.items()}
        c.normalised = NormalisedEnrichment(per_tail["top"], per_tail["bottom"], in_both_tails(per_tail))
        c.magnitude = c.size_effect and not c.normalised.both_tails


def normalised_values(score: np.ndarray, norm: np.ndarray) -> np.ndarray:
    """score / gradient norm per row (0 where the norm is 0: such a row has no gradient, so its score is 0)."""
    score, norm = np.asarray(score, dtype=np.float64), np.asarray(norm, dtype=np.float64)
    return np.divide(score, norm, out=np.zeros_like(score), where=norm > 0)


def normalised_top_rows(scores: ScoresFolder, column: str, norm_column: str, k: int) -> dict[str, TopRows]:
    """Per tail, the k best rows by `column` / `norm_column` (`top_indices`' rule), both in one pass over the shards."""
    tops = {t: TopK(k, "normalised", t) for t in TAILS}
    for b in scores.iter_columns(["row_id", column, norm_column]):
        table = pa.table({"row_id": b["row_id"], "normalised": normalised_values(b[column], b[norm_column])})
        for top in tops.values():
            top.add(table)
    best = {t: top.result() for t, top in tops.items()}
    return {t: TopRows(b.column("row_id").to_numpy().astype(np.int64), b.column("normalised").to_numpy().astype(np.float64))
            for t, b in best.items()}


def norm_column_for(scores: ScoresFolder, column: str) -> tuple[str | None, str | None]:
    """(the gradient-norm column behind score column `column`, None) where the shards carry it, else (None, the
    note why not: a statistic method has no gradient; an older gradient-method folder needs a re-score)."""
    head = HeadRef.from_column(column)
    wanted = grad_norm_column(head)
    if wanted in scores.columns:
        return wanted, None
    has_heads = any(HeadRef.from_column(c) is not None for c in scores.columns)
    return None, RESCORE_NOTE if has_heads else NO_GRADIENT_NOTE


@dataclass
class ExplainReport:
    """Everything `curate explain` prints."""

    scores: str
    corpus: str
    circuit: str | None
    heads: list
    window: list | None
    column: str
    by: str  # `tag` (the structure tagger) or the sidecar label column
    tagged_per: str | None  # structure tags: "document" (voted over the document's rows) or "row"; None for a column
    tail: str  # the tail the table is ordered by
    num_rows: int
    top_k: int  # rows in each tail
    base_rows: int
    base_sampled: bool
    size_measures: list[str]
    classes: list[ClassEnrichment]
    normalised_by: str | None  # the normalised score (`column / grad_norm...`), None when no norms are recorded
    normalised_note: str | None  # why there is no normalised view (None when there is one)
    tail_share: dict[str, dict[str, float]]  # tail -> {"top_1%": share of the tail's influence, ...}
    top_row_ids: list[int] = field(default_factory=list)
    bottom_row_ids: list[int] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


def _tokenizer_for(corpus: Corpus):
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


def document_ids(corpus: Corpus) -> np.ndarray | None:
    """Each row's main document (the sidecar's `doc_id`), or None when the sidecar has none or every document is one
    row (nothing to vote over)."""
    schema = sidecar_schema(corpus)
    if schema is None or DOC_COLUMN not in schema.names:
        return None
    docs = np.asarray(read_labels(corpus, [DOC_COLUMN])[DOC_COLUMN].to_numpy(zero_copy_only=False), dtype=np.int64)
    return None if len(np.unique(docs)) == len(docs) else docs


def tag_rows_per_document(corpus: Corpus, row_ids: np.ndarray, docs: np.ndarray, tokenizer=None) -> list[str]:
    """Structure tags of the given rows, each its document's vote (`vote_by_document`) over every corpus row of that
    document, in the order given."""
    ids = np.asarray(row_ids, dtype=np.int64)
    members = np.flatnonzero(np.isin(docs, np.unique(docs[ids])))  # every row of those documents, in row order
    voted = vote_by_document(tag_corpus_rows(corpus, members, tokenizer), docs[members].tolist())
    label = dict(zip(docs[members].tolist(), voted))
    return [label[int(d)] for d in docs[ids]]


def row_tokens(corpus: Corpus, row_ids: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Tokens of each row's main document (end-of-text tokens excluded), in the order given."""
    eot = corpus.meta.eot_id if corpus.meta else None
    ids = np.asarray(row_ids, dtype=np.int64)
    out = np.empty(len(ids), dtype=np.int64)
    for a in range(0, len(ids), chunk):
        rows = corpus.take(ids[a : a + chunk])
        out[a : a + len(rows)] = [len(main_segment(r, eot)) for r in rows]
    return out


def check_by(corpus: Corpus, by: str | None) -> str:
    """The class source: `tag` when `by` is None, else a label column of the corpus sidecar (checked)."""
    if by is None or by == TAGGER:
        return TAGGER
    columns = label_columns(corpus)
    if by not in columns:
        have = ", ".join(columns) if columns else "none (no sidecar, or no label columns in it)"
        where = corpus.folder() if corpus.meta else corpus.path
        raise CurateError(f"{where}: no label column {by!r} in the row sidecar (label columns: {have})")
    return by


def _grad_norms(scores: ScoresFolder, wanted: list[np.ndarray], norm_column: str) -> list[np.ndarray]:
    """The gradient-norm column `norm_column` of each array of rows in `wanted` (the shards read once)."""
    all_ids, norms = [], []
    for b in scores.iter_columns(["row_id", norm_column]):
        all_ids.append(b["row_id"].astype(np.int64))
        norms.append(b[norm_column].astype(np.float64))
    id_arr, norm_arr = np.concatenate(all_ids), np.concatenate(norms)
    order = np.argsort(id_arr)
    id_arr, norm_arr = id_arr[order], norm_arr[order]
    return [norm_arr[np.searchsorted(id_arr, ids)] for ids in wanted]


def explain_scores(
    path: str | Path,
    top: str | int = "10%",
    head: str | None = None,
    tail: str = "top",
    corpus: str | Path | None = None,
    base_sample: int = 20_000,
    seed: int = 0,
    by: str | None = None,
    tag_per: str = "document",
) -> ExplainReport:
    """Enrichment of classes (a sidecar label column `by`, or the structure tags) in the top and bottom `top`
    rows of a scores folder, raw and size-adjusted, by the magnitude-normalised score where the folder records
    gradient norms, and the tails' weight."""
    scores = open_scores(path)
    if tail not in TAILS:
        raise CurateError(f"tail {tail!r}: expected one of {', '.join(TAILS)}")
    if base_sample < 1:
        raise CurateError(f"base sample {base_sample}: must be positive")
    if tag_per not in TAG_PER:
        raise CurateError(f"tag per {tag_per!r}: expected one of {', '.join(TAG_PER)}")
    column = scores.column_for(head)
    k = parse_amount(top, scores.num_rows, "top")
    corp = open_checked_corpus(scores, corpus)
    source = check_by(corp, by)

    best = {t: scores.top_rows(k, column, t) for t in TAILS}
    norm_column, norm_note = norm_column_for(scores, column)
    best_normalised = normalised_top_rows(scores, column, norm_column, k) if norm_column else {}
    all_ids = np.concatenate([b["row_id"].astype(np.int64) for b in scores.iter_columns(["row_id"])])
    sampled = len(all_ids) > base_sample
    base_ids = np.sort(np.random.default_rng(seed).choice(all_ids, size=base_sample, replace=False)) if sampled else np.sort(all_ids)
    if len(all_ids) and (all_ids.max() >= corp.num_rows):
        raise CurateError(f"{scores.path}: row id {int(all_ids.max())} is outside the corpus {corp.path} ({corp.num_rows} rows); give the corpus that was scored")

    # the rows to label: each tail, each normalised tail, then the base
    wanted = [best[t].row_ids for t in TAILS] + [best_normalised[t].row_ids for t in best_normalised] + [base_ids]
    tagged_per = None
    if source == TAGGER:
        tokenizer = _tokenizer_for(corp)
        docs = document_ids(corp) if tag_per == "document" else None
        tagged_per = "row" if docs is None else "document"
        if docs is None:
            labelled = [tag_corpus_rows(corp, w, tokenizer) for w in wanted]
        else:
            labels = tag_rows_per_document(corp, np.concatenate(wanted), docs, tokenizer)
            cuts = np.concatenate([[0], np.cumsum([len(w) for w in wanted])])
            labelled = [labels[cuts[i] : cuts[i + 1]] for i in range(len(wanted))]
        classes: list[str] | None = list(LABELS)
    else:
        names = np.array(label_names(read_labels(corp, [source])[source]), dtype=object)
        labelled = [list(names[w]) for w in wanted]
        classes = None
    tails = dict(zip(TAILS, labelled[: len(TAILS)]))
    normalised_tails = dict(zip(best_normalised, labelled[len(TAILS) : -1]))
    base_labels = labelled[-1]
    base_sizes = {"tokens": row_tokens(corp, base_ids)}
    tail_sizes = {t: {"tokens": row_tokens(corp, best[t].row_ids)} for t in TAILS}
    if norm_column is not None:
        base_norms, *tail_norms = _grad_norms(scores, [base_ids, *(best[t].row_ids for t in TAILS)], norm_column)
        base_sizes[GRAD_NORM_COLUMN] = base_norms
        for t, norms in zip(TAILS, tail_norms):
            tail_sizes[t][GRAD_NORM_COLUMN] = norms
    enriched = enrichment(tails, base_labels, classes, tail_sizes, base_sizes)
    if norm_column is not None:
        add_normalised(enriched, normalised_tails, base_labels)
    return ExplainReport(
        scores=str(scores.path),
        corpus=str(corp.path),
        circuit=scores.summary.get("circuit"),
        heads=list(scores.summary.get("heads") or []),
        window=scores.summary.get("window"),
        column=column,
        by=source,
        tagged_per=tagged_per,
        tail=tail,
        num_rows=scores.num_rows,
        top_k=k,
        base_rows=len(base_ids),
        base_sampled=sampled,
        size_measures=list(base_sizes),
        classes=enriched,
        normalised_by=f"{column} / {norm_column}" if norm_column else None,
        normalised_note=norm_note,
        tail_share={t: tail_shares(scores, column, t) for t in TAILS},
        top_row_ids=[int(i) for i in best["top"].row_ids[:20]],
        bottom_row_ids=[int(i) for i in best["bottom"].row_ids[:20]],
    )
