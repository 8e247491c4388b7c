"""The experiment's scores: the heads to score (given, or the best candidate when none is localized) and the
window's scores by each method, by `curate score`'s job (reusing its folder when it holds the same job)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch

from curate.attribution.probes import corpus_probes
from curate.attribution.scores_folder import Window, read_summary
from curate.corpus import open_corpus
from curate.pipelines.run_metrics import eligible_heads
from curate.pipelines.experiment_setting import Setting
from curate.pipelines.ray_holder import RayHolder
from curate.pipelines.score_ensemble import resolve_scoring, run_scoring
from curate.pipelines.score_request import DEFAULT_FIT_ROWS, ScoreRequest
from curate.training.models import load_model
from curate.workspace import scores_dir

Log = Callable[[str], None]


def choose_heads(s: Setting, window: Window, corpus_path: str, model_spec: str, revision: str | None) -> tuple[str, list[str]]:
    """`--heads` as given, or (auto with no head localized at the checkpoint) the best candidate head, noted."""
    if s.opts.heads.strip().lower() != "auto":
        return s.opts.heads, []
    model = load_model(model_spec, revision=revision)
    model.eval()
    corpus = open_corpus(corpus_path)
    probes = corpus_probes(model.config, corpus, seed=0)
    with torch.no_grad():
        loc = s.circuit.localize(model, probes)  # type: ignore[attr-defined]
    if loc.heads:
        return "auto", []
    values = loc.head_scores.metric(loc.metric)
    eligible = eligible_heads(loc.metric, values.shape[0], values.shape[1])
    best = max(eligible, key=lambda h: float(values[h.layer, h.head]))
    note = (f"no {loc.circuit} head localized at step{window.end_step} ({'; '.join(loc.notes) or 'none passes'}): the scores "
            f"target the best candidate head {best} ({loc.metric} {float(values[best.layer, best.head]):.3f})")
    return str(best), [note]


def score_job(s: Setting, window: Window, log: Log, method: str = "mda", heads: str | None = None):
    """`curate score`'s job for the window's scores by `method` (writes nothing); (job, notes). MDA chooses the heads
    (and takes the experiment's --mode / --checkpoints / --aggregate / --token-aggregate); another method scores the same window at the
    same checkpoint for the `heads` MDA used, into EXP/scores-<method>. --token-aggregate applies to the MDA scores."""
    b = s.baseline
    if b.mode == "external":
        model_spec, revision = b.checkpoint(s.opts.revision or f"step{window.end_step}")
    else:
        model_spec, revision = str(b.run_dir), f"step{window.end_step}"
    assert model_spec is not None
    notes: list[str] = []
    if heads is None:
        heads, notes = choose_heads(s, window, b.corpus, model_spec, revision)
    mda = method == "mda"
    ensemble = ensemble_members(s, model_spec) if mda else None
    req = ScoreRequest(
        circuit=s.circuit.name, method=method, corpus=b.corpus, model=model_spec, revision=revision, heads=heads,  # type: ignore[attr-defined]
        window=f"{window.start_step}:{window.end_step}", out=s.out / ("scores" if mda else f"scores-{method}"), workers=s.opts.workers,
        device=s.opts.device, fit_rows=s.opts.fit_rows or DEFAULT_FIT_ROWS, seed=0, workspace=s.opts.workspace,
        progress=s.opts.progress, mode=s.opts.score_mode,
        checkpoints=s.score_checkpoints if mda else None, aggregate=s.opts.aggregate if mda else "sum",
        token_aggregate=s.opts.token_aggregate if mda else "sum",
    )
    if ensemble is not None:  # the members' runs in place of the baseline's, each at its own checkpoint after formation
        req = replace(req, ensemble=ensemble, model=None, revision=None, corpus=None if ensemble.isdigit() else req.corpus)
    return resolve_scoring(req, log), notes


def ensemble_members(s: Setting, baseline_run: str) -> str | None:
    """`curate score --ensemble` for the MDA scores: K as given (the reference baseline), or the baseline run then the
    other members given; None without --ensemble."""
    text = s.opts.ensemble
    if text is None:
        return None
    assert s.baseline.mode != "external", "the setting refuses --ensemble with an external model"
    if text.strip().isdigit():
        return text.strip()
    return ",".join([baseline_run, *(part.strip() for part in text.split(","))])


def run_scores(s: Setting, window: Window, ray: RayHolder, log: Log, method: str = "mda",
               heads: str | None = None) -> tuple[Path, dict, list[str]]:
    """Score the window with `method` (`score_job`), reusing `curate score`'s results when they are the same job;
    (folder, summary, notes)."""
    job, notes = score_job(s, window, log, method, heads)
    want = job.result_hash
    candidates = [job.out]
    if s.baseline.mode == "reference":
        candidates.insert(0, scores_dir(s.ws, s.circuit.name, method, trajectory=job.request.checkpoints is not None))  # type: ignore[attr-defined]
    for folder in candidates:
        summary = _complete_scores(folder, want)
        if summary is not None:
            log(f"scores ({method}): reusing {folder} (same job)")
            return folder, summary, notes + job.notes
    log(f"scores ({method}): window steps {window.start_step}-{window.end_step} ({job.num_rows} rows) at {job.checkpoint} -> {job.out}")
    ray.ensure()
    summary = run_scoring(job, log)
    return job.out, summary, notes + job.notes


def _complete_scores(folder: Path, fingerprint: str) -> dict | None:
    summary = read_summary(folder)
    return summary if summary is not None and summary.get("fingerprint_hash") == fingerprint else None
