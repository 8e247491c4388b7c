"""Run checkpoints: `checkpoints/stepK/` = HF weights (safetensors, `save_pretrained`) + `trainer_state.pt`, and with
the corpus's tokenizer an ordinary Hugging Face model folder (`AutoTokenizer` + `AutoModelForCausalLM`).

`trainer_state.pt` holds what a bit-identical resume needs beyond the weights: the optimizer state,
the torch RNG state, the data position (the step), the plan and spec hashes, and the evaluation
history so far. Every checkpoint folder appears atomically (written under a temporary name).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

from curate.atomic import atomic_dir, write_json
from curate.tokenize import TOKENIZER_CONFIG_FILE, TOKENIZER_FILE, hf_tokenizer_config
from curate.errors import CurateError
from curate.training.models import CHECKPOINTS_DIR, list_checkpoints, quiet_transformers

STATE_FILE = "trainer_state.pt"
STATE_VERSION = 1
REQUIRED_KEYS = ("version", "step", "optimizer", "torch_rng", "plan_hash", "spec_hash")


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINTS_DIR / f"step{step}"


def save_checkpoint(run_dir: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer, extra: dict,
                    tokenizer_file: Path | None = None) -> Path:
    """Write `checkpoints/step{step}` atomically: model weights + trainer state (`extra` adds plain fields),
    plus a copy of the corpus's `tokenizer.json` when there is one, so the folder is a complete HF model: its
    tokenizer config truncates to the model's context and pads on the left (`hf_tokenizer_config`); the trainer
    gives the model the tokenizer's bos/eos/pad ids when the run starts (`models.use_tokenizer_ids`).
    """
    final = checkpoint_dir(run_dir, step)
    with atomic_dir(final) as tmp:
        with quiet_transformers():
            model.save_pretrained(tmp)
        if tokenizer_file is not None:
            shutil.copyfile(tokenizer_file, tmp / TOKENIZER_FILE)
            write_json(tmp / TOKENIZER_CONFIG_FILE, hf_tokenizer_config(context=model.config.max_position_embeddings))
        state = {
            "version": STATE_VERSION,
            "step": int(step),
            "optimizer": optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
            **extra,
        }
        torch.save(state, tmp / STATE_FILE)
    return final


def load_trainer_state(folder: Path) -> dict:
    """The trainer state of a checkpoint folder; a missing or damaged file is one CurateError line."""
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        raise CurateError(f"{folder}: no {STATE_FILE} (an HF folder without training state: start from its weights alone, not its trainer state)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for corrupt pickles/zips
        raise CurateError(f"{path}: cannot read the trainer state ({type(e).__name__})") from None
    if not isinstance(state, dict) or any(k not in state for k in REQUIRED_KEYS):
        raise CurateError(f"{path}: not a curate trainer state (missing fields)")
    if state["version"] != STATE_VERSION:
        raise CurateError(f"{path}: unsupported trainer state version {state['version']} (expected {STATE_VERSION})")
    return state


def latest_resumable(run_dir: Path) -> Path | None:
    """The latest checkpoint of a run folder that carries a trainer state, or None."""
    resumable = [p for _, p in list_checkpoints(run_dir).items() if (p / STATE_FILE).is_file()]
    return resumable[-1] if resumable else None
