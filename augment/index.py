"""A FAISS index of row structure vectors: find the structural neighbours of any row, in any corpus.

Exact inner-product search (IndexFlatIP) up to `exact_max_rows`, an inverted-file index (IVFFlat,
k-means trained on a seeded sample) past it. Built by streaming the corpus in chunks; the exact
top-k of a seeded set of query rows is accumulated in the same pass, so recall@k of the
approximate index is measured at build time and `nprobe` is raised until it reaches the target.
The choice, its parameters and the recall are recorded in `index.json` beside `index.faiss`.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from curate.augment.features import StructureSpec, structure_vectors
from curate.atomic import atomic_dir, write_json
from curate.outputs import INDEX, check_output_folder
from curate.corpus import Corpus, open_corpus, training_rows
from curate.errors import CurateError

INDEX_FILE = "index.faiss"
META_FILE = "index.json"
INDEX_SUBDIR = "index"  # where `curate index` puts a scores folder's structure index
KINDS = ("auto", "flat", "ivf")


def _faiss():
    import faiss

    return faiss


@dataclass(frozen=True)
class IndexParams:
    """How the index is chosen and tuned (defaults reach recall@10 >= 0.9)."""

    kind: str = "auto"  # auto | flat | ivf
    exact_max_rows: int = 200_000  # auto: exact search up to this many rows
    nlist: int | None = None  # IVF lists (default: 4 * sqrt(rows), within [8, 65536])
    nprobe: int | None = None  # IVF lists probed (default: tuned from nlist / 64 up to the target recall)
    target_recall: float = 0.9
    recall_queries: int = 200  # seeded query rows for recall@k
    k: int = 10
    train_rows: int | None = None  # k-means sample (default: min(rows, max(64 * nlist, 10,000)))
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise CurateError(f"index kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not 0.0 < self.target_recall <= 1.0:
            raise CurateError(f"target recall must be within (0, 1], got {self.target_recall}")
        if self.k < 1 or self.recall_queries < 1:
            raise CurateError("k and recall_queries must be positive")
        for name in ("nlist", "nprobe", "train_rows"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise CurateError(f"{name} must be positive, got {v}")


def default_nlist(num_rows: int) -> int:
    """4 * sqrt(rows) lists, at most 65,536 and at most rows / 39 (FAISS wants 39 training points per list)."""
    return int(max(1, min(65536, round(4 * math.sqrt(num_rows)), num_rows // 39)))


def recall_from_results(approx_ids: np.ndarray, approx_scores: np.ndarray, exact_ids: np.ndarray, exact_scores: np.ndarray, k: int = 10) -> float:
    """Mean share of the exact top-k found by the approximate search; a tie with the k-th exact score counts as found."""
    approx_ids, exact_ids = np.asarray(approx_ids)[:, :k], np.asarray(exact_ids)[:, :k]
    approx_scores, exact_scores = np.asarray(approx_scores)[:, :k], np.asarray(exact_scores)[:, :k]
    if len(exact_ids) == 0:
        raise CurateError("recall needs at least one query")
    found = 0
    total = 0
    for a_ids, a_sc, e_ids, e_sc in zip(approx_ids, approx_scores, exact_ids, exact_scores):
        valid = e_ids >= 0
        want = int(valid.sum())
        if want == 0:
            continue
        kth = float(e_sc[valid][-1])
        hits = {int(i) for i in a_ids[(a_ids >= 0) & np.isin(a_ids, e_ids[valid])]}
        ties = int(((a_ids >= 0) & ~np.isin(a_ids, e_ids[valid]) & (a_sc >= kth - 1e-5)).sum())
        found += min(want, len(hits) + ties)
        total += want
    return found / total if total else 1.0


def recall_at_k(approx, exact, queries: np.ndarray, k: int = 10) -> float:
    """recall@k of index `approx` against index `exact` (anything with FAISS `search`) on `queries`."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    a_scores, a_ids = approx.search(queries, k)
    e_scores, e_ids = exact.search(queries, k)
    return recall_from_results(a_ids, a_scores, e_ids, e_scores, k)


class _ExactTopK:
    """Running exact top-k (inner product) of a fixed query set over streamed chunks of vectors."""

    def __init__(self, queries: np.ndarray, k: int) -> None:
        self.queries = queries
        self.k = k
        self.scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
        self.ids = np.zeros((len(queries), 0), dtype=np.int64)

    def add(self, first_id: int, vectors: np.ndarray) -> None:
        sims = self.queries @ vectors.T
        ids = np.broadcast_to(np.arange(first_id, first_id + len(vectors), dtype=np.int64), sims.shape)
        if sims.shape[1] > self.k:
            # the chunk's own top k first (ties at the cut-off kept whole, so the merge stays exact)
            kth = -np.partition(-sims, self.k - 1, axis=1)[:, self.k - 1 : self.k]
            keep = sims >= kth
            width = int(keep.sum(axis=1).max())
            order = np.argsort(~keep, axis=1, kind="stable")[:, :width]
            sims = np.take_along_axis(sims, order, axis=1)
            ids = np.take_along_axis(ids, order, axis=1)
        scores = np.concatenate([self.scores, sims], axis=1)
        all_ids = np.concatenate([self.ids, ids], axis=1)
        # best first, ties by lower id (deterministic)
        order = np.lexsort((all_ids, -scores), axis=1)[:, : self.k]
        self.scores = np.take_along_axis(scores, order, axis=1)
        self.ids = np.take_along_axis(all_ids, order, axis=1)


