"""`curate score` options: the default batch follows the row length (throughput and memory), and divides the shard."""
from __future__ import annotations

import pytest

from curate.pipelines.score_request import BATCH_TOKENS, MAX_BATCH_ROWS, auto_batch_rows


@pytest.mark.parametrize("row_len,shard_rows,expected", [
    (65, 1024, 64),     # the embedded default: 64 rows of 65 tokens
    (129, 1024, 32),
    (2049, 1024, 2),    # Pythia rows
    (8193, 1024, 1),    # longer than the token budget: one row at a time
    (33, 48, 16),       # the batch divides the shard
    (33, 7, 1),
])
def test_default_batch_rows(row_len, shard_rows, expected):
    rows = auto_batch_rows(row_len, shard_rows)
    assert rows == expected
    assert shard_rows % rows == 0 and rows <= MAX_BATCH_ROWS
    assert rows == 1 or rows * row_len <= BATCH_TOKENS
