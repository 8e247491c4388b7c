"""The workspace's reference run: the default model trained on the default corpus with the reference recipe
(`recipes.recipe_fields("reference")`), built by the library for any command that needs it."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from curate.default_corpus import ensure_default_corpus
from curate.locks import hold
from curate.training.curves import SUMMARY_JSON
from curate.training.recipes import recipe_fields
from curate.training.spec import TrainSpec, saved_spec
from curate.training.trainer import TrainResult, train
from curate.workspace import reference_run_dir, seeded_reference_run_dir


def train_reference_run(ws: Path, progress: bool = True, overrides: dict | None = None, out: Path | None = None,
                        log: Callable[[str], None] | None = None) -> TrainResult:
    """Train, finish or confirm the reference run into `out` (default: the workspace's reference run folder),
    resuming what is there. The default corpus is built first when missing, unless `overrides` names a corpus;
    `overrides` (TrainSpec fields) replace the reference settings and must match a run already there."""
    overrides = dict(overrides or {})
    fields = recipe_fields("reference")
    if overrides.get("corpus") is None:
        fields["corpus"] = str(ensure_default_corpus(ws, progress, log))
    fields.update({k: v for k, v in overrides.items() if v is not None})
    out = Path(out) if out is not None else reference_run_dir(ws)
    with hold(out, what="reference run"):  # one writer of the workspace's reference run
        spec = saved_spec(out, fields) or TrainSpec(**fields)
        return train(spec, out, progress=progress, resume=True)


def ensure_reference_run(ws: Path, progress: bool = True, log: Callable[[str], None] | None = None, seed: int = 0) -> Path:
    """The workspace's reference run folder (of initialisation seed `seed`: `curate train --default --seed S` into
    `seeded_reference_run_dir`), trained (or finished) first when it is not complete."""
    run_dir = seeded_reference_run_dir(ws, seed)
    summary = run_dir / SUMMARY_JSON
    complete = summary.is_file() and json.loads(summary.read_text()).get("complete") is True
    if not complete:
        if log is not None:
            log(f"training the reference run{f' of seed {seed}' if seed else ''} in {run_dir} ...")
        train_reference_run(ws, progress, overrides={"seed": seed} if seed else None, out=run_dir, log=log)
    return run_dir