@dataclass
class IndexInfo:
    """What `index.json` records."""

    kind: str
    dim: int
    num_rows: int
    row_start: int
    corpus: str
    corpus_format: str
    row_len: int
    spec: dict
    nlist: int | None
    nprobe: int | None
    train_rows: int | None
    recall_k: int
    recall: float
    recall_queries: int
    recall_curve: dict  # nprobe -> recall (IVF), or {} for exact
    seed: int
    build_seconds: float
    faiss_version: str
    metric: str = "inner_product"

    def to_json(self) -> dict:
        return asdict(self)


def pool_rows(corpus: Corpus, rows: tuple[int, int] | None = None) -> tuple[int, int]:
    """The rows [start, stop) an index pool holds: `rows`, by default every row training may read
    (`training_rows`); never a held-out row, so no neighbour source or mix can take one."""
    limit = training_rows(corpus)
    start, stop = rows if rows is not None else (0, limit)
    if not (0 <= start < stop <= corpus.num_rows):
        raise CurateError(f"{corpus.path}: row range [{start}, {stop}) is empty or outside the corpus (0..{corpus.num_rows})")
    if stop > limit:
        raise CurateError(f"{corpus.path}: row range [{start}, {stop}) reaches the held-out rows (from row {limit}); "
                          "an index pool never holds held-out rows")
    return start, stop


