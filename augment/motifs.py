"""Structural motifs of influential rows: the repeated spans, their distances, the template that carries
them, and the slots that hold fresh content.

A row's tokens split into TEMPLATE tokens (markup, punctuation, whitespace, keywords, LaTeX command and
tag names, keys before `:`/`=`) and CONTENT tokens (identifiers, words, numbers). The repeated spans are
maximal runs of `span_order`-grams copying an earlier occurrence from one constant distance (the same
rule as `augment.features.repetition_features`). `augment.synth` renames the content tokens consistently
inside a row (each distinct content token gets one fresh token of the same shape), so every repeat keeps
its position and distance while the identifiers and values are new.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from curate.augment.features import DISTANCE_BINS, previous_occurrence
from curate.augment.tags import _CODE_KEYWORDS, _LATEX_KNOWN, tag_rows
from curate.errors import CurateError
from curate.tokenize import EOT_TOKEN, TextTokenizer

SPAN_ORDER = 4  # n-gram order that detects a copy
MIN_SPAN = 8  # shortest repeated span (tokens) that counts as a long-range motif
KEYWORDS = frozenset(_CODE_KEYWORDS) | frozenset(_LATEX_KNOWN)
_NAME_MARKERS = ("\\", "<", "</", "&", "<?", "<!")  # the word after one of these is a command / tag / entity name
_KEY_FOLLOW = re.compile(r"^[\"']?[:=]")  # the word before `:` / `=` / `":` is a key or attribute name
_SHAPES = ("digit", "lower", "title", "upper", "mixed")


@dataclass(frozen=True)
class RepeatSpan:
    """A repeated span: tokens [start, start + length) copy tokens [start - distance, ...)."""

    start: int
    length: int
    distance: int

    def to_json(self) -> dict:
        return {"start": self.start, "length": self.length, "distance": self.distance}


def repeat_spans(row: np.ndarray, min_len: int = MIN_SPAN, order: int = SPAN_ORDER) -> list[RepeatSpan]:
    """Maximal spans of `row` that copy an earlier stretch of it from one constant distance, at least `min_len` long."""
    row = np.asarray(row)
    if row.ndim != 1:
        raise CurateError(f"expected one row of token ids, got shape {row.shape}")
    if len(row) < order:
        return []
    dist = previous_occurrence(row[None, :], order)[0]
    rep = dist > 0
    cont = np.zeros_like(rep)
    cont[1:] = rep[1:] & rep[:-1] & (dist[1:] == dist[:-1])
    starts = np.flatnonzero(rep & ~cont)
    if len(starts) == 0:
        return []
    run_id = np.cumsum(rep & ~cont) - 1
    lengths = np.bincount(run_id[rep], minlength=len(starts)) + order - 1
    out = []
    for s, n in zip(starts.tolist(), lengths.tolist()):
        if n >= min_len:
            out.append(RepeatSpan(int(s), int(n), int(dist[s])))
    return out


def distance_histogram(spans: list[RepeatSpan]) -> list[int]:
    """Token-weighted counts of span distances in log2 bins [1,2), [2,4), ..., [2048, inf) (as in `augment.features`)."""
    hist = [0] * DISTANCE_BINS
    for sp in spans:
        hist[min(int(np.log2(sp.distance)), DISTANCE_BINS - 1)] += sp.length
    return hist


# ---- the tokenizer's vocabulary, split into template and content classes -------------------------
@dataclass
class VocabClasses:
    """Per token id: its content class (-1: a template token) and the ids of each class (the fresh-token pools)."""

    klass: np.ndarray  # int32 (vocab,)
    pools: list[np.ndarray]
    names: list[str]
    marker_end: np.ndarray  # bool (vocab,): the token ends with a name marker (\\ < </ &)
    key_follow: np.ndarray  # bool (vocab,): the token starts with `:` / `=` / `":` (the word before it is a key)
    quote: np.ndarray  # bool (vocab,): the token is a lone quote (a key may follow as `"` + `:`)
    lead_space: np.ndarray  # bool (vocab,)
    text: list[str]  # decoded text of each token


def _shape(core: str) -> str:
    """digit, lower, title (Capitalised), upper or mixed (letters with digits, camelCase)."""
    if core.isdigit():
        return "digit"
    letters = core.replace("_", "")
    if not letters.isalpha():
        return "mixed"
    if letters.islower():
        return "lower"
    rest = core[1:].replace("_", "")
    if core[0].isupper() and (rest == "" or rest.islower()):
        return "title"
    return "upper" if letters.isupper() else "mixed"


def vocab_classes(tokenizer: TextTokenizer) -> VocabClasses:
    """Classify every token of the vocabulary: content (ASCII word pieces / digits, by shape and leading space) or template."""
    v = tokenizer.vocab_size
    special = {int(tokenizer.eot_id)}
    inner = getattr(tokenizer.tok, "get_added_tokens_decoder", None)
    if inner is not None:
        special |= {int(i) for i in inner()}
    texts = [tokenizer.decode([i]) if i not in special else EOT_TOKEN for i in range(v)]
    names = [f"{'sp' if lead else 'nosp'}-{shape}" for lead in (False, True) for shape in _SHAPES]
    klass = np.full(v, -1, dtype=np.int32)
    lead_space = np.zeros(v, dtype=bool)
    marker_end = np.zeros(v, dtype=bool)
    key_follow = np.zeros(v, dtype=bool)
    quote = np.zeros(v, dtype=bool)
    for i, s in enumerate(texts):
        if i in special:
            continue
        lead = s.startswith(" ")
        lead_space[i] = lead
        core = s[1:] if lead else s
        marker_end[i] = s.endswith(_NAME_MARKERS)
        key_follow[i] = bool(_KEY_FOLLOW.match(s))
        quote[i] = s in ('"', "'")
        if core and core.isascii() and (core.replace("_", "").isalnum()) and core.replace("_", ""):
            klass[i] = names.index(f"{'sp' if lead else 'nosp'}-{_shape(core)}")
    pools = [np.flatnonzero(klass == c).astype(np.int64) for c in range(len(names))]
    return VocabClasses(klass, pools, names, marker_end, key_follow, quote, lead_space, texts)


def template_token_ids(row: np.ndarray, vc: VocabClasses) -> np.ndarray:
    """Content-class token ids that act as template in this row: keywords, names after \\ < </ &, keys before : or =.

    A word (a content token plus the content tokens glued to it without a space) is template if any
    occurrence of it is; the decision is per token id, so every occurrence of a token is treated alike.
    """
    row = np.asarray(row, dtype=np.int64)
    n = len(row)
    content = vc.klass[row] >= 0
    if not content.any():
        return np.zeros(0, dtype=np.int64)
    starts = content & (vc.lead_space[row] | ~np.concatenate([[False], content[:-1]]))
    word_of = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    ends = np.flatnonzero(content & ~np.concatenate([content[1:] & ~starts[1:], [False]]))  # last token of each word
    template_word = np.zeros(len(first), dtype=bool)
    # a name marker right before the word
    prev = first - 1
    has_prev = prev >= 0
    template_word[has_prev] |= vc.marker_end[row[prev[has_prev]]]
    # a key: the word is followed by : / = (possibly after a lone quote)
    nxt = ends + 1
    ok = nxt < n
    follow = np.zeros(len(first), dtype=bool)
    follow[ok] = vc.key_follow[row[nxt[ok]]]
    ok2 = ok & (nxt + 1 < n)
    q = np.zeros(len(first), dtype=bool)
    q[ok2] = vc.quote[row[nxt[ok2]]] & vc.key_follow[row[nxt[ok2] + 1]]
    template_word |= follow | q
    # keywords (whole words)
    for w, (a, b) in enumerate(zip(first.tolist(), ends.tolist())):
        if template_word[w]:
            continue
        text = "".join(vc.text[t] for t in row[a : b + 1].tolist()).strip()
        if text in KEYWORDS:
            template_word[w] = True
    in_template = content & template_word[np.maximum(word_of, 0)]
    return np.unique(row[in_template])


def content_mask(row: np.ndarray, vc: VocabClasses) -> np.ndarray:
    """Positions of `row` that hold fresh-able content (content-class tokens that are not template in this row)."""
    row = np.asarray(row, dtype=np.int64)
    return (vc.klass[row] >= 0) & ~np.isin(row, template_token_ids(row, vc))


# ---- motifs ---------------------------------------------------------------------------------------
@dataclass
class Motif:
    """One influential row's structure: its class, its long repeats and which positions hold content."""

    row_id: int
    rank: int
    score: float
    label: str
    tokens: np.ndarray  # int64 (row_len,)
    content: np.ndarray  # bool (row_len,)
    spans: list[RepeatSpan] = field(default_factory=list)

    @property
    def content_share(self) -> float:
        return float(self.content.mean()) if len(self.content) else 0.0

    def summary(self) -> dict:
        return {
            "row_id": self.row_id,
            "rank": self.rank,
            "score": self.score,
            "label": self.label,
            "content_share": round(self.content_share, 4),
            "spans": [s.to_json() for s in self.spans],
        }


