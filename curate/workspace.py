"""The workspace folder: where the embedded default corpus, runs, scores and mixes live."""
from __future__ import annotations

import os
from pathlib import Path

from curate.errors import CurateError

ENV_VAR = "CURATE_WORKSPACE"
DEFAULT_DIR = "curate-workspace"

WORKSPACE_HELP = f"Workspace folder (default: ${ENV_VAR} or ./{DEFAULT_DIR})."


def resolve_workspace(explicit: Path | None = None) -> Path:
    """`--workspace`, else $CURATE_WORKSPACE, else ./curate-workspace."""
    if explicit is not None:
        ws = Path(explicit)
    else:
        env = os.environ.get(ENV_VAR)
        ws = Path(env) if env else Path(DEFAULT_DIR)
    if ws.exists() and not ws.is_dir():
        raise CurateError(f"{ws}: the workspace is not a folder")
    return ws


def default_corpus_dir(ws: Path) -> Path:
    """The embedded mini-Pile corpus folder (corpus.json, .bin/.idx, tokenizer, sidecar)."""
    return ws / "default" / "corpus"


def reference_run_dir(ws: Path) -> Path:
    """The reference training run on the default corpus (checkpoints, curves)."""
    return ws / "default" / "runs" / "reference"


def seeded_reference_run_dir(ws: Path, seed: int) -> Path:
    """The reference run trained with initialisation seed `seed` (`curate score --ensemble K`); seed 0 is the reference run."""
    return reference_run_dir(ws) if seed == 0 else reference_run_dir(ws).with_name(f"reference-seed{seed}")


def scores_dir(ws: Path, circuit: str, method: str = "mda", trajectory: bool = False) -> Path:
    """Where `curate score --circuit C [--method M] [--checkpoints ...]` writes on the default setup (`C`, or `C-M`
    for a method other than mda; `-trajectory` appended for trajectory scores)."""
    name = circuit if method == "mda" else f"{circuit}-{method}"
    return ws / "default" / "scores" / (f"{name}-trajectory" if trajectory else name)


def mixes_dir(ws: Path) -> Path:
    """Where `curate build-mix` writes a mix when no --out is given (one folder per circuit and options)."""
    return ws / "mixes"


def experiments_dir(ws: Path) -> Path:
    """Where `curate experiment` writes when no --out is given (one folder per circuit and mode)."""
    return ws / "experiments"
