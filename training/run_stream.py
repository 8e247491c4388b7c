"""A run's row stream: the vocabulary check before training, its record `stream.parquet` (the (step, source,
row_id) of every row the run trains on; the sources are listed in run.json), and the check that a run started
from another run's checkpoint keeps the rows that checkpoint has already trained on."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.atomic import atomic_path
from curate.corpus import check_token_ids
from curate.errors import CurateError
from curate.paths import resolve_stored
from curate.training.models import RUN_FILE
from curate.training.plan import RowStream

STREAM_FILE = "stream.parquet"


def check_stream_vocab(stream: RowStream, start_step: int, steps: int, vocab_size: int) -> None:
    """Every row the run will train on (steps start_step..steps-1) holds ids inside the vocabulary."""
    a, b = start_step * stream.batch_size, steps * stream.batch_size
    for i, source in enumerate(stream.sources):
        rows = np.unique(stream.row[a:b][stream.source[a:b] == i])
        if len(rows) == 0:
            continue
        for run in np.split(rows, np.flatnonzero(np.diff(rows) != 1) + 1):  # contiguous row ranges
            check_token_ids(source, (int(run[0]), int(run[-1]) + 1), vocab_size)


def write_stream(path: Path, stream: RowStream, start_step: int) -> None:
    """stream.parquet: the (step, source, row_id) of every row the run trains on from `start_step` on."""
    a = start_step * stream.batch_size
    positions = np.arange(a, len(stream.row), dtype=np.int64)
    table = pa.table({
        "step": pa.array(positions // stream.batch_size),
        "source": pa.array(stream.source[a:]),
        "row_id": pa.array(stream.row[a:]),
    })
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def check_parent_prefix(checkpoint: Path, stream: RowStream, start_step: int) -> None:
    """A run started from a checkpoint of another curate run must keep that run's rows before its start step
    (what the checkpoint has already trained on); one CurateError line naming the first difference."""
    run_dir = checkpoint.parent.parent
    if not ((run_dir / RUN_FILE).is_file() and (run_dir / STREAM_FILE).is_file()):
        return  # an HF folder or hub model: nothing recorded to compare with
    parent = json.loads((run_dir / RUN_FILE).read_text())
    if int(parent.get("batch_size", stream.batch_size)) != stream.batch_size:
        raise CurateError(f"{run_dir}: was trained at batch size {parent.get('batch_size')}, this run uses {stream.batch_size}; "
                          "the data position of its checkpoints would not match")
    table = pq.read_table(run_dir / STREAM_FILE)
    steps = table.column("step").to_numpy()
    keep = steps < start_step
    if not keep.any():
        return
    first = int(steps[keep][0]) * stream.batch_size
    theirs_src = table.column("source").to_numpy()[keep]
    theirs_row = table.column("row_id").to_numpy()[keep]
    absolute = parent.get("sources_absolute") or [None] * len(parent["sources"])
    paths = [str(Path(resolve_stored(p, run_dir, a)).resolve()) for p, a in zip(parent["sources"], absolute)]
    ours_paths = [str(Path(c.path).resolve()) for c in stream.sources]
    a, b = first, first + len(theirs_row)
    ours_row = stream.row[a:b]
    ours_src = stream.source[a:b]
    same_src = np.array([paths[int(i)] for i in theirs_src]) == np.array([ours_paths[int(i)] for i in ours_src])
    differ = np.flatnonzero(~same_src | (ours_row != theirs_row))
    if len(differ):
        i = int(differ[0])
        raise CurateError(
            f"{run_dir}: this plan changes the rows before the start step {start_step} (step {(a + i) // stream.batch_size} "
            f"trains on row {int(ours_row[i])} of {ours_paths[int(ours_src[i])]} here, row {int(theirs_row[i])} of "
            f"{paths[int(theirs_src[i])]} there); drops and insertions must lie at or after the start step"
        )
