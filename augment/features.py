"""Numeric structure features of token rows: repetition statistics and hashed n-gram profiles.

Repetition features (per row of token ids, vectorised over a chunk of rows):
- share of positions that close a repeat of an earlier n-gram, for n in `orders` (2, 4, 8);
- distribution of the distance from each repeated `span_order`-gram to its nearest earlier
  occurrence, over log2-spaced bins [1,2), [2,4), ..., [1024,2048), [2048, inf);
- number of repeated spans (maximal runs of repeated `span_order`-grams copying from one
  constant distance), how many of them have distinct content, and the longest in tokens.
Structure vectors = repetition features + a seeded, signed hashed profile of token n-grams,
L2-normalised float32 (what the FAISS index stores). Optionally the model's mean-pooled hidden
states (`hidden_state_vectors`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from curate.errors import CurateError

DISTANCE_BINS = 12  # [1,2), [2,4), ..., [1024,2048), [2048, inf)

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_PRIME = np.uint64(0x100000001B3)


def _splitmix(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, element-wise on uint64 (wrapping arithmetic)."""
    z = x + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def ngram_hashes(rows: np.ndarray, orders: tuple[int, ...], seed: int = 0) -> dict[int, np.ndarray]:
    """64-bit hash of the n-gram starting at each position, for each n in `orders`: (rows, row_len - n + 1) uint64.

    One pass per token offset up to max(orders): the chain for n extends the chain for n - 1.
    """
    rows = np.asarray(rows)
    if rows.ndim != 2:
        raise CurateError(f"expected a 2-D array of token rows, got shape {rows.shape}")
    num_rows, row_len = rows.shape
    out: dict[int, np.ndarray] = {}
    if not orders:
        return out
    tokens = rows.astype(np.uint64, copy=False)
    with np.errstate(over="ignore"):
        chain = np.full((num_rows, row_len), _splitmix(np.array([seed], dtype=np.uint64))[0], dtype=np.uint64)
        for n in range(1, max(orders) + 1):
            width = row_len - n + 1
            if width <= 0:
                chain = chain[:, :0]
            else:
                chain = (chain[:, :width] ^ tokens[:, n - 1 : n - 1 + width]) * _PRIME
            if n in orders:
                out[n] = _splitmix(chain)
    return out


# rows per sort in `nearest_copy_distance`: keeps row index + position bits <= 24 of the 64
_SORT_ROWS = 4096


def nearest_copy_distance(hashes: np.ndarray) -> np.ndarray:
    """Distance from each n-gram (by start position) to its nearest earlier copy in the same row; 0 if none.

    `hashes` (rows, width) from `ngram_hashes`. Vectorised: one sort of packed (row, hash, position)
    words per block of rows; n-grams count as equal when 64 - 24 = 40+ bits of their hashes agree.
    """
    num_rows, width = hashes.shape
    out = np.zeros((num_rows, width), dtype=np.int64)
    if width == 0 or num_rows == 0:
        return out
    pos_bits = max(1, int(width - 1).bit_length())
    for a in range(0, num_rows, _SORT_ROWS):
        block = hashes[a : a + _SORT_ROWS]
        n = block.shape[0]
        row_bits = max(1, int(n - 1).bit_length())
        hash_bits = 64 - row_bits - pos_bits
        rows_part = np.arange(n, dtype=np.uint64)[:, None] << np.uint64(64 - row_bits)
        hash_part = (block >> np.uint64(64 - hash_bits)) << np.uint64(pos_bits)
        pos_part = np.arange(width, dtype=np.uint64)[None, :]
        words = np.sort((rows_part | hash_part | pos_part).ravel())
        key = words >> np.uint64(pos_bits)
        same = np.flatnonzero(key[1:] == key[:-1])
        mask = np.uint64((1 << pos_bits) - 1)
        later = (words[same + 1] & mask).astype(np.int64)
        earlier = (words[same] & mask).astype(np.int64)
        row = (words[same + 1] >> np.uint64(64 - row_bits)).astype(np.int64)
        out[a + row, later] = later - earlier
    return out


def previous_occurrence(rows: np.ndarray, n: int) -> np.ndarray:
    """`nearest_copy_distance` of the n-grams of `rows`: (rows, row_len - n + 1) int64, 0 where no earlier copy."""
    return nearest_copy_distance(ngram_hashes(rows, (n,))[n])


