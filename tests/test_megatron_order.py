"""megatron-core's GPTDataset reads a curate Megatron file in row order once the order files are written."""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
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
from curate.megatron_order import NULL_TOKENIZER_IDENTIFIERS, ORDER_JSON, write_megatron_order  # noqa: E402

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


def test_null_tokenizer_identifiers_are_megatron_cores() -> None:
    assert NULL_TOKENIZER_IDENTIFIERS == identifiers()


def export_order(src: str, cache: Path, *extra: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "curate.cli", "corpus", "export", src, "--to", "megatron-order",
                           "--out", str(cache), *extra], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_export_command_prints_the_flags_megatron_reads_in_row_order(mix, tmp_path: Path) -> None:
    """`curate corpus export MIX --to megatron-order` writes the cache and prints the job's flags; a GPTDataset built
    from exactly those values (tokens of a NullTokenizer) yields row i as sample i, cycling over train-iters x batch."""
    prefix, rows = mix
    cache, seed, batch, iters = tmp_path / "cache", 7, 6, 9
    proc = export_order(prefix + ".idx", cache, "--seed", str(seed), "--global-batch", str(batch), "--train-iters",
                        str(iters), "--tokenizer", "null", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    flags = shlex.split(proc.stdout.strip().splitlines()[-1])
    values = dict(zip(flags[::2], flags[1::2]))
    assert values["--data-path"] == str(Path(prefix).resolve()) and values["--split"] == "100,0,0"
    assert int(values["--seq-length"]) == ROW_LEN - 1 and int(values["--seed"]) == seed
    assert values["--data-cache-path"] == str(cache.resolve()) and values["--tokenizer-type"] == "NullTokenizer"
    samples = int(values["--global-batch-size"]) * int(values["--train-iters"])
    config = GPTDatasetConfig(
        random_seed=int(values["--seed"]), sequence_length=int(values["--seq-length"]), blend=([values["--data-path"]], None),
        split=values["--split"], path_to_cache=values["--data-cache-path"], tokenizer=NullTokenizer(int(values["--vocab-size"])),
        reset_position_ids=False, reset_attention_mask=False, eod_mask_loss=False,
    )
    written = sorted(p.name for p in cache.iterdir())
    ds, _, _ = BlendedMegatronDatasetBuilder(GPTDataset, [samples, None, None], lambda: True, config).build()
    assert sorted(p.name for p in cache.iterdir()) == written  # megatron found the order files and built none
    got = np.stack([sample_tokens(ds, j) for j in range(samples)])
    np.testing.assert_array_equal(got, rows[np.arange(samples) % ROWS].astype(np.int64))


@pytest.mark.parametrize("extra, message", [
    (["--tokenizer", "null", "--global-batch", "4"], "go together"),
    (["--global-batch", "4", "--train-iters", "2"], "needs --tokenizer"),
    (["--tokenizer", "null", "--rows", "0:4"], "orders every row"),
])
def test_export_command_bad_input_is_one_line(mix, tmp_path: Path, extra, message) -> None:
    prefix, _ = mix
    proc = export_order(prefix + ".idx", tmp_path / "cache", *extra, cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "cache").exists()


def test_order_flags_only_with_megatron_order(mix, tmp_path: Path) -> None:
    prefix, _ = mix
    proc = subprocess.run([sys.executable, "-m", "curate.cli", "corpus", "export", prefix + ".idx", "--to", "npy",
                           "--out", str(tmp_path / "x.npy"), "--seed", "3"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2 and "only with --to megatron-order" in proc.stderr and not (tmp_path / "x.npy").exists()
