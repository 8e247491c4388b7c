"""The baseline run, the attribution window chosen on it, the heads and the window's scores (by `curate score`'s
job), and the one Ray session scoring and arms share."""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from curate.errors import CurateError
from curate.pipelines.experiment_setting import Setting, abs_path

Log = Callable[[str], None]

FALLBACK_WINDOW_SHARE = 2 / 3  # window end when the circuit never formed: the last checkpoint at 2/3 of the baseline


# --------------------------------------------------------------------------- Ray, shared by scoring and arms


class RayHolder:
    """Starts one local Ray session on first need and keeps it for the rest of the experiment."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.stack = contextlib.ExitStack()
        self.started = False

    def ensure(self) -> None:
        if not self.started:
            from curate.pipelines.ray_pool import ray_session

            self.stack.enter_context(ray_session(None, num_cpus=self.workers))
            self.started = True

    def close(self) -> None:
        self.stack.close()


@contextlib.contextmanager
def ray_holder(workers: int, outer: RayHolder | None = None) -> Iterator[RayHolder]:
    if outer is not None:
        yield outer
        return
    holder = RayHolder(workers)
    try:
        yield holder
    finally:
        holder.close()


# --------------------------------------------------------------------------- the baseline


def prepare_baseline(s: Setting, log: Log) -> dict:
    """Train (or reuse) the baseline run; returns its run.json (empty for an external model)."""
    b = s.baseline
    if b.mode == "reference":
        from curate.default_corpus import ensure_default_corpus
        from curate.training.reference import ensure_reference_run

        ensure_default_corpus(s.ws, s.opts.progress, log)
        b.run_dir = Path(abs_path(ensure_reference_run(s.ws, s.opts.progress, log)))
    elif b.mode == "own":
        from curate.corpus import open_corpus
        from curate.workspace import default_corpus_dir
        from curate.training.trainer import train

        if s.opts.corpus is None:
            from curate.default_corpus import ensure_default_corpus

            ensure_default_corpus(s.ws, s.opts.progress, log)
            assert Path(b.corpus) == Path(abs_path(default_corpus_dir(s.ws)))
        open_corpus(b.corpus)
        assert b.run_dir is not None and b.own_spec is not None
        log(f"baseline: {b.run_dir}")
        train(b.own_spec, b.run_dir, progress=s.opts.progress, resume=True)  # type: ignore[arg-type]
    if b.run_dir is None:
        return {}
    raw = b.run_json()
    from curate.training.curves import SUMMARY_JSON

    summary = json.loads((b.run_dir / SUMMARY_JSON).read_text())
    if summary.get("complete") is not True:
        raise CurateError(f"{b.run_dir}: the baseline run is not finished; resume its training first")
    b.batch_size = int(raw["batch_size"])
    s.eval_every = int(raw["spec"].get("eval_every") or s.eval_every or 100)
    return raw


# --------------------------------------------------------------------------- window, heads, scores


@dataclass
class Window:
    start: int
    end: int
    reason: str
    emergence: int | None  # the baseline's emergence step (curate runs only)


def choose_window(s: Setting, run_json: dict) -> Window:
    """The attribution window [start, end): --window, else 0 to the first checkpoint at/after the baseline's
    emergence, else (never formed) 0 to the last checkpoint at 2/3 of the baseline."""
    from curate.pipelines.run_metrics import emergence_step
    from curate.pipelines.score_request import parse_window
    from curate.training.curves import CURVES_JSON
    from curate.training.models import list_checkpoints

    start, end = parse_window(s.opts.window) if s.opts.window is not None else (None, None)
    start = start or 0
    if s.baseline.mode == "external":
        assert end is not None
        return Window(start, end, "given (--window)", None)
    assert s.baseline.run_dir is not None
    checkpoints = sorted(list_checkpoints(s.baseline.run_dir))
    points = json.loads((s.baseline.run_dir / CURVES_JSON).read_text())["points"]
    from curate.pipelines.run_metrics import curve_metrics

    metric = s.circuit.metric  # type: ignore[attr-defined]
    best = curve_metrics(points, metric, [])[f"{metric}_best"]
    formed = emergence_step([int(p["step"]) for p in points], best, s.threshold)
    if end is None and s.opts.revision is not None:
        m = s.opts.revision[4:] if s.opts.revision.startswith("step") else ""
        if not m.isdigit():
            raise CurateError(f"revision {s.opts.revision!r}: expected stepK")
        end, reason = int(m), f"the checkpoint given (--revision {s.opts.revision})"
    elif end is not None:
        reason = "given (--window)"
    elif formed is not None:
        after = [c for c in checkpoints if c >= formed]
        if not after:
            raise CurateError(f"{s.baseline.run_dir}: no saved checkpoint at or after step {formed}, where the circuit formed")
        end, reason = after[0], f"the first checkpoint at/after the baseline's emergence (step {formed})"
    else:
        final = int(run_json["spec"]["steps"])
        limit = int(final * FALLBACK_WINDOW_SHARE)
        before = [c for c in checkpoints if start < c <= limit]
        if not before:
            raise CurateError(f"{s.baseline.run_dir}: no checkpoint after step {start} and before step {limit}; give the window")
        end = before[-1]
        reason = (f"the circuit never formed in the baseline (best score {max(best):.3f} < threshold {s.threshold:g}): "
                  f"the last checkpoint at 2/3 of the baseline")
    if end <= start:
        raise CurateError(f"the window {start}:{end} is empty")
    if end not in checkpoints:
        have = ", ".join(f"step{c}" for c in checkpoints[:14])
        raise CurateError(f"{s.baseline.run_dir}: no checkpoint step{end} to score the window's end at (have: {have}, ...)")
    if start > 0 and start not in checkpoints:
        raise CurateError(f"{s.baseline.run_dir}: no checkpoint step{start} for the arms to start from (the window's start)")
    return Window(start, end, reason, formed)


def choose_heads(s: Setting, window: Window, corpus_path: str, model_spec: str, revision: str | None) -> tuple[str, list[str]]:
    """`--heads` as given, or (auto with no head localized at the checkpoint) the best candidate head, noted."""
    if s.opts.heads.strip().lower() != "auto":
        return s.opts.heads, []
    import torch

    from curate.corpus import open_corpus
    from curate.pipelines.run_metrics import eligible_heads
    from curate.attribution.probes import corpus_probes
    from curate.training.models import load_model

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
    note = (f"no {loc.circuit} head localized at step{window.end} ({'; '.join(loc.notes) or 'none passes'}): the scores "
            f"target the best candidate head {best} ({loc.metric} {float(values[best.layer, best.head]):.3f})")
    return str(best), [note]


def run_scores(s: Setting, window: Window, ray: RayHolder, log: Log, method: str = "mda",
               heads: str | None = None) -> tuple[Path, dict, list[str]]:
    """Score the window with `method` (reusing `curate score`'s results when they are the same job); (folder, summary,
    notes). MDA chooses the heads (and takes the experiment's --mode / --checkpoints / --aggregate); another method
    scores the same window at the same checkpoint for the `heads` MDA used, into EXP/scores-<method>."""
    from curate.workspace import scores_dir
    from curate.pipelines.score_job import resolve_job
    from curate.pipelines.score_request import DEFAULT_FIT_ROWS, ScoreRequest
    from curate.pipelines.score_run import run_job

    b = s.baseline
    if b.mode == "external":
        model_spec, revision = b.checkpoint(s.opts.revision or f"step{window.end}")
    else:
        model_spec, revision = str(b.run_dir), f"step{window.end}"
    assert model_spec is not None
    notes: list[str] = []
    if heads is None:
        heads, notes = choose_heads(s, window, b.corpus, model_spec, revision)
    mda = method == "mda"
    req = ScoreRequest(
        circuit=s.circuit.name, method=method, corpus=b.corpus, model=model_spec, revision=revision, heads=heads,  # type: ignore[attr-defined]
        window=f"{window.start}:{window.end}", out=s.out / ("scores" if mda else f"scores-{method}"), workers=s.opts.workers,
        device=s.opts.device, fit_rows=s.opts.fit_rows or DEFAULT_FIT_ROWS, seed=0, workspace=s.opts.workspace,
        progress=s.opts.progress, mode=s.opts.score_mode,
        checkpoints=s.score_checkpoints if mda else None, aggregate=s.opts.aggregate if mda else "sum",
    )
    job = resolve_job(req, log)
    want = job.result_hash
    candidates = [job.out]
    if b.mode == "reference":
        candidates.insert(0, scores_dir(s.ws, s.circuit.name, method, trajectory=req.checkpoints is not None))  # type: ignore[attr-defined]
    for folder in candidates:
        summary = _complete_scores(folder, want)
        if summary is not None:
            log(f"scores ({method}): reusing {folder} (same job)")
            return folder, summary, notes + job.notes
    log(f"scores ({method}): window steps {window.start}-{window.end} ({job.num_rows} rows) at {job.checkpoint} -> {job.out}")
    ray.ensure()
    summary = run_job(job, log)
    return job.out, summary, notes + job.notes


def _complete_scores(folder: Path, fingerprint: str) -> dict | None:
    from curate.attribution.scores_folder import read_summary

    summary = read_summary(folder)
    return summary if summary is not None and summary.get("fingerprint_hash") == fingerprint else None