def build_index(
    corpus: str | Path | Corpus,
    out_dir: str | Path,
    spec: StructureSpec | None = None,
    params: IndexParams | None = None,
    rows: tuple[int, int] | None = None,
    chunk_rows: int = 4096,
    progress: Callable[[int, int], None] | None = None,
) -> "StructureIndex":
    """Index the structure vectors of a corpus's rows [start, stop) into `out_dir` (atomically).

    Returns the built index (in memory, searchable) with its `index.json` record as `.info`.
    """
    faiss = _faiss()
    spec = spec or StructureSpec()
    params = params or IndexParams()
    if isinstance(corpus, Corpus):  # a corpus folder (corpus.json) is recorded as the folder, keeping its metadata
        source = corpus.folder() if corpus.meta is not None else Path(corpus.path)
    else:
        source = Path(corpus)
        corpus = open_corpus(corpus)
    check_output_folder(out_dir, INDEX, [source, *corpus.files])
    start, stop = pool_rows(corpus, rows)
    n = stop - start
    t0 = time.perf_counter()

    def vectors(r: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(structure_vectors(r, spec), dtype=np.float32)

    kind = params.kind if params.kind != "auto" else ("flat" if n <= params.exact_max_rows else "ivf")
    rng = np.random.default_rng(params.seed)
    n_queries = min(params.recall_queries, n)
    query_ids = np.sort(rng.choice(n, size=n_queries, replace=False)) + start
    queries = vectors(corpus.take(query_ids))
    k_search = min(params.k + 1, n)  # +1: the query row itself is dropped

    nlist = nprobe = train_rows = None
    if kind == "flat":
        index = faiss.IndexFlatIP(spec.dim)
    else:
        nlist = params.nlist or default_nlist(n)
        if nlist > n:
            raise CurateError(f"IVF index: nlist {nlist} is larger than the {n} rows to index; use a flat index or a smaller nlist")
        train_rows = min(n, params.train_rows or max(64 * nlist, 10_000))
        train_ids = np.sort(rng.choice(n, size=train_rows, replace=False)) + start
        quantizer = faiss.IndexFlatIP(spec.dim)
        index = faiss.IndexIVFFlat(quantizer, spec.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = int(params.seed)
        index.train(vectors(corpus.take(train_ids)))

    exact = _ExactTopK(queries, k_search) if kind == "ivf" else None
    done = 0
    for first, chunk in corpus.iter_chunks(start, stop, chunk_rows=chunk_rows):
        v = vectors(chunk)
        index.add(v)
        if exact is not None:
            exact.add(first - start, v)
        done += len(chunk)
        if progress:
            progress(done, n)

    local_queries = query_ids - start
    curve: dict[str, float] = {}
    if kind == "flat":
        recall = 1.0
    else:
        assert exact is not None
        e_ids, e_scores = _drop_self(exact.ids, exact.scores, local_queries, params.k)
        candidates = [params.nprobe] if params.nprobe else _nprobe_ladder(nlist)
        recall = 0.0
        for probe in candidates:
            index.nprobe = int(min(probe, nlist))
            a_scores, a_ids = index.search(queries, k_search)
            a_ids, a_scores = _drop_self(a_ids, a_scores, local_queries, params.k)
            recall = recall_from_results(a_ids, a_scores, e_ids, e_scores, params.k)
            curve[str(index.nprobe)] = round(recall, 4)
            nprobe = int(index.nprobe)
            if recall >= params.target_recall:
                break

    info = IndexInfo(
        kind=kind,
        dim=spec.dim,
        num_rows=n,
        row_start=start,
        corpus=str(source.resolve()),
        corpus_format=corpus.format,
        row_len=corpus.row_len,
        spec=spec.to_json(),
        nlist=nlist,
        nprobe=nprobe,
        train_rows=train_rows,
        recall_k=params.k,
        recall=float(recall),
        recall_queries=n_queries,
        recall_curve=curve,
        seed=params.seed,
        build_seconds=round(time.perf_counter() - t0, 3),
        faiss_version=str(faiss.__version__),
    )
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        faiss.write_index(index, str(tmp / INDEX_FILE))
        write_json(tmp / META_FILE, info.to_json())
    return StructureIndex(out_dir, index, json.loads(json.dumps(info.to_json())))


def _nprobe_ladder(nlist: int) -> list[int]:
    """nprobe values tried in order: nlist/64 (at least 1), doubling up to nlist."""
    probe = max(1, nlist // 64)
    out = []
    while probe < nlist:
        out.append(probe)
        probe *= 2
    out.append(nlist)
    return out


def _drop_self(ids: np.ndarray, scores: np.ndarray, self_ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Remove each query's own id from its result list and keep k entries (padded with -1)."""
    out_ids = np.full((len(ids), k), -1, dtype=np.int64)
    out_scores = np.full((len(ids), k), -np.inf, dtype=np.float32)
    for q in range(len(ids)):
        keep = ids[q] != self_ids[q]
        i, s = ids[q][keep][:k], scores[q][keep][:k]
        out_ids[q, : len(i)] = i
        out_scores[q, : len(s)] = s
    return out_ids, out_scores


class StructureIndex:
    """A persisted index: FAISS index + its `index.json`; search by vectors or by rows of any corpus."""

    def __init__(self, folder: Path, index, info: dict) -> None:
        self.folder = folder
        self.index = index
        self.info = info
        self.spec = StructureSpec.from_json(info["spec"])
        if info.get("nprobe") and hasattr(index, "nprobe"):
            index.nprobe = int(info["nprobe"])

    @property
    def row_start(self) -> int:
        return int(self.info.get("row_start", 0))

    def corpus(self) -> Corpus:
        return open_corpus(self.info["corpus"])

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows)
        return np.ascontiguousarray(structure_vectors(rows, self.spec), dtype=np.float32)

    def search(self, vectors: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, row ids of the indexed corpus), best first; -1 ids where fewer than k exist."""
        if k < 1:
            raise CurateError(f"k must be positive, got {k}")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.index.d:
            raise CurateError(f"{self.folder}: query vectors have shape {vectors.shape}, the index holds dimension {self.index.d}")
        scores, ids = self.index.search(vectors, k)
        ids = np.where(ids >= 0, ids + self.row_start, -1)
        return scores, ids

    def neighbors_of_rows(self, rows: np.ndarray, k: int = 10, exclude_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Neighbours of token rows (from any corpus); `exclude_ids[i]` (e.g. the query's own row id) is left out."""
        rows = np.asarray(rows)
        if rows.ndim != 2:
            raise CurateError(f"expected a 2-D array of token rows, got shape {rows.shape}")
        extra = 1 if exclude_ids is not None else 0
        scores, ids = self.search(self.vectors(rows), k + extra)
        if exclude_ids is None:
            return scores[:, :k], ids[:, :k]
        out_ids, out_scores = _drop_self(ids, scores, np.asarray(exclude_ids, dtype=np.int64), k)
        return out_scores, out_ids


def load_index(folder: str | Path) -> StructureIndex:
    """Open an index folder written by `build_index`; a missing or bad folder is one CurateError line."""
    faiss = _faiss()
    folder = Path(folder)
    meta_path, index_path = folder / META_FILE, folder / INDEX_FILE
    if not meta_path.is_file() or not index_path.is_file():
        raise CurateError(f"{folder}: no structure index here (expected {META_FILE} and {INDEX_FILE}; build one with `curate index`)")
    try:
        info = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise CurateError(f"{meta_path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    try:
        index = faiss.read_index(str(index_path))
    except RuntimeError as e:
        raise CurateError(f"{index_path}: not a readable FAISS index ({str(e).splitlines()[0][:120]})") from None
    if index.d != int(info.get("dim", -1)):
        raise CurateError(f"{folder}: index dimension {index.d} does not match {META_FILE} ({info.get('dim')})")
    if Path(str(info.get("corpus"))).exists():  # an index built before held-out rows were left out is refused
        corpus = open_corpus(info["corpus"])
        stop = int(info.get("row_start", 0)) + int(info.get("num_rows", 0))
        if stop > training_rows(corpus):
            raise CurateError(f"{folder}: indexes rows up to {stop} of {info['corpus']}, held-out rows (from row "
                              f"{training_rows(corpus)}) included; rebuild it with `curate index`")
    return StructureIndex(folder, index, info)
