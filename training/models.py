"""GPT-NeoX models: deterministic construction, loading (local folders, run checkpoints, the hub), fingerprints.

Every model this module returns uses eager attention, so attention weights are real and the
circuit metrics (`attribution.circuits`) can read them.
"""
from __future__ import annotations

import contextlib
import copy
import json
import re
from pathlib import Path
from typing import Iterator

import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
from transformers.utils import logging as hf_logging

from curate.hub import hub_offline, offline_message
from curate.atomic import read_json
from curate.corpus import Corpus
from curate.errors import CurateError

EAGER = "eager"
RUN_FILE = "run.json"
CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_RE = re.compile(r"^step(\d+)$")
HUB_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' per-file progress bars (checkpoint save/load) for the duration of the block."""
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def load_config_file(path: str | Path) -> dict:
    """A model config JSON file of GPTNeoXConfig fields, validated (one CurateError line on failure)."""
    p = Path(path).expanduser()
    raw = read_json(p, "model config file")
    if not isinstance(raw, dict):
        raise CurateError(f"{p}: a model config is a JSON object")
    config_from_dict(raw)
    return raw


def config_from_dict(raw: dict) -> GPTNeoXConfig:
    """A GPTNeoXConfig from a plain dict (e.g. a `config.json` or a `--config` file), eager attention."""
    model_type = raw.get("model_type", "gpt_neox")
    if model_type != "gpt_neox":
        raise CurateError(f"model config: model_type is {model_type!r}; curate trains GPT-NeoX (gpt_neox) models")
    fields = {k: v for k, v in raw.items() if k not in ("model_type", "transformers_version", "architectures")}
    try:
        config = GPTNeoXConfig(**fields)
    except (TypeError, ValueError) as e:
        raise CurateError(f"model config: {e}") from None
    config._attn_implementation = EAGER
    return config


def build_model(config: GPTNeoXConfig, seed: int) -> GPTNeoXForCausalLM:
    """A freshly initialised model; the same config and seed give bit-identical weights (global RNG untouched)."""
    config = copy.deepcopy(config)
    config._attn_implementation = EAGER
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPTNeoXForCausalLM(config)
    return model.float()


def use_tokenizer_ids(model: GPTNeoXForCausalLM, eot_id: int | None) -> None:
    """Set the model's bos/eos/pad token ids (its config and generation config) to the tokenizer's end-of-text id,
    the token a checkpoint's `tokenizer_config.json` names for all three (`tokenize.hf_tokenizer_config`); a
    tokenizer without one leaves them as they are. The ids also leave the evaluation probes (`probes.special_token_ids`)."""
    if eot_id is None:
        return
    for config in (model.config, model.generation_config):
        config.bos_token_id = config.eos_token_id = config.pad_token_id = int(eot_id)


def corpus_vocab_size(corpus: Corpus) -> int:
    """The corpus's recorded vocabulary size, else (max token id + 1) by streaming it."""
    if corpus.meta is not None and corpus.meta.vocab_size:
        return int(corpus.meta.vocab_size)
    return corpus.vocab_range()[1] + 1


def checkpoint_step(folder: Path) -> int | None:
    """The step of a `stepK` checkpoint folder name, else None."""
    m = CHECKPOINT_RE.match(folder.name)
    return int(m.group(1)) if m else None


def list_checkpoints(run_dir: Path) -> dict[int, Path]:
    """Complete checkpoints of a run folder by step (a checkpoint is complete once it has its config.json)."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    found: dict[int, Path] = {}
    if root.is_dir():
        for p in root.iterdir():
            step = checkpoint_step(p)
            if step is not None and p.is_dir() and (p / "config.json").is_file():
                found[step] = p
    return dict(sorted(found.items()))


def resolve_checkpoint_dir(spec: str | Path, revision: str | None = None) -> Path | None:
    """The local HF folder that `spec` (+ revision) names, or None when `spec` is not a local path.

    A run folder (has `run.json`/`checkpoints/`) takes `revision="stepK"` (default: its latest checkpoint);
    an HF folder (has `config.json`) is itself; a missing path that looks like a path is a CurateError.
    """
    p = Path(spec).expanduser()
    if p.is_dir():
        checkpoints = list_checkpoints(p)
        if (p / RUN_FILE).is_file() or (p / CHECKPOINTS_DIR).is_dir():
            if not checkpoints:
                raise CurateError(f"{p}: run folder has no complete checkpoint yet")
            if revision is None:
                return checkpoints[max(checkpoints)]
            step = _revision_step(revision)
            if step is None or step not in checkpoints:
                have = ", ".join(f"step{s}" for s in list(checkpoints)[:12])
                raise CurateError(f"{p}: no checkpoint {revision!r} (have: {have}{', ...' if len(checkpoints) > 12 else ''})")
            return checkpoints[step]
        if (p / "config.json").is_file():
            if revision is not None and (p / revision / "config.json").is_file():
                return p / revision
            return p
        if revision is not None and (p / revision / "config.json").is_file():  # a folder of stepK/ HF folders (the hub's layout)
            return p / revision
        raise CurateError(f"{p}: not a model folder (no config.json) and not a run folder (no checkpoints/)")
    if p.exists():
        raise CurateError(f"{p}: expected a model folder, found a file")
    text = str(spec)
    if text.startswith((".", "/", "~")) or not HUB_NAME_RE.match(text):
        raise CurateError(f"{spec}: model folder not found")
    return None


def _revision_step(revision: str) -> int | None:
    m = CHECKPOINT_RE.match(revision)
    return int(m.group(1)) if m else None


def load_model(
    spec: str | Path,
    revision: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> GPTNeoXForCausalLM:
    """Load a GPT-NeoX model: an HF folder, a run folder (+ `revision="stepK"`), or a hub name such as
    `EleutherAI/pythia-14m` with `revision="step1000"` (the hub is only tried for names). Eager attention.
    """
    folder = resolve_checkpoint_dir(spec, revision)
    source = str(folder) if folder is not None else str(spec)
    kwargs: dict = {"attn_implementation": EAGER, "dtype": dtype}
    if folder is None and revision is not None:
        kwargs["revision"] = revision
    if folder is not None:
        _check_gpt_neox(folder)
    offline = folder is None and hub_offline()
    if offline:
        kwargs["local_files_only"] = True  # the cache only: no retries against an unreachable hub
    try:
        with quiet_transformers():
            model = GPTNeoXForCausalLM.from_pretrained(source, **kwargs)
    except Exception as e:  # hub/network/format errors come in many types; one line for the user
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        where = f"{spec}" + (f" (revision {revision})" if revision else "")
        if offline:
            raise CurateError(offline_message(str(spec), revision)) from None
        if folder is None:
            raise CurateError(f"{where}: not a local folder and could not be loaded from the Hugging Face hub: {reason}") from None
        raise CurateError(f"{folder}: could not load the model: {reason}") from None
    model.config._attn_implementation = EAGER
    return model.to(device)


def _check_gpt_neox(folder: Path) -> None:
    try:
        raw = json.loads((folder / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise CurateError(f"{folder / 'config.json'}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if raw.get("model_type") != "gpt_neox":
        raise CurateError(f"{folder}: model_type is {raw.get('model_type')!r}; curate works on GPT-NeoX (Pythia) models")
