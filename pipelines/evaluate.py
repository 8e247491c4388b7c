"""`curate evaluate`: the leave-subset-out score (LDS) of each scoring method for circuit formation.

1. The experiment's baseline, window and scores (`pipelines.baseline_run`, `window_choice`, `experiment_scores`: the reference run by default, a
   run folder with --model; every method in --methods scores the same window, checkpoint and heads; finished
   scores are reused), plus any extra scores folders of the same window (--scores NAME=FOLDER).
2. Subsets: subset i of the split (`pipelines.lds.subset_seeds`) drops --drop random rows of the window; it is the
   experiment's remove-random mix with the subset's seed (`build-mix --remove DROP --control random --seed S`),
   so the rows a retrain drops are exactly its plan's `drop` list (EVAL/subsets/subset-S/). --design
   (`pipelines.lds_design`): replace (default) trains the baseline's stream with a filler row, one the retrains never
   train otherwise, at each dropped row's position (the mix folder's replace-plan.json, filler.json); compact trains
   the mix's plan.json, where the later rows move up into the freed positions.
3. Retrains: each subset's mix trained like the experiment's arms (`pipelines.arm_plan.arm_specs`, arm seed 0:
   from the window's first checkpoint, or at a window from step 0 from the scored run's own initialisation),
   in-process or on Ray (`pipelines.arms.train_runs`); finished retrains are skipped, a killed one resumes from
   its last checkpoint (EVAL/retrains/subset-S/). The retrains depend only on the subsets, so every method and
   every later variant is scored against the same ones.
4. Outcomes per retrain (`pipelines.lds_outcomes`): the area under the targeted heads' mean circuit score to the
   horizon, and the interpolated emergence step of the best targeted head (censored: never formed).
5. Per method: predicted effect of a subset = sum of its dropped rows' scores; LDS = Spearman(predicted,
   measured) across subsets with a bootstrap interval (`pipelines.lds`). Measured effect: the area lost
   (-area) and the emergence step, so a positive LDS means the subsets whose rows score higher delay the circuit
   more. EVAL/lds.json, report.md, lds.png (`pipelines.evaluate_report`).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from curate.errors import CurateError
from curate.pipelines.arms import is_finished
from curate.pipelines.evaluate_options import EvaluateOptions, parse_extra_scores, parse_lds_methods
from curate.pipelines.lds import BOOTSTRAP_SEED, CONFIDENCE, LdsResult, lds, predicted_effects, subset_seeds
from curate.pipelines.lds_design import (REPLACE, REPLACE_PLAN, FillerRange, check_filler, design_identity, filler_range,
                                         write_replace_plan)
from curate.pipelines.lds_outcomes import AREA, EMERGENCE, RetrainOutcome, read_outcome
from curate.progress import beating, heartbeat_seconds

Log = Callable[[str], None]

EVALUATION_FILE = "evaluation.json"
SUBSETS_DIR = "subsets"
RETRAINS_DIR = "retrains"
EVALUATIONS_DIR = "evaluations"
RETRAIN_ARM = "remove-random"  # a subset's retrain is this arm of the experiment with the subset's mix


def default_out(opts: EvaluateOptions) -> Path:
    """WORKSPACE/evaluations/CIRCUIT-SPLIT."""
    from curate.attribution.circuits import get_circuit
    from curate.workspace import resolve_workspace

    return resolve_workspace(opts.workspace) / EVALUATIONS_DIR / f"{get_circuit(opts.circuit).name}-{opts.split}"


def subset_folder(out: Path, seed: int) -> Path:
    return out / SUBSETS_DIR / f"subset-{seed}"


def retrain_folder(out: Path, seed: int) -> Path:
    return out / RETRAINS_DIR / f"subset-{seed}"


@dataclass
class Subset:
    """One subset: its seed, the window-relative rows it drops, its mix and its retrain (design replace: the mix folder's
    filler.json records the rows that take the dropped rows' positions)."""

    seed: int
    rows: np.ndarray
    mix: Path
    run: object  # pipelines.arms.ArmRun


def check_evaluation_folder(out: Path, identity: dict) -> None:
    """An existing folder must be empty or an evaluation of the same retrains (nothing is mixed or overwritten)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise CurateError(f"{out}: exists and is not a folder; choose another output folder")
    path = out / EVALUATION_FILE
    if not path.is_file():
        if any(out.iterdir()):
            raise CurateError(f"{out}: folder exists, is not empty and is not a curate evaluation; it is left as it is, "
                              "choose another output folder")
        return
    try:
        old = json.loads(path.read_text()).get("identity", {})
    except (json.JSONDecodeError, AttributeError):
        raise CurateError(f"{path}: not valid JSON; remove it or use another output folder") from None
    new = json.loads(json.dumps(identity, default=str))
    if old != new:
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise CurateError(f"{out}: holds an evaluation with other settings (changed: {', '.join(changed)}); "
                          "use another output folder")


def retrain_heartbeat(runs: list, log: Log, every: float | None = None):
    """While the retrains train, log every `every` seconds ($CURATE_HEARTBEAT_S) how many are finished."""
    def message(elapsed: float) -> str:
        done = sum(is_finished(r.out_dir, r.key) for r in runs)
        minutes, seconds = divmod(int(elapsed), 60)
        return f"evaluate: {done}/{len(runs)} retrains finished ({minutes}:{seconds:02d} elapsed)"

    return beating(message, heartbeat_seconds() if every is None else every, log)


def run_evaluation(opts: EvaluateOptions, log: Log = lambda m: None, heartbeat_s: float | None = None) -> dict:
    """Run (or resume) the evaluation and write its report; returns lds.json's content."""
    from curate.atomic import write_json
    from curate.pipelines.arm_plan import plan_arms
    from curate.pipelines.arms import train_runs
    from curate.pipelines.baseline_run import prepare_baseline
    from curate.pipelines.ray_holder import ray_holder
    from curate.pipelines.window_choice import choose_window
    from curate.pipelines.evaluate_report import write_report
    from curate.pipelines.experiment_setting import abs_path, resolve_setting

    opts.validate()
    methods = parse_lds_methods(opts.lds_methods)
    extra = parse_extra_scores(opts.extra_scores, methods)
    out = Path(abs_path(opts.out if opts.out is not None else default_out(opts)))
    exp_opts = replace(opts, out=out, arms=RETRAIN_ARM, k=opts.drop, seeds=1, first_seed=0, methods="mda")
    s = resolve_setting(exp_opts, log)
    identity = {**s.identity, "drop": opts.drop, "split": opts.split, **design_identity(opts.design)}
    check_evaluation_folder(out, identity)
    for name, folder in extra.items():
        if not folder.is_dir():
            raise CurateError(f"--scores {name}={folder}: scores folder not found")

    workers = opts.workers or (os.cpu_count() or 1)
    with ray_holder(workers) as holder:
        run_json = prepare_baseline(s, log)
        window = choose_window(s, run_json).window
        plan = plan_arms(s, window, run_json)
        horizon = opts.horizon if opts.horizon is not None else plan.steps
        if not window.start_step < horizon <= plan.steps:
            raise CurateError(f"--horizon {horizon}: must lie after the window's start (step {window.start_step}) and at most "
                              f"at the retrains' last step {plan.steps}")
        fill = filler_range(plan.steps, s.baseline.batch_size, plan.row_limit) if opts.design == REPLACE else None
        if fill is not None:
            check_filler(plan.n_remove, fill)
        out.mkdir(parents=True, exist_ok=True)  # the first byte written into the folder: every input checked
        write_json(out / EVALUATION_FILE, {"identity": identity})
        folders, summary = score_methods(s, window, methods, holder, log)
        folders.update(extra)
        values = window_values(folders, window, s.baseline.batch_size, s.baseline.corpus)
        subsets = build_subsets(s, window, plan, run_json, folders[methods[0]], out, opts.split, opts.subsets, log, fill)
        runs = [sub.run for sub in subsets]
        pending = [r for r in runs if not is_finished(r.out_dir, r.key)]  # type: ignore[attr-defined]
        log(f"evaluate: {len(runs)} subsets of the window ({len(runs) - len(pending)} retrained already), "
            f"each drops {len(subsets[0].rows)} of {values[methods[0]].shape[0]} rows (design {opts.design})")
        if pending and workers > 1 and len(pending) > 1:
            holder.ensure()
        with retrain_heartbeat(runs, log, heartbeat_s):
            counts = train_runs(runs, workers, log, device=s.opts.device)  # type: ignore[arg-type]

    from curate.pipelines.run_metrics import parse_head_names

    targeted = parse_head_names(summary["heads"])
    metric = s.circuit.metric  # type: ignore[attr-defined]
    outcomes = [read_outcome(sub.run.out_dir, metric, targeted, s.threshold, window.start_step, horizon)  # type: ignore[attr-defined]
                for sub in subsets]
    baseline = baseline_outcome(s, metric, targeted, window.start_step, horizon)
    predicted = {name: predicted_effects(v, [sub.rows for sub in subsets], name) for name, v in values.items()}
    table = lds_table(predicted, outcomes, opts.bootstrap)
    results = {
        "circuit": s.circuit.name,  # type: ignore[attr-defined]
        "metric": metric,
        "threshold": s.threshold,
        "split": opts.split,
        "drop": opts.drop,
        "design": opts.design,
        "filler_rows": fill.to_json() if fill is not None else None,
        "window": {"start": window.start_step, "end": window.end_step, "rows": int(values[methods[0]].shape[0]),
                   "batch_size": s.baseline.batch_size},
        "horizon": horizon,
        "retrain_steps": plan.steps,
        "targeted_heads": list(summary["heads"]),
        "scores": {name: str(Path(f).resolve()) for name, f in folders.items()},
        "methods": list(folders),
        "baseline": baseline.to_json() if baseline is not None else None,
        "subsets": [{"seed": sub.seed, "dropped": int(len(sub.rows)), "mix": str(sub.mix), "run": str(sub.run.out_dir),  # type: ignore[attr-defined]
                     "plan": str(sub.run.spec.plan),  # type: ignore[attr-defined]
                     "outcome": o.to_json(),
                     "predicted": {name: float(p[i]) for name, p in predicted.items()}}
                    for i, (sub, o) in enumerate(zip(subsets, outcomes))],
        "lds": [r.to_json() for r in table],
        "bootstrap": {"resamples": opts.bootstrap, "seed": BOOTSTRAP_SEED, "confidence": CONFIDENCE, "method": "percentile, subsets resampled"},
        "measured": {AREA: "minus the area under the targeted heads' mean score from the window's start to the horizon, "
                           "per step (higher: the circuit lost more)",
                     EMERGENCE: "the best targeted head's interpolated emergence step (higher: later; a retrain that never "
                                "formed ranks after every one that did)"},
        "runs_trained": counts,
    }
    write_report(out, results, log)
    return results


def score_methods(s, window, methods: list[str], holder, log: Log) -> tuple[dict[str, Path], dict]:
    """Each method's scores of the window (the first method chooses the heads, the others score the same heads)."""
    from curate.pipelines.experiment_scores import run_scores

    folders: dict[str, Path] = {}
    first, summary, notes = run_scores(s, window, holder, log, method=methods[0])
    for note in notes:
        log(f"note: {note}")
    folders[methods[0]] = first
    for method in methods[1:]:
        folders[method] = run_scores(s, window, holder, log, method=method, heads=",".join(summary["heads"]))[0]
    return folders, summary


def window_values(folders: dict[str, Path], window, batch_size: int, corpus: str) -> dict[str, np.ndarray]:
    """Each scores folder's score per window row; a folder of another window or corpus is an error."""
    from curate.attribution.scores_folder import open_scored_corpus, open_scores, read_window
    from curate.augment.mix import window_scores

    out: dict[str, np.ndarray] = {}
    for name, folder in folders.items():
        scores = open_scores(folder)
        w = read_window(scores)
        if (w.start_step, w.end_step, w.batch_size) != (window.start_step, window.end_step, batch_size):
            raise CurateError(f"{folder}: scores the window {w.start_step}:{w.end_step} at batch {w.batch_size}, "
                              f"not this evaluation's {window.start_step}:{window.end_step} at batch {batch_size}")
        _, scored_corpus = open_scored_corpus(scores, w.batch_size)
        if Path(scored_corpus).resolve() != Path(corpus).resolve():
            raise CurateError(f"{folder}: scores the corpus {scored_corpus}, not this evaluation's {corpus}")
        out[name] = window_scores(scores, w)
    return out


def build_subsets(s, window, plan, run_json: dict, mix_source: Path, out: Path, split: str, count: int, log: Log,
                  fill: FillerRange | None = None) -> list[Subset]:
    """Every subset's mix (built once, atomically) and retrain spec; with `fill` (design replace) the mix folder also
    holds the replace plan, whose filler rows come from `fill`, and the retrain trains that plan."""
    from curate.augment.mix import MixSpec, build_mix
    from curate.pipelines.arm_plan import arm_specs
    from curate.pipelines.arms import ArmRun, run_key

    one = replace(s, arms=[RETRAIN_ARM], seeds=[0])
    first_row = window.start_step * s.baseline.batch_size
    corpus = str(Path(s.baseline.corpus).resolve())
    subsets = []
    for seed in subset_seeds(split, count):
        mix = subset_folder(out, seed)
        if not (mix / "plan.json").is_file():
            log(f"evaluate: subset {seed} -> {mix}")
            add = None if fill is None else replace_plan_writer(mix, corpus, fill, seed, first_row)
            build_mix(mix_source, mix, MixSpec(remove=s.opts.k, control="random", seed=seed), before_manifest=add)
        dropped = np.asarray(json.loads((mix / "plan.json").read_text()).get("drop", []), dtype=np.int64)
        template = arm_specs(one, window, plan, run_json, {(RETRAIN_ARM, 0): mix})[0]
        spec, key = template.spec, template.key
        if fill is not None:
            spec = replace(spec, plan=str((mix / REPLACE_PLAN).resolve()))
            key = run_key(spec)
        run = ArmRun("subset", seed, retrain_folder(out, seed), spec, key)
        subsets.append(Subset(seed, dropped - first_row, mix, run))
    return subsets


def replace_plan_writer(mix: Path, corpus: str, fill: FillerRange, seed: int, first_row: int) -> Callable[[Path], None]:
    """build-mix's hook that writes the replace design's plan into the mix's temporary folder (before its manifest)."""
    return lambda tmp: write_replace_plan(tmp, mix, corpus, fill, seed, first_row)


def baseline_outcome(s, metric: str, targeted, start: int, horizon: int) -> RetrainOutcome | None:
    """The baseline run's outcomes (None for an external model, or when its curves stop before the horizon)."""
    if s.baseline.run_dir is None:
        return None
    try:
        return read_outcome(Path(s.baseline.run_dir), metric, targeted, s.threshold, start, horizon)
    except CurateError:
        return None


def measured(outcomes: list[RetrainOutcome], outcome: str) -> tuple[np.ndarray, int]:
    """The measured effect per subset (higher: the circuit lost more) and how many are censored."""
    if outcome == AREA:
        return np.asarray([-o.area for o in outcomes], dtype=np.float64), 0
    censored = [o.emergence is None for o in outcomes]
    beyond = max(o.last_step for o in outcomes) + 1.0  # after every formed run: Spearman only uses the ranks
    return np.asarray([beyond if o.emergence is None else o.emergence for o in outcomes], dtype=np.float64), sum(censored)


def lds_table(predicted: dict[str, np.ndarray], outcomes: list[RetrainOutcome], resamples: int) -> list[LdsResult]:
    """The LDS of every scores folder's predicted effects on both outcomes."""
    rows = []
    for name, p in predicted.items():
        for outcome in (AREA, EMERGENCE):
            m, censored = measured(outcomes, outcome)
            rows.append(lds(name, outcome, p, m, resamples, censored=censored))
    return rows
