"""megatron-core's GPTDataset reads a curate Megatron file in row order once the order files are written."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("megatron.core")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder  # noqa: E402
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig  # noqa: E402
from megatron.core.tokenizers.text.libraries.null_tokenizer import NullTokenizer  # noqa: E402

from curate.errors import CurateError  # noqa: E402
from curate.megatron import write_megatron  # noqa: E402
from curate.megatron_order import ORDER_JSON, write_megatron_order  # noqa: E402

ROWS, ROW_LEN, VOCAB = 40, 33, 1000


@pytest.fixture
def mix(tmp_path: Path) -> tuple[str, np.ndarray]:
    rows = np.random.default_rng(0).integers(0, VOCAB, size=(ROWS, ROW_LEN)).astype(np.uint16)
    prefix = tmp_path / "mix" / "mix"
    write_megatron(prefix, rows, np.uint16)
    return str(prefix), rows


def build(prefix: str, cache: Path, num_samples: int | None, per_split: bool = False) -> GPTDataset:
    """The train split as Megatron-LM builds it (one prefix, no weights, no torch.distributed)."""
    data = {"blend_per_split": [([prefix], None), None, None]} if per_split else {"blend": ([prefix], None), "split": "100,0,0"}
    config = GPTDatasetConfig(
        random_seed=1234, sequence_length=ROW_LEN - 1, path_to_cache=str(cache), tokenizer=NullTokenizer(VOCAB),
        reset_position_ids=False, reset_attention_mask=False, eod_mask_loss=False, fast_cache_load=per_split, **data,
    )
    train, _, _ = BlendedMegatronDatasetBuilder(GPTDataset, [num_samples, None, None], lambda: True, config).build()
    return train


def sample_tokens(ds: GPTDataset, j: int) -> np.ndarray:
    s = ds[j]
    return np.concatenate([s["tokens"].numpy(), s["labels"].numpy()[-1:]])


def identifiers() -> dict:
    return dict(NullTokenizer(VOCAB).unique_identifiers)


def test_gpt_dataset_reads_every_row_in_order(mix, tmp_path: Path) -> None:
    prefix, rows = mix
    cache = tmp_path / "cache"
    summary = write_megatron_order(prefix, cache, tokenizer_identifiers=identifiers(), num_samples=ROWS)
    written = sorted(p.name for p in cache.iterdir())
    ds = build(prefix, cache, ROWS)
    assert sorted(p.name for p in cache.iterdir()) == written  # a cache hit: megatron built nothing
    assert ds.unique_description_hash == summary["hash"]
    got = np.stack([sample_tokens(ds, j) for j in range(ROWS)])
    np.testing.assert_array_equal(got, rows.astype(np.int64))
    assert all(float(ds[j]["loss_mask"].min()) == 1.0 for j in range(3))
    assert json.loads((cache / ORDER_JSON).read_text())["gpt_dataset_config"]["sequence_length"] == ROW_LEN - 1


def test_without_order_files_megatron_shuffles_and_straddles_rows(mix, tmp_path: Path) -> None:
    prefix, rows = mix
    ds = build(prefix, tmp_path / "plain", ROWS)
    assert len(ds) == (ROWS * ROW_LEN - 1) // (ROW_LEN - 1)  # 41 samples from 40 rows
    got = np.stack([sample_tokens(ds, j) for j in range(ROWS)])
    assert not np.array_equal(got, rows.astype(np.int64))
    matches = sum(any((r == g).all() for r in rows) for g in got)
    assert matches < ROWS // 2  # most samples are not whole rows at all


def test_more_samples_than_rows_cycle_in_order_with_fast_cache_load(mix, tmp_path: Path) -> None:
    prefix, rows = mix
    cache = tmp_path / "cache"
    wanted = 2 * ROWS + 5
    write_megatron_order(prefix, cache, tokenizer_identifiers=identifiers(), num_samples=wanted, split=None)
    ds = build(prefix, cache, wanted, per_split=True)
    assert len(ds) >= wanted
    for j in (0, ROWS - 1, ROWS, 2 * ROWS + 4, len(ds) - 1):
        np.testing.assert_array_equal(sample_tokens(ds, j), rows[j % ROWS].astype(np.int64))


def test_rejects_a_split_that_leaves_rows_out(mix, tmp_path: Path) -> None:
    prefix, _ = mix
    with pytest.raises(CurateError, match="train split"):
        write_megatron_order(prefix, tmp_path / "c", tokenizer_identifiers=identifiers(), split="98,2,0")