@dataclass
class RepetitionFeatures:
    """Repetition statistics of a chunk of rows."""

    orders: tuple[int, ...]
    span_order: int
    row_len: int
    repeat_share: np.ndarray  # (rows, len(orders)) share of n-grams that repeat an earlier one
    distance_hist: np.ndarray  # (rows, DISTANCE_BINS) distribution of repeat distances (sums to 1, or 0 without repeats)
    spans: np.ndarray  # (rows,) repeated spans (maximal runs copying from one distance)
    distinct_spans: np.ndarray  # (rows,) spans with distinct content (a third copy of a span adds nothing)
    longest: np.ndarray  # (rows,) longest repeated span in tokens (0 if none)

    def matrix(self) -> np.ndarray:
        """(rows, len(orders) + DISTANCE_BINS + 2) float32, every column within [0, 1]."""
        span_density = np.minimum(1.0, self.distinct_spans * 16.0 / max(self.row_len, 1))
        longest = self.longest / max(self.row_len, 1)
        return np.concatenate(
            [self.repeat_share, self.distance_hist, span_density[:, None], longest[:, None]], axis=1
        ).astype(np.float32)


def repetition_features(
    rows: np.ndarray, orders: tuple[int, ...] = (2, 4, 8), span_order: int = 4, hashes: dict[int, np.ndarray] | None = None
) -> RepetitionFeatures:
    """Repetition statistics of each row (see the module docstring); `hashes` may hold precomputed `ngram_hashes`."""
    rows = np.asarray(rows)
    if rows.ndim != 2:
        raise CurateError(f"expected a 2-D array of token rows, got shape {rows.shape}")
    num_rows, row_len = rows.shape
    needed = tuple(sorted(set(orders) | {span_order}))
    if hashes is None or any(n not in hashes for n in needed):
        hashes = ngram_hashes(rows, needed)
    dists = {n: nearest_copy_distance(hashes[n]) for n in needed}
    shares = np.zeros((num_rows, len(orders)), dtype=np.float32)
    for j, n in enumerate(orders):
        if dists[n].shape[1]:
            shares[:, j] = (dists[n] > 0).mean(axis=1)

    dist = dists[span_order]
    hist = np.zeros((num_rows, DISTANCE_BINS), dtype=np.float32)
    spans = np.zeros(num_rows, dtype=np.int64)
    distinct = np.zeros(num_rows, dtype=np.int64)
    longest = np.zeros(num_rows, dtype=np.int64)
    if dist.shape[1]:
        rep = dist > 0
        r_idx, c_idx = np.nonzero(rep)
        bins = np.minimum(np.floor(np.log2(dist[r_idx, c_idx])).astype(np.int64), DISTANCE_BINS - 1)
        np.add.at(hist, (r_idx, bins), 1.0)
        counts = rep.sum(axis=1)
        hist /= np.maximum(counts, 1)[:, None]
        # a span continues while consecutive n-grams repeat from the same distance
        cont = np.zeros_like(rep)
        cont[:, 1:] = rep[:, 1:] & rep[:, :-1] & (dist[:, 1:] == dist[:, :-1])
        starts = rep & ~cont
        spans = starts.sum(axis=1)
        run_id = np.cumsum(starts.ravel()) - 1
        lengths = np.bincount(run_id[rep.ravel()], minlength=int(starts.sum()))
        if len(lengths):
            start_rows, start_cols = np.nonzero(starts)
            np.maximum.at(longest, start_rows, lengths + span_order - 1)
            # distinct content: the span's first n-gram and its length
            key = np.stack([start_rows.astype(np.uint64), hashes[span_order][start_rows, start_cols], lengths.astype(np.uint64)], axis=1)
            uniq_rows = np.unique(key, axis=0)[:, 0].astype(np.int64)
            distinct = np.bincount(uniq_rows, minlength=num_rows)
    return RepetitionFeatures(tuple(orders), span_order, row_len, shares, hist, spans, distinct, longest)


def hashed_ngram_profile(
    rows: np.ndarray, orders: tuple[int, ...] = (1, 2, 3), dim: int = 256, seed: int = 0, hashes: dict[int, np.ndarray] | None = None
) -> np.ndarray:
    """Signed feature-hashed counts of token n-grams, log-scaled, L2-normalised: (rows, dim) float32."""
    rows = np.asarray(rows)
    num_rows = rows.shape[0]
    if hashes is None or any(n not in hashes for n in orders):
        hashes = ngram_hashes(rows, tuple(orders), seed=seed)
    acc = np.zeros(num_rows * dim, dtype=np.float64)
    for n in orders:
        h = hashes[n]
        if h.shape[1] == 0:
            continue
        if dim & (dim - 1) == 0:  # a power of two: mask instead of dividing
            bucket = ((h >> np.uint64(1)) & np.uint64(dim - 1)).astype(np.int64)
        else:
            bucket = ((h >> np.uint64(1)) % np.uint64(dim)).astype(np.int64)
        bucket += (np.arange(num_rows, dtype=np.int64) * dim)[:, None]
        flat = bucket.ravel()
        sign = 1.0 - 2.0 * (h & np.uint64(1)).ravel().astype(np.float64)
        acc += np.bincount(flat, weights=sign, minlength=num_rows * dim)
    prof = acc.reshape(num_rows, dim)
    prof = np.sign(prof) * np.log1p(np.abs(prof))
    return l2_normalize(prof)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (all-zero rows stay zero), float32."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norms > 0, norms, 1.0)).astype(np.float32)