def mine_motifs(
    rows: np.ndarray,
    row_ids: np.ndarray,
    scores: np.ndarray,
    tokenizer: TextTokenizer,
    vc: VocabClasses | None = None,
    min_span: int = MIN_SPAN,
) -> list[Motif]:
    """The motif of each row (rows best first: rank = position in the input)."""
    rows = np.asarray(rows, dtype=np.int64)
    if rows.ndim != 2 or len(rows) == 0:
        raise CurateError(f"motif mining needs a non-empty 2-D array of rows, got shape {rows.shape}")
    if rows.max() >= tokenizer.vocab_size:
        raise CurateError(
            f"token id {int(rows.max())} is outside the tokenizer's vocabulary ({tokenizer.vocab_size}); wrong tokenizer for this corpus?"
        )
    vc = vc or vocab_classes(tokenizer)
    labels = tag_rows(rows, tokenizer)
    out = []
    for rank, (row, rid, sc, label) in enumerate(zip(rows, np.asarray(row_ids), np.asarray(scores, dtype=np.float64), labels)):
        out.append(Motif(int(rid), rank, float(sc), label, row.copy(), content_mask(row, vc), repeat_spans(row, min_span)))
    return out


def motif_summary(motifs: list[Motif]) -> dict:
    """Class counts, span statistics and the distance histogram of a set of motifs."""
    labels: dict[str, int] = {}
    for m in motifs:
        labels[m.label] = labels.get(m.label, 0) + 1
    spans = [s for m in motifs for s in m.spans]
    return {
        "motifs": len(motifs),
        "labels": dict(sorted(labels.items())),
        "rows_with_spans": sum(1 for m in motifs if m.spans),
        "spans": len(spans),
        "mean_span_length": float(np.mean([s.length for s in spans])) if spans else 0.0,
        "distance_hist": distance_histogram(spans),
        "mean_content_share": float(np.mean([m.content_share for m in motifs])) if motifs else 0.0,
    }
