"""Per-row influence scores as a table, and its Parquet form (read by the Ray pipeline and `curate explain`).

Columns: `row_id` int64, `step` int64, `loss` float32 (mean token loss of the row; NaN where the method did not
run the model), one float64 column per target head named `head_{L}_{H}`, and `score` float64: the sum over the
circuit's heads, or, for a method without per-head scores (no head columns), the method's own score.
Positive = a gradient step on the row increases f_probe (the row builds the circuit).

A gradient method (mda, gradient-dot) also writes, after `score`, one float64 column per head named
`grad_norm_{L}_{H}`: the L2 norm of the gradient of the row's summed token loss restricted to that head's blocks
(the slices its score uses), and `grad_norm`: the norm over all the heads' blocks together (the root of the summed
squares of the per-head norms, the blocks being disjoint): the norm of the gradient behind `score`. Tables written
before these columns existed, and statistic methods' tables, have none (`grad_norms` None).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.attribution.heads import HeadRef
from curate.atomic import atomic_path
from curate.errors import CurateError

METADATA_KEY = b"curate.scores"
TAILS = ("top", "bottom")
GRAD_NORM_COLUMN = "grad_norm"  # the row's gradient norm over every scored head's blocks (the norm behind `score`)


def grad_norm_column(head: HeadRef | None) -> str:
    """The gradient-norm column of a head (`grad_norm_L_H`), or of the aggregate score (`grad_norm`) for None."""
    return GRAD_NORM_COLUMN if head is None else f"{GRAD_NORM_COLUMN}_{head.layer}_{head.head}"


def top_indices(values: np.ndarray, row_ids: np.ndarray, k: int | None = None, tail: str = "top") -> np.ndarray:
    """Indices of the k best entries, best first: the highest values (`tail` top) or the lowest (bottom); ties go
    to the lower row id, so the selection never depends on the order rows arrive in. k None: every entry, ranked.

    The one top-k rule of the package: score tables, scores folders (streaming), the scoring job's top files and
    mixes all select with it."""
    if tail not in TAILS:
        raise CurateError(f"tail {tail!r}: expected one of {', '.join(TAILS)}")
    values = np.asarray(values, dtype=np.float64)
    order = np.lexsort((np.asarray(row_ids, dtype=np.int64), -values if tail == "top" else values))
    return order if k is None else order[: max(0, int(k))]


@dataclass
class ScoreTable:
    """Scores of a set of rows: one column per head plus their sum."""

    row_id: np.ndarray  # int64 (n,)
    step: np.ndarray  # int64 (n,)
    loss: np.ndarray  # float32 (n,)
    head_scores: np.ndarray  # float64 (n, n_heads)
    heads: list[HeadRef]
    meta: dict = field(default_factory=dict)
    total: np.ndarray | None = None  # float64 (n,): the score of a method without heads (then `heads` is empty)
    grad_norms: np.ndarray | None = None  # float64 (n, n_heads): each row's gradient norm per head (gradient methods)

    def __post_init__(self) -> None:
        self.row_id = np.asarray(self.row_id, dtype=np.int64)
        self.step = np.asarray(self.step, dtype=np.int64)
        self.loss = np.asarray(self.loss, dtype=np.float32)
        self.head_scores = np.asarray(self.head_scores, dtype=np.float64).reshape(len(self.row_id), len(self.heads))
        if self.total is not None:
            if self.heads:
                raise CurateError("a score table has per-head scores or its own total, not both")
            self.total = np.asarray(self.total, dtype=np.float64).reshape(len(self.row_id))
        if self.grad_norms is not None:
            if not self.heads:
                raise CurateError("gradient norms come per head: a score table without heads has none")
            self.grad_norms = np.asarray(self.grad_norms, dtype=np.float64).reshape(len(self.row_id), len(self.heads))

    def __len__(self) -> int:
        return len(self.row_id)

    @property
    def score(self) -> np.ndarray:
        """Aggregate score: the sum over the heads (or `total`, for a method without heads)."""
        return self.total if self.total is not None else self.head_scores.sum(axis=1)

    @property
    def grad_norm(self) -> np.ndarray | None:
        """Each row's gradient norm over every head's blocks: the root of the summed squared per-head norms (None:
        no norms recorded)."""
        return None if self.grad_norms is None else np.sqrt(np.square(self.grad_norms).sum(axis=1))

    def column(self, head: HeadRef) -> np.ndarray:
        return self.head_scores[:, self.heads.index(head)]

    def top_k(self, k: int, column: str = "score") -> tuple[np.ndarray, np.ndarray]:
        """Row ids of the k highest (builders) and k lowest (suppressors) by `column`, best first; ties by row id."""
        values = self.score if column == "score" else self.column(HeadRef.from_column(column))  # type: ignore[arg-type]
        return self.row_id[top_indices(values, self.row_id, k, "top")], self.row_id[top_indices(values, self.row_id, k, "bottom")]

    @staticmethod
    def concat(tables: list["ScoreTable"]) -> "ScoreTable":
        if not tables:
            raise CurateError("no score tables to combine")
        heads = tables[0].heads
        if any(t.heads != heads for t in tables):
            raise CurateError("score tables cover different heads")
        return ScoreTable(
            np.concatenate([t.row_id for t in tables]),
            np.concatenate([t.step for t in tables]),
            np.concatenate([t.loss for t in tables]),
            np.concatenate([t.head_scores for t in tables]),
            heads,
            dict(tables[0].meta),
            np.concatenate([t.score for t in tables]) if not heads else None,
            np.concatenate([t.grad_norms for t in tables]) if all(t.grad_norms is not None for t in tables) else None,
        )

    def to_arrow(self) -> pa.Table:
        cols = {
            "row_id": pa.array(self.row_id, pa.int64()),
            "step": pa.array(self.step, pa.int64()),
            "loss": pa.array(self.loss, pa.float32()),
        }
        for i, h in enumerate(self.heads):
            cols[h.column] = pa.array(self.head_scores[:, i], pa.float64())
        cols["score"] = pa.array(self.score, pa.float64())
        if self.grad_norms is not None:
            for i, h in enumerate(self.heads):
                cols[grad_norm_column(h)] = pa.array(self.grad_norms[:, i], pa.float64())
            cols[GRAD_NORM_COLUMN] = pa.array(self.grad_norm, pa.float64())
        table = pa.table(cols)
        return table.replace_schema_metadata({METADATA_KEY: json.dumps(self.meta, sort_keys=True, default=str).encode()})

    def to_parquet(self, path: str | Path) -> Path:
        """Write atomically; the table's `meta` goes into the schema metadata."""
        path = Path(path)
        with atomic_path(path) as tmp:
            pq.write_table(self.to_arrow(), tmp)
        return path

    @classmethod
    def from_arrow(cls, table: pa.Table, source: str = "scores") -> "ScoreTable":
        names = table.column_names
        for need in ("row_id", "step", "loss", "score"):
            if need not in names:
                raise CurateError(f"{source}: not a score table (no {need!r} column)")
        heads = [h for h in map(HeadRef.from_column, names) if h is not None]
        raw = (table.schema.metadata or {}).get(METADATA_KEY)
        meta = json.loads(raw) if raw else {}
        scores = np.stack([table.column(h.column).to_numpy() for h in heads], axis=1) if heads else np.zeros((table.num_rows, 0))
        norm_cols = [grad_norm_column(h) for h in heads]
        norms = np.stack([table.column(c).to_numpy() for c in norm_cols], axis=1) if heads and all(c in names for c in norm_cols) else None
        return cls(
            table.column("row_id").to_numpy(),
            table.column("step").to_numpy(),
            table.column("loss").to_numpy(),
            scores,
            heads,
            meta,
            None if heads else table.column("score").to_numpy(),
            norms,
        )

    @classmethod
    def from_parquet(cls, path: str | Path) -> "ScoreTable":
        try:
            table = pq.read_table(path)
        except (OSError, pa.ArrowInvalid) as e:
            raise CurateError(f"{path}: not a readable score table ({type(e).__name__})") from None
        return cls.from_arrow(table, str(path))
