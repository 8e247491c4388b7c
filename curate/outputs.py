"""Output folders: which kind of curate output a folder holds, and whether a command may replace it.

One rule for every command that writes a folder: an existing `--out` is replaced (or resumed) only when
it is empty or an output of the same kind, and never when it is, or contains, one of the command's inputs.
The kind is read from what each writer already records: `"kind"` in `manifest.json` (mixes, synthetic
corpora), the job fingerprint in a scores `manifest.json`, or the writer's own metadata file.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

from curate.errors import CurateError

# Kinds, as callers name them, and how each is recognised (in this order).
MIX = "mix"
SYNTHETIC = "synthetic"
SCORES = "scores"
INDEX = "index"
CORPUS = "corpus"
RUN = "run"
EXPERIMENT = "experiment"
TOKENIZER = "tokenizer"

_LABEL = {
    MIX: "mix", SYNTHETIC: "synthetic corpus", SCORES: "scores folder", INDEX: "structure index",
    CORPUS: "corpus", RUN: "training run", EXPERIMENT: "experiment", TOKENIZER: "tokenizer folder",
}
# Files (or, last, folders) a writer always leaves, naming its kind (checked after manifest.json).
_SIGNATURE_FILES = (("experiment.json", EXPERIMENT), ("model-config.json", EXPERIMENT),  # a --scales size folder
                    ("run.json", RUN), ("stream.parquet", RUN), ("index.json", INDEX),
                    ("corpus.json", CORPUS), ("summary.json", SCORES), ("factors", SCORES), ("shards", SCORES),
                    ("tokenizer_config.json", TOKENIZER))


def _manifest_kind(folder: Path) -> str | None:
    path = folder / "manifest.json"
    if not path.is_file():
        return None
    try:
        body = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(body, dict):
        return None
    if body.get("kind") in (MIX, SYNTHETIC):
        return str(body["kind"])
    if "fingerprint" in body:
        return SCORES
    return None


# `command.json` (the saved options of the command that writes the folder; see `curate replay`) -> kind
_COMMAND_KINDS = {"score": SCORES, "train": RUN, "build-mix": MIX, "synth": SYNTHETIC, "experiment": EXPERIMENT,
                  "ingest": CORPUS, "index": INDEX, "tokenizer-train": TOKENIZER}


def _command_kind(folder: Path) -> str | None:
    path = folder / "command.json"
    try:
        body = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None
    return _COMMAND_KINDS.get(body.get("command")) if isinstance(body, dict) else None


def folder_kind(folder: str | os.PathLike[str]) -> str | None:
    """The kind of curate output `folder` holds, or None (not a folder, or not written by curate)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    kind = _manifest_kind(folder)
    if kind is not None:
        return kind
    if (folder / "manifest.json").is_file():
        return None  # a manifest.json curate did not write
    for name, k in _SIGNATURE_FILES:
        if (folder / name).exists():
            return k
    return _command_kind(folder)


def _overlaps(out: Path, inp: Path) -> bool:
    """True when `inp` is `out` or lies inside it (symlinks and relative paths resolved)."""
    if not inp.exists():
        return False
    try:
        if os.path.samefile(out, inp):
            return True
    except OSError:
        pass
    return inp.resolve().is_relative_to(out.resolve())


def check_output_folder(
    out: str | os.PathLike[str], kind: str, inputs: Iterable[str | os.PathLike[str] | None] = ()
) -> None:
    """Refuse (CurateError) an `out` that exists and is not empty unless it is a `kind` output holding no input."""
    out = Path(out)
    if not out.exists():
        return
    if not out.is_dir():
        raise CurateError(f"{out}: exists and is not a folder; choose another output folder")
    for inp in inputs:
        if inp is not None and _overlaps(out, Path(inp)):
            what = "is" if Path(inp).resolve() == out.resolve() else "contains"
            raise CurateError(f"{out}: {what} an input of this command ({inp}); choose another output folder")
    if not any(out.iterdir()):
        return
    found = folder_kind(out)
    want = _LABEL.get(kind, kind)
    if found is None:
        raise CurateError(f"{out}: folder exists, is not empty and is not a curate {want}; it is left as it is, choose another output folder")
    if found != kind:
        raise CurateError(f"{out}: folder holds a curate {_LABEL.get(found, found)}, not a {want}; it is left as it is, choose another output folder")
