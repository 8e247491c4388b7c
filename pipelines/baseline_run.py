"""An experiment's baseline run: the reference run, the experiment's own baseline (trained here), or an external
model (nothing to train)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from curate.corpus import open_corpus
from curate.default_corpus import ensure_default_corpus
from curate.errors import CurateError
from curate.pipelines.experiment_setting import Setting, abs_path
from curate.training.curves import SUMMARY_JSON
from curate.training.reference import ensure_reference_run
from curate.training.trainer import train
from curate.workspace import default_corpus_dir

Log = Callable[[str], None]


def prepare_baseline(s: Setting, log: Log) -> dict:
    """Train (or reuse) the baseline run; returns its run.json (empty for an external model)."""
    b = s.baseline
    if b.mode == "reference":
        ensure_default_corpus(s.ws, s.opts.progress, log)
        b.run_dir = Path(abs_path(ensure_reference_run(s.ws, s.opts.progress, log)))
    elif b.mode == "own":
        if s.opts.corpus is None:
            ensure_default_corpus(s.ws, s.opts.progress, log)
            assert Path(b.corpus) == Path(abs_path(default_corpus_dir(s.ws)))
        open_corpus(b.corpus)
        assert b.run_dir is not None and b.own_spec is not None
        log(f"baseline: {b.run_dir}")
        train(b.own_spec, b.run_dir, progress=s.opts.progress, resume=True)  # type: ignore[arg-type]
    return finished_baseline(s)


def finished_baseline(s: Setting) -> dict:
    """The baseline run's run.json once it is trained (empty for an external model), its batch size and evaluation
    interval taken into the setting; an unfinished run is an error."""
    b = s.baseline
    if b.run_dir is None:
        return {}
    raw = b.run_json()
    summary = json.loads((b.run_dir / SUMMARY_JSON).read_text())
    if summary.get("complete") is not True:
        raise CurateError(f"{b.run_dir}: the baseline run is not finished; resume its training first")
    b.batch_size = int(raw["batch_size"])
    s.eval_every = int(raw["spec"].get("eval_every") or s.eval_every or 100)
    return raw
