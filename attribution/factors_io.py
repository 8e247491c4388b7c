"""EK-FAC factors on disk: one safetensors file per head, keyed by (model fingerprint, head, mode,
damping, fit data), reused when present.

A file holds `{block}.q_a`, `{block}.q_s`, `{block}.lam` for the blocks of its mode, and its key as
JSON metadata (checked on load, so a renamed or colliding file is never used for the wrong model).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from curate.attribution.ekfac import BlockFactors, EKFACFactors
from curate.attribution.heads import MODES, HeadRef, check_mode
from curate.atomic import atomic_path
from curate.errors import CurateError

__all__ = ["factor_key", "factor_path", "save_factors", "load_factors", "load_head_factors"]

FORMAT_VERSION = 1


def factor_key(model_fp: str, head: HeadRef, mode: str, damping: float, floor: float, data_key: str) -> dict:
    """Everything the factors of one head depend on."""
    return {
        "version": FORMAT_VERSION,
        "model": model_fp,
        "layer": head.layer,
        "head": head.head,
        "mode": mode,
        "damping": float(damping),
        "damping_floor": float(floor),
        "data": data_key,
    }


def factor_path(cache_dir: Path, key: dict) -> Path:
    """Where the factors with `key` live: <cache>/<model fp>/L{l}_H{h}_{mode}_{key hash}.safetensors."""
    digest = hashlib.blake2b(json.dumps(key, sort_keys=True).encode(), digest_size=8).hexdigest()
    return Path(cache_dir) / key["model"][:16] / f"L{key['layer']}_H{key['head']}_{key['mode']}_{digest}.safetensors"


def save_factors(cache_dir: Path, factors: EKFACFactors, model_fp: str, data_key: str) -> list[Path]:
    """Write every head's factors (atomically, one file each); returns the paths."""
    paths = []
    for head, blocks in factors.heads.items():
        key = factor_key(model_fp, head, factors.mode, factors.damping, factors.damping_floor, data_key)
        tensors = {}
        for b in MODES[factors.mode]:
            f = blocks[b]
            tensors[f"{b}.q_a"] = f.q_a.detach().cpu().contiguous()
            tensors[f"{b}.q_s"] = f.q_s.detach().cpu().contiguous()
            tensors[f"{b}.lam"] = f.lam.detach().cpu().contiguous()
        path = factor_path(cache_dir, key)
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"key": json.dumps(key, sort_keys=True)})
        paths.append(path)
    return paths


def load_head_factors(path: Path, key: dict) -> dict[str, BlockFactors]:
    """One head's blocks from `path`; CurateError if the file is unreadable or holds another key."""
    try:
        with safe_open(str(path), framework="pt") as f:
            stored = json.loads((f.metadata() or {}).get("key", "null"))
        tensors = load_file(str(path))
    except (SafetensorError, OSError, json.JSONDecodeError) as e:
        raise CurateError(f"{path}: unreadable EK-FAC factor file ({e})") from None
    if stored != key:
        raise CurateError(f"{path}: factor file belongs to another model/head/setting (key mismatch)")
    blocks = {}
    for b in MODES[key["mode"]]:
        try:
            blocks[b] = BlockFactors(tensors[f"{b}.q_a"], tensors[f"{b}.q_s"], tensors[f"{b}.lam"])
        except KeyError:
            raise CurateError(f"{path}: factor file lacks block {b!r}") from None
    return blocks


def load_factors(
    cache_dir: Path, heads: Sequence[HeadRef], mode: str, model_fp: str, damping: float, floor: float, data_key: str
) -> tuple[EKFACFactors, list[HeadRef]]:
    """The cached factors of `heads` that exist, and the heads still missing (to fit)."""
    check_mode(mode)
    found: dict[HeadRef, dict[str, BlockFactors]] = {}
    missing: list[HeadRef] = []
    for head in heads:
        key = factor_key(model_fp, head, mode, damping, floor, data_key)
        path = factor_path(cache_dir, key)
        if path.is_file():
            found[head] = load_head_factors(path, key)
        else:
            missing.append(head)
    return EKFACFactors(mode, found, damping, floor), missing
