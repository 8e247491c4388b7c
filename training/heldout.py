"""The held-out rows a run measures its held-out loss and ICL score on: the corpus's `heldout_start` rows, a
held-out corpus, or the training corpus's unused tail, never rows the run trains on."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from curate.corpus import Corpus, check_token_ids, open_corpus
from curate.errors import CurateError
from curate.training.plan import RowStream
from curate.training.spec import TrainSpec


def heldout_rows(spec: TrainSpec, train_corpus: Corpus | None, base: Corpus, stream: RowStream,
                 vocab_size: int) -> tuple[np.ndarray | None, str]:
    """Held-out rows for the held-out loss and the ICL score (checked against the vocabulary), and where they came from."""
    if spec.heldout_rows <= 0:
        return None, "disabled (heldout_rows = 0)"
    src = open_corpus(spec.heldout) if spec.heldout else (train_corpus or base)
    n = src.num_rows
    start = None
    if src.meta is not None and src.meta.extra.get("heldout_start") is not None:
        start = int(src.meta.extra["heldout_start"])
        if not 0 <= start < n:
            raise CurateError(f"{src.path}: heldout_start {start} is outside the corpus ({n} rows)")
        if Path(src.path).resolve() == Path(base.path).resolve():
            used = stream.row[stream.source == 0]
            if len(used) and int(used.max()) >= start:
                raise CurateError(
                    f"{base.path}: training would read held-out rows (the stream reaches row {int(used.max())}, "
                    f"held-out rows start at {start}); train fewer steps or use a smaller batch"
                )
        rows = np.arange(start, min(n, start + spec.heldout_rows))
        where = f"{src.path} rows [{rows[0]}, {rows[-1] + 1}) (heldout_start)"
    elif spec.heldout:
        rows = np.arange(0, min(n, spec.heldout_rows))
        where = f"{src.path} rows [0, {len(rows)})"
    else:
        if Path(src.path).resolve() == Path(base.path).resolve():
            used = stream.row[stream.source == 0]
            first_free = int(used.max()) + 1 if len(used) else 0
        else:
            first_free = 0
        available = n - first_free
        if available <= 0:
            return None, f"none: {src.path} has no rows beyond those trained on (give a held-out corpus)"
        rows = np.arange(n - min(available, spec.heldout_rows), n)
        where = f"{src.path} rows [{rows[0]}, {n}) (unused tail)"
    check_token_ids(src, (int(rows[0]), int(rows[-1]) + 1), vocab_size)
    return np.asarray(src.take(rows), dtype=np.int64), where