@dataclass(frozen=True)
class StructureSpec:
    """How rows become structure vectors; recorded beside an index so queries use the same recipe."""

    repeat_orders: tuple[int, ...] = (2, 4, 8)
    span_order: int = 4
    ngram_orders: tuple[int, ...] = (1, 2, 3)
    ngram_dim: int = 256
    repeat_weight: float = 0.3  # share of the squared norm given to the repetition features
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0.0 <= self.repeat_weight <= 1.0:
            raise CurateError(f"repeat_weight must be within [0, 1], got {self.repeat_weight}")
        if self.ngram_dim < 1:
            raise CurateError(f"ngram_dim must be positive, got {self.ngram_dim}")

    @property
    def dim(self) -> int:
        return len(self.repeat_orders) + DISTANCE_BINS + 2 + self.ngram_dim

    def to_json(self) -> dict:
        out = asdict(self)
        out["repeat_orders"] = list(self.repeat_orders)
        out["ngram_orders"] = list(self.ngram_orders)
        return out

    @classmethod
    def from_json(cls, raw: dict) -> "StructureSpec":
        known = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw}
        for k in ("repeat_orders", "ngram_orders"):
            if k in known:
                known[k] = tuple(int(v) for v in known[k])
        return cls(**known)


def structure_vectors(rows: np.ndarray, spec: StructureSpec | None = None) -> np.ndarray:
    """Repetition features and the hashed n-gram profile, weighted and L2-normalised: (rows, spec.dim) float32."""
    spec = spec or StructureSpec()
    rows = np.asarray(rows)
    hashes = ngram_hashes(rows, tuple(sorted(set(spec.repeat_orders) | {spec.span_order} | set(spec.ngram_orders))), spec.seed)
    rep = l2_normalize(repetition_features(rows, spec.repeat_orders, spec.span_order, hashes).matrix())
    prof = hashed_ngram_profile(rows, spec.ngram_orders, spec.ngram_dim, spec.seed, hashes)
    vec = np.concatenate([np.sqrt(spec.repeat_weight) * rep, np.sqrt(1.0 - spec.repeat_weight) * prof], axis=1)
    return l2_normalize(vec)


def hidden_state_vectors(model, rows: np.ndarray, layer: int = -1, batch_rows: int = 32, device: str = "cpu") -> np.ndarray:
    """Mean-pooled hidden states of `model` (a transformers causal LM) at `layer`, L2-normalised: (rows, hidden) float32."""
    import torch

    rows = np.asarray(rows)
    vocab = int(model.get_input_embeddings().num_embeddings)
    if rows.size and (rows.min() < 0 or rows.max() >= vocab):
        raise CurateError(f"token ids [{rows.min()}, {rows.max()}] do not fit the model's vocabulary ({vocab})")
    out = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for a in range(0, len(rows), batch_rows):
                ids = torch.as_tensor(rows[a : a + batch_rows].astype(np.int64), device=device)
                hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[layer]
                out.append(hidden.float().mean(dim=1).cpu().numpy())
    finally:
        model.train(was_training)
    if not out:
        return np.zeros((0, int(model.config.hidden_size)), dtype=np.float32)
    return l2_normalize(np.concatenate(out))


def combine_vectors(structure: np.ndarray, hidden: np.ndarray, hidden_weight: float = 0.5) -> np.ndarray:
    """Concatenate structure vectors with hidden-state vectors (share `hidden_weight` of the squared norm)."""
    if structure.shape[0] != hidden.shape[0]:
        raise CurateError(f"{structure.shape[0]} structure vectors but {hidden.shape[0]} hidden-state vectors")
    if not 0.0 <= hidden_weight <= 1.0:
        raise CurateError(f"hidden_weight must be within [0, 1], got {hidden_weight}")
    both = np.concatenate([np.sqrt(1.0 - hidden_weight) * l2_normalize(structure), np.sqrt(hidden_weight) * l2_normalize(hidden)], axis=1)
    return l2_normalize(both)
