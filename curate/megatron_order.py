"""Make megatron-core's `GPTDataset` read a curate Megatron file's rows in file order.

By default `GPTDataset` does not: it treats the `.bin` as one token stream, cuts samples of
`sequence_length + 1` tokens that overlap by one token (so with rows of `seq_len + 1` tokens every
sample after the first straddles two rows, and 40 rows of 33 tokens give 41 samples), and it shuffles
documents and samples from `random_seed`. No `GPTDatasetConfig` option turns either off (checked
against megatron-core 0.16.1). What it does honour are the three index arrays it caches under
`path_to_cache` as `<md5>-GPTDataset-train-{document,sample,shuffle}_index.npy` (+ `description.txt`),
where `<md5>` hashes a JSON of the dataset path, `num_samples`, the split, `random_seed`,
`sequence_length` and the tokenizer's `unique_identifiers`. `write_megatron_order` writes those
arrays so that sample j is row `j % rows`, whole and unshuffled:

- document_index = the rows, in order, repeated for as many epochs as `num_samples` needs;
- sample_index = for each slot p, the pair (p, 0), (p, row_len - 1): sample `2p` is exactly row p
  (the end offset plus the extra token reads all `row_len` tokens of one row);
- shuffle_index[j] = 2 * (j % slots): only the even samples are used, in order.

`len(dataset)` is therefore `2 * slots - 1`; indices past `slots` cycle through the rows again.
Curate's `.idx` needs no change: `GPTDataset` indexes sequences (one per row), not documents.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import shlex
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from curate.atomic import atomic_path, write_json
from curate.errors import CurateError
from curate.megatron import read_idx

DATASET_CLASS = "GPTDataset"
SPLIT_NAME = "train"
ORDER_JSON = "curate-megatron-order.json"
MEGATRON_DEFAULT_SEED = 1234
"""Megatron-LM's default `--seed`."""
TRAIN_SPLIT = "100,0,0"
NULL_TOKENIZER = "null"
NULL_TOKENIZER_IDENTIFIERS = {"class": "megatron.core.tokenizers.text.libraries.null_tokenizer.NullTokenizer"}
"""`unique_identifiers` of megatron-core's NullTokenizer (Megatron-LM `--tokenizer-type NullTokenizer`), as megatron-core
0.16.1 has them (tests/test_megatron_order.py checks them against the installed one)."""


def _split_matrix(split: str | None) -> list[Any] | None:
    """megatron-core's split matrix for a split string that puts every row in the train split."""
    if split is None:
        return None
    weights = [float(w) for w in re.findall(r"[.0-9]+", split)]
    if not weights or len(weights) > 3 or weights[0] <= 0 or any(w != 0 for w in weights[1:]):
        raise CurateError(f"split {split!r}: every row must go to the train split (e.g. '100,0,0')")
    return [[0, 1.0], None, None]  # what convert_split_vector_to_split_matrix gives for [1, 0, 0]


def megatron_description(
    dataset_path: str,
    num_samples: int | None,
    random_seed: int,
    sequence_length: int,
    split: str | None,
    tokenizer_identifiers: Mapping[str, Any],
) -> str:
    """The `unique_description` megatron-core's `GPTDataset` computes for its train split (md5 names the cache)."""
    ids: OrderedDict[str, Any] = OrderedDict()
    ids["class"] = DATASET_CLASS
    ids["dataset_path"] = dataset_path
    ids["num_samples"] = num_samples
    ids["index_split"] = SPLIT_NAME
    ids["random_seed"] = random_seed
    ids["sequence_length"] = sequence_length
    ids["split"] = split
    ids["split_matrix"] = _split_matrix(split)
    ids["tokenizer"] = OrderedDict(tokenizer_identifiers)
    return json.dumps(ids, indent=4)


