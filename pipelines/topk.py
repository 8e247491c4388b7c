"""Streaming top-k over score shard files: never holds more than one shard plus 2k rows."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def _keep(table: pa.Table, column: str, k: int, largest: bool) -> pa.Table:
    values = table.column(column).to_numpy()
    if len(values) <= k:
        return table
    part = np.argpartition(-values if largest else values, k - 1)[:k]
    return table.take(pa.array(np.sort(part)))


def _order(table: pa.Table, column: str, largest: bool) -> pa.Table:
    values = table.column(column).to_numpy()
    row_ids = table.column("row_id").to_numpy()
    # ties broken by row id so the result does not depend on shard order
    order = np.lexsort((row_ids, -values if largest else values))
    return table.take(pa.array(order))


def top_rows(files: list[Path], k: int, column: str = "score") -> tuple[pa.Table, pa.Table]:
    """The k highest and k lowest rows by `column` across the files, best first."""
    best: pa.Table | None = None
    worst: pa.Table | None = None
    for f in files:
        t = pq.read_table(f)
        best = _keep(t if best is None else pa.concat_tables([best, t]), column, k, largest=True)
        worst = _keep(t if worst is None else pa.concat_tables([worst, t]), column, k, largest=False)
    if best is None or worst is None:
        raise ValueError("no score files to merge")
    return _order(best, column, True), _order(worst, column, False)
