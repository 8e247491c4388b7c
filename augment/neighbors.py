"""Structural neighbours of scored rows, looked up in a persisted structure index (`curate neighbors`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from curate.amounts import parse_amount
from curate.attribution.scores_folder import open_checked_corpus, open_scores
from curate.augment.index import INDEX_SUBDIR, load_index
from curate.augment.tags import main_segment, tag_text
from curate.corpus import Corpus, same_corpus
from curate.errors import CurateError
from curate.tokenize import load_tokenizer


class _RowView:
    """Decodes rows of one corpus for display: tag and the first characters (newlines shown as \\n)."""

    def __init__(self, corpus: Corpus, chars: int) -> None:
        self.corpus = corpus
        self.chars = chars
        spec = corpus.tokenizer_spec()
        self.tokenizer = load_tokenizer(spec) if spec else None

    def describe(self, row_ids: np.ndarray) -> list[tuple[str, str]]:
        ids = np.asarray(row_ids, dtype=np.int64)
        if self.tokenizer is None:
            return [("-", "(no tokenizer recorded for this corpus)")] * len(ids)
        out = []
        for row in self.corpus.take(ids):
            tag = tag_text(self.tokenizer.decode(main_segment(row, self.tokenizer.eot_id)))
            text = self.tokenizer.decode(row)[: self.chars].replace("\r", "\\r").replace("\n", "\\n")
            out.append((tag, text))
        return out


def _same_tokenizer(a: Corpus, b: Corpus) -> bool | None:
    """Whether two corpora record the same tokenizer (None when either records none).

    Structure vectors hash token n-grams, so neighbours across different tokenizers only share
    their repetition features."""
    sa, sb = a.tokenizer_spec(), b.tokenizer_spec()
    if sa is None or sb is None:
        return None
    pa_, pb_ = Path(sa), Path(sb)
    if pa_.is_file() and pb_.is_file():
        return pa_.read_bytes() == pb_.read_bytes()
    return sa == sb


def _score_of(scores, row_id: int) -> float | None:
    for batch in scores.iter_columns(["row_id", "score"]):
        hit = np.flatnonzero(batch["row_id"] == row_id)
        if len(hit):
            return float(batch["score"][hit[0]])
    return None


def find_neighbors(
    scores_path: str | Path,
    row_id: int | None = None,
    top: str | int | None = None,
    k: int = 10,
    index: str | Path | None = None,
    chars: int = 80,
) -> dict:
    """Neighbours of one row of the scored corpus, or of its top rows by score, from the structure index."""
    if (row_id is None) == (top is None):
        raise CurateError("give either a row id or a top-rows amount (not both, not neither)")
    if k < 1:
        raise CurateError(f"k {k}: neighbours per row must be at least 1")
    scores = open_scores(scores_path)
    query_corpus = open_checked_corpus(scores)
    idx = load_index(Path(index) if index is not None else scores.path / INDEX_SUBDIR)
    if row_id is not None:
        if not 0 <= row_id < query_corpus.num_rows:
            raise CurateError(f"row id {row_id} is outside the scored corpus {query_corpus.path} (0..{query_corpus.num_rows - 1})")
        query_ids = np.array([row_id], dtype=np.int64)
        query_scores: list[float | None] = [_score_of(scores, row_id)]
    else:
        best = scores.top_rows(parse_amount(top, scores.num_rows, "top"), "score", "top")
        query_ids = best.row_ids
        query_scores = [float(v) for v in best.values]
    index_corpus = idx.corpus()
    same = same_corpus(index_corpus, query_corpus)
    sims, ids = idx.neighbors_of_rows(query_corpus.take(query_ids), k=k, exclude_ids=query_ids if same else None)
    query_view = _RowView(query_corpus, chars)
    index_view = query_view if same else _RowView(index_corpus, chars)
    queries = []
    for q, (qid, qscore) in enumerate(zip(query_ids, query_scores)):
        valid = ids[q] >= 0
        nb_ids = ids[q][valid]
        described = index_view.describe(nb_ids)
        (qtag, qtext), = query_view.describe(np.array([qid]))
        queries.append({
            "row_id": int(qid),
            "score": qscore,
            "tag": qtag,
            "text": qtext,
            "neighbors": [
                {"row_id": int(i), "similarity": float(s), "tag": t, "text": txt}
                for i, s, (t, txt) in zip(nb_ids, sims[q][valid], described)
            ],
        })
    return {
        "scores": str(scores.path),
        "index": str(idx.folder),
        "index_corpus": str(index_corpus.path),
        "same_corpus": same,
        "same_tokenizer": True if same else _same_tokenizer(query_corpus, index_corpus),
        "k": k,
        "queries": queries,
    }