def order_arrays(rows: int, row_len: int, num_samples: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """document_index, sample_index, shuffle_index that make sample j equal row j % rows."""
    wanted = rows if num_samples is None else num_samples
    slots = rows * math.ceil(wanted / rows)
    document_index = np.tile(np.arange(rows, dtype=np.int32), slots // rows)
    pos_dtype = np.int32 if max(2 * slots, row_len) <= np.iinfo(np.int32).max else np.int64
    sample_index = np.zeros((2 * slots, 2), dtype=pos_dtype)
    sample_index[:, 0] = np.repeat(np.arange(slots, dtype=pos_dtype), 2)
    sample_index[1::2, 1] = row_len - 1
    shuffle_dtype = np.uint32 if 2 * slots < np.iinfo(np.uint32).max - 1 else np.int64
    shuffle_index = (2 * (np.arange(2 * slots - 1, dtype=np.int64) % slots)).astype(shuffle_dtype)
    return document_index, sample_index, shuffle_index


def write_megatron_order(
    prefix: str | Path,
    out_cache_dir: str | Path,
    *,
    tokenizer_identifiers: Mapping[str, Any],
    dataset_path: str | None = None,
    num_samples: int | None = None,
    random_seed: int = 1234,
    split: str | None = "100,0,0",
) -> dict[str, Any]:
    """Write megatron-core's cached indices so `GPTDataset` yields row j of `<prefix>.bin` as sample j.

    Build the job's dataset with exactly this `GPTDatasetConfig` (Megatron-LM flags in brackets),
    or the md5 differs, the files are not found and megatron silently builds its own shuffled order:

        GPTDatasetConfig(
            random_seed=random_seed,                      # --seed
            sequence_length=row_len - 1,                  # --seq-length (rows are seq_len + 1 tokens)
            blend=([dataset_path], None), split=split,    # --data-path <dataset_path> --split 100,0,0
            # or, with split=None: blend_per_split=[([dataset_path], None), None, None]  (--train-data-path)
            path_to_cache=out_cache_dir,                  # --data-cache-path
            tokenizer=<tokenizer whose unique_identifiers == tokenizer_identifiers>,
            add_extra_token_to_sequence=True,             # the default
            reset_position_ids=False, reset_attention_mask=False, eod_mask_loss=False,
        )
        built for sizes [num_samples, ...] (train_iters * global_batch_size, or None for one epoch).

    `dataset_path` is the prefix string the job passes (default `str(prefix)`); megatron hashes it
    verbatim. `mid_level_dataset_surplus` does not apply (one prefix, no weights). With
    `fast_cache_load=True` (needs `blend_per_split`) a mismatch fails loudly instead of reshuffling.
    Sample j's `tokens` + last `labels` token equal row `j % rows`; use the sequential ("single")
    data loader. Returns a summary (also written as `curate-megatron-order.json` in the cache dir).
    """
    idx = read_idx(Path(str(prefix) + ".idx"))
    rows = idx.num_sequences
    if rows == 0:
        raise CurateError(f"{idx.path}: no rows")
    row_len = int(idx.sizes[0])
    if row_len < 2 or bool((idx.sizes != row_len).any()):
        raise CurateError(f"{idx.path}: rows are not all of one length of at least 2 tokens")
    if num_samples is not None and num_samples < 1:
        raise CurateError(f"num_samples must be at least 1, got {num_samples}")
    dataset_path = str(prefix) if dataset_path is None else dataset_path
    description = megatron_description(
        dataset_path, num_samples, random_seed, row_len - 1, split, tokenizer_identifiers
    )
    digest = hashlib.md5(description.encode("utf-8"), usedforsecurity=False).hexdigest()
    base = Path(out_cache_dir) / f"{digest}-{DATASET_CLASS}-{SPLIT_NAME}"
    arrays = dict(zip(("document_index", "sample_index", "shuffle_index"), order_arrays(rows, row_len, num_samples)))
    files = {}
    for name, array in arrays.items():
        path = Path(f"{base}-{name}.npy")
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=True)
        files[name] = str(path)
    desc_path = Path(f"{base}-description.txt")
    with atomic_path(desc_path) as tmp:  # written last: megatron takes the four files as a cache hit
        tmp.write_text(description)
    files["description"] = str(desc_path)
    summary = {
        "hash": digest,
        "rows": rows,
        "row_len": row_len,
        "samples": int(arrays["shuffle_index"].shape[0]),
        "files": files,
        "gpt_dataset_config": {
            "random_seed": random_seed,
            "sequence_length": row_len - 1,
            ("blend_per_split" if split is None else "blend"): [[dataset_path], None],
            "split": split,
            "path_to_cache": str(out_cache_dir),
            "add_extra_token_to_sequence": True,
            "num_samples": num_samples,
            "tokenizer_unique_identifiers": dict(tokenizer_identifiers),
        },
    }
    write_json(Path(out_cache_dir) / ORDER_JSON, summary)
    return summary


def tokenizer_identifiers(spec: str) -> dict[str, Any]:
    """The `unique_identifiers` of the job's tokenizer: `null` (megatron-core's NullTokenizer), or a JSON file holding
    the job tokenizer's `unique_identifiers` (megatron hashes them into the cache's name)."""
    if spec == NULL_TOKENIZER:
        return dict(NULL_TOKENIZER_IDENTIFIERS)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise CurateError(f"{spec!r}: neither {NULL_TOKENIZER!r} nor a JSON file of the tokenizer's unique_identifiers")
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CurateError(f"{path}: not a JSON file ({e})") from None
    if not isinstance(raw, dict) or "class" not in raw:
        raise CurateError(f"{path}: expected a JSON object of a megatron-core tokenizer's unique_identifiers (with 'class')")
    return raw


def megatron_job_flags(summary: Mapping[str, Any], global_batch: int | None, train_iters: int | None,
                       tokenizer: str, vocab_size: int | None) -> list[str]:
    """The Megatron-LM flags that make a job build the dataset `write_megatron_order` wrote the order of (`summary`)."""
    cfg = summary["gpt_dataset_config"]
    flags = ["--data-path", cfg["blend"][0][0], "--split", str(cfg["split"]), "--seq-length", str(cfg["sequence_length"]),
             "--data-cache-path", str(cfg["path_to_cache"]), "--seed", str(cfg["random_seed"])]
    if global_batch is not None and train_iters is not None:
        flags += ["--global-batch-size", str(global_batch), "--train-iters", str(train_iters)]
    flags += ["--dataloader-type", "single"]
    if tokenizer == NULL_TOKENIZER:
        flags += ["--tokenizer-type", "NullTokenizer"] + (["--vocab-size", str(vocab_size)] if vocab_size else [])
    return flags


def flags_line(flags: list[str]) -> str:
    return shlex.join(flags)
