"""The scores folder (one reader, one writer) and the one top-k rule: best first, ties by the lower row id."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.attribution.heads import HeadRef
from curate.attribution.score_table import ScoreTable, top_indices
from curate.attribution.scores_folder import (
    SUMMARY_FILE, TopK, begin_results, open_scores, read_summary, shard_file, top_tables, write_summary,
)
from curate.augment.mix import rank_rows
from curate.errors import CurateError

# ties everywhere: rows 7, 3, 5 share the top value, rows 9, 1 the bottom one
ROW_IDS = np.array([7, 3, 9, 5, 1, 4, 8], dtype=np.int64)
VALUES = np.array([2.0, 2.0, -1.0, 2.0, -1.0, 0.5, 0.5])


def test_top_indices_breaks_ties_by_lower_row_id() -> None:
    assert ROW_IDS[top_indices(VALUES, ROW_IDS, 4)].tolist() == [3, 5, 7, 4]
    assert ROW_IDS[top_indices(VALUES, ROW_IDS, 3, "bottom")].tolist() == [1, 9, 4]
    assert ROW_IDS[top_indices(VALUES, ROW_IDS)].tolist() == [3, 5, 7, 4, 8, 1, 9]  # k None: every row, ranked
    with pytest.raises(CurateError, match="tail 'middle'"):
        top_indices(VALUES, ROW_IDS, 1, "middle")


def test_every_top_k_applies_the_same_rule(tmp_path: Path) -> None:
    """Score tables, the streaming selection over shard files (in any order, any split) and mixes agree."""
    table = ScoreTable(ROW_IDS, ROW_IDS // 2, np.zeros(7), VALUES[:, None], [HeadRef(1, 0)])
    best, worst = table.top_k(2)
    assert (best.tolist(), worst.tolist()) == ([3, 5], [1, 9])
    parts = [ScoreTable(ROW_IDS[a:b], ROW_IDS[a:b] // 2, np.zeros(b - a), VALUES[a:b, None], [HeadRef(1, 0)]) for a, b in ((4, 7), (0, 2), (2, 4))]
    files = [p.to_parquet(tmp_path / f"part{i}.parquet") for i, p in enumerate(parts)]
    top, bottom = top_tables(files, 2)
    assert top.column("row_id").to_pylist() == [3, 5] and bottom.column("row_id").to_pylist() == [1, 9]
    stream = TopK(4)
    for i in range(7):  # one row at a time, the worst kept rows compacted away as it goes
        stream.add(pa.table({"row_id": ROW_IDS[i : i + 1], "score": VALUES[i : i + 1]}))
    assert stream.result().column("row_id").to_pylist() == [3, 5, 7, 4]
    # a mix ranks window positions (= row ids minus the first row) by the same rule
    window = np.full(10, np.nan)
    window[ROW_IDS] = VALUES
    assert rank_rows(window).tolist() == [3, 5, 7, 4, 8, 1, 9]


def _write_folder(folder: Path, with_summary: bool) -> None:
    begin_results(folder)
    table = ScoreTable(ROW_IDS, ROW_IDS // 2, np.zeros(7), VALUES[:, None], [HeadRef(1, 0)])
    (folder / "shards").mkdir()
    table.to_parquet(folder / shard_file(0, 7))
    if with_summary:
        write_summary(folder, {"corpus": "c", "window": [0, 4], "batch_size": 2})


def test_reader_refuses_a_folder_without_summary(tmp_path: Path) -> None:
    folder = tmp_path / "scores"
    _write_folder(folder, with_summary=False)
    with pytest.raises(CurateError) as e:
        open_scores(folder)
    assert str(e.value) == f"{folder}: no {SUMMARY_FILE} (not a scores folder, or scoring has not finished)"
    assert read_summary(folder) is None
    write_summary(folder, {"corpus": "c", "window": [0, 4], "batch_size": 2})
    scores = open_scores(folder)
    assert scores.num_rows == 7 and read_summary(folder) == json.loads((folder / SUMMARY_FILE).read_text())
    best = scores.top_rows(3)
    assert best.row_ids.tolist() == [3, 5, 7] and best.values.tolist() == [2.0, 2.0, 2.0]
    assert scores.column_for("1.0") == "head_1_0"
    with pytest.raises(CurateError, match="is not LAYER.HEAD") as e:
        scores.column_for("x")
    assert "--" not in str(e.value)
    begin_results(folder)  # a rerun starts by marking the folder incomplete
    with pytest.raises(CurateError, match=f"no {SUMMARY_FILE}"):
        open_scores(folder)
    assert pq.read_table(folder / "shards").num_rows == 7
