"""`curate experiment`: the causal validation of an attribution, end to end (MDA-SPEC sections 4 and 5).

1. Baseline: the workspace's reference run (reused when it exists with the default settings, else trained like
   `curate train --default`), an own baseline trained into EXP/baseline (`--quick`, `--corpus`, `--config`, ...),
   a finished curate run folder (`--model RUN`), or an external model with its checkpoints (`--model
   EleutherAI/pythia-70m --revision stepK`: Pythia is its own baseline run).
2. Scores of the attribution window at the checkpoint after formation, by `curate score`'s job (same defaults;
   `curate score`'s own results are reused when their fingerprint matches, an interrupted scoring resumes).
3. Arms (`pipelines.arms`), each retrained from the window's first checkpoint with the baseline's settings
   and row order, for every seed; finished runs are skipped.
4. Per arm and seed: curves of the targeted and the other heads, ICL, loss, emergence (`pipelines.effects`).
5. EXP/report: report.md, report.html, figures, results.json (`pipelines.report`).

What a seed varies: when the window starts at step 0 (and the baseline is a curate run), seed s re-draws the
initial weights (init seed = the baseline's seed + s, so seed 0 is the scored run's own initialisation) as
well as the mixes' random choices; when the window starts later, every arm starts from the baseline's
checkpoint (weights, optimizer, RNG), training has no other randomness, so a seed only changes the mixes'
random choices (random rows, insertion order, synthetic content), and seed-independent arms run once.
"""
from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Callable

from curate.atomic import write_json
from curate.augment.explain import explain_scores
from curate.attribution.scores_folder import open_scores
from curate.errors import CurateError
from curate.outputs import EXPERIMENT, check_output_folder
from curate.pipelines.arms import arm_defs, dedupe, discard, is_finished, parse_arms, train_runs
from curate.pipelines.effects import ALPHA, MIN_SEEDS, comparisons, effects_table, head_movement, head_roles, untestable_reason
from curate.pipelines.method_table import method_table, spearman_matrix
from curate.pipelines.methods import PRIMARY, method_arms
from curate.pipelines.run_metrics import add_outcomes, parse_head_names, read_run_metrics
from curate.pipelines.report import write_report
from curate.pipelines.verdicts import verdicts
from curate.training.curves import CURVES_JSON
from curate.pipelines.arm_plan import ArmPlan, arm_specs, build_mixes, ensure_pool_index, plan_arms, seed_varies
from curate.attribution.scores_folder import Window
from curate.pipelines.baseline_run import prepare_baseline
from curate.pipelines.experiment_scores import run_scores
from curate.pipelines.ray_holder import RayHolder, ray_holder
from curate.pipelines.window_choice import WindowChoice, choose_window
from curate.pipelines.experiment_options import ExperimentOptions, command_line
from curate.pipelines.experiment_setting import EXPERIMENT_FILE, Setting, check_identity, resolve_setting

Log = Callable[[str], None]

REPORT_DIR = "report"


# --------------------------------------------------------------------------- the experiment


def run_experiment(opts: ExperimentOptions, log: Log = lambda m: None, ray: RayHolder | None = None) -> dict:
    """Run (or resume) the experiment and write its report; returns results.json's content."""
    s = resolve_setting(opts, log)
    check_output_folder(s.out, EXPERIMENT, [s.baseline.corpus])
    check_identity(s)
    s.out.mkdir(parents=True, exist_ok=True)
    write_json(s.out / EXPERIMENT_FILE, {"identity": s.identity, "command": command_line(opts)})
    if opts.rerun is not None:
        for arm in parse_arms(opts.rerun, include_baseline=False):
            log(f"--rerun: discarding the {arm} runs and mixes")
            discard(s.out / "arms", s.out / "mixes", arm)

    workers = opts.workers or (os.cpu_count() or 1)
    with ray_holder(workers, ray) as holder:
        run_json = prepare_baseline(s, log)
        choice = choose_window(s, run_json)
        window = choice.window
        plan = plan_arms(s, window, run_json)
        scores, score_summary, score_notes = run_scores(s, window, holder, log)
        method_scores = {PRIMARY: scores}
        for method in s.methods[1:]:  # the compared methods: the same window, checkpoint and heads
            method_scores[method] = run_scores(s, window, holder, log, method=method, heads=",".join(score_summary["heads"]))[0]
        pool_index = ensure_pool_index(s, plan, log)
        mixes, mix_commands = build_mixes(s, method_scores, plan, pool_index, log)
        runs = arm_specs(s, window, plan, run_json, mixes)
        pending = [r for r in dedupe(list(runs)) if not is_finished(r.out_dir, r.key)]
        if pending and workers > 1 and len(pending) > 1:
            holder.ensure()
        counts = train_runs(runs, workers, log, progress=opts.progress and workers == 1, device=opts.device)
    results = collect_results(s, choice, scores, score_summary, plan, runs, mix_commands, counts,
                              score_notes + plan.notes + s.notes, run_json, method_scores)
    results["report"] = str((s.out / REPORT_DIR).resolve())
    write_report(s.out / REPORT_DIR, results, log)
    return results


def lineage_seed(s: Setting, window: Window, seed: int) -> bool:
    """Does this seed's run start from the scored model's own weights (so head L.H is the same head)?"""
    return s.baseline.mode == "external" or window.start_step > 0 or seed == 0


def collect_results(s: Setting, choice: WindowChoice, scores: Path, score_summary: dict, plan: ArmPlan, runs: list,
                    mix_commands: list[dict], counts: dict, notes: list[str], run_json: dict,
                    method_scores: dict[str, Path] | None = None) -> dict:
    """Every number of the experiment (results.json)."""
    window = choice.window
    targeted = parse_head_names(score_summary["heads"])
    metric = s.circuit.metric  # type: ignore[attr-defined]
    by_arm: dict[str, dict] = {}
    for r in runs:
        folder = r.same_as or r.out_dir
        m = read_run_metrics(r.arm, r.seed, folder, metric, targeted, s.threshold, lineage_seed(s, window, r.seed))
        m.run_dir = str(Path(r.out_dir).resolve())
        m.same_as = str(Path(r.same_as).resolve()) if r.same_as is not None else None
        by_arm.setdefault(r.arm, {})[r.seed] = m
    outcome_steps = add_outcomes(by_arm, metric)
    effects = effects_table(by_arm)
    reason = untestable_reason(by_arm["baseline"], s.threshold, metric) if "baseline" in by_arm else "no baseline runs"
    comps = comparisons(by_arm, reason)
    checks = verdicts(by_arm, effects, s.threshold, metric)
    method_scores = method_scores or {PRIMARY: scores}
    methods = [m for m in s.methods if m in method_scores]
    table = method_table(by_arm, methods, s.threshold, metric)
    spearman = spearman_matrix(method_scores) if len(method_scores) > 1 else None
    roles, movement = heads_that_move(s, window, by_arm, metric, methods)
    enrichment = class_enrichment(scores, plan.n_remove)
    rerun = {arm: command_line(s.opts, ["--rerun", arm]) for arm in s.arms}
    baseline_info: dict = {"mode": s.baseline.mode, "corpus": s.baseline.corpus, "batch_size": s.baseline.batch_size}
    if s.baseline.run_dir is not None:
        baseline_info["run"] = str(Path(s.baseline.run_dir).resolve())
        baseline_info["emergence_step"] = choice.emergence
        baseline_info["steps"] = int(run_json["spec"]["steps"])
        if s.baseline.mode == "own":
            baseline_info["command"] = own_baseline_command(s)
    if s.baseline.model is not None:
        baseline_info["model"] = s.baseline.model
    return {
        "circuit": s.circuit.name,  # type: ignore[attr-defined]
        "metric": metric,
        "threshold": s.threshold,
        "experiment": str(s.out.resolve()),
        "baseline": baseline_info,
        "window": {"start": window.start_step, "end": window.end_step, "rows": (window.end_step - window.start_step) * s.baseline.batch_size,
                   "reason": choice.reason},
        "scores": {"folder": str(scores.resolve()), "heads": score_summary["heads"], "checkpoint": open_scores(scores).checkpoint,
                   "mode": score_summary.get("mode"), "rows": score_summary.get("rows"),
                   "command": score_command(s, window, score_summary)},
        "targeted_heads": score_summary["heads"],
        "arm_names": list(s.arms),
        "arms": {arm: {"description": arm_defs()[arm].description,
                       "runs": {str(seed): m.to_json() for seed, m in sorted(by_arm[arm].items())}} for arm in s.arms},
        "arm_steps": plan.steps,
        "k_rows": plan.n_remove,
        "augment_rows": plan.n_add,
        "k": s.opts.k,
        "augment": s.opts.augment,
        "seeds": s.seeds,
        "seed_varies": seed_varies(s, window),
        "eval_every": s.eval_every,
        "arm_eval_every": s.arm_eval_every,
        "neighbour_pool": list(plan.pool) if plan.pool is not None and "augment-neighbors" in s.arms else None,
        "effects": [e.to_json() for e in effects],
        "outcomes": outcome_steps.to_json(),
        "testable": reason,
        "comparisons": [c.to_json() for c in comps],
        "test": (f"paired t-test over distinct seed pairs, two-sided, Holm-corrected across the table, alpha {ALPHA}; "
                 f"no test where a pair is censored (a run never formed: the area under the curve is compared instead) "
                 f"or with fewer than {MIN_SEEDS} distinct pairs"),
        "verdicts": [v.to_json() for v in checks],
        "methods": methods,
        "method_scores": {m: str(Path(f).resolve()) for m, f in method_scores.items()},
        "method_table": [r.to_json() for r in table],
        "method_test": (f"paired t-test over distinct seed pairs, two-sided, Holm-corrected across each outcome's table; "
                        f"no test on a censored shift (a run never formed) or with fewer than {MIN_SEEDS} distinct pairs"),
        "spearman": spearman,
        "head_roles": roles,
        "head_movement": movement,
        "enrichment": enrichment,
        "commands": {"experiment": command_line(s.opts), "rerun_arm": rerun, "mixes": mix_commands},
        "runs_trained": counts,
        "notes": notes,
    }


def heads_that_move(s: Setting, window: Window, by_arm: dict, metric: str, methods: list[str]) -> tuple[dict, list[dict]]:
    """Each head's role at the scored checkpoint (the baseline's evaluation at the window's end, `effects.head_roles`),
    and per remove-top / augment-top arm the movement of each role's heads (`effects.head_movement`)."""
    if s.baseline.run_dir is None:
        return {}, []
    points = json.loads((Path(s.baseline.run_dir) / CURVES_JSON).read_text())["points"]
    at = [p for p in points if int(p["step"]) <= window.end_step]
    if not at:
        return {}, []
    roles = head_roles(at[-1], s.threshold)
    movement = []
    for m in methods:
        for arm in method_arms(m):
            hm = head_movement(arm, by_arm, roles, metric)
            if hm is not None:
                movement.append({"method": m, **hm.to_json()})
    return roles, movement


def score_command(s: Setting, window: Window, summary: dict) -> str:
    b = s.baseline
    if b.mode == "external":
        model, revision = b.checkpoint(s.opts.revision or f"step{window.end_step}")
    else:
        model, revision = str(Path(b.run_dir).resolve()), f"step{window.end_step}"  # type: ignore[arg-type]
    ensemble = summary.get("ensemble")
    if ensemble:  # the members' runs (each scored with the heads option as given: auto localizes each member's own)
        args = ["curate", "score", "--circuit", s.circuit.name, "--ensemble", ",".join(m["run"] for m in ensemble["members"])]  # type: ignore[attr-defined]
    else:
        args = ["curate", "score", "--circuit", s.circuit.name, "--model", str(model)]  # type: ignore[attr-defined]
    heads = ensemble["heads_option"] if ensemble else ",".join(summary["heads"])
    args += ["--revision", revision] if revision and not ensemble else []  # an ensemble's members: each its own checkpoint
    args += ["--window", f"{window.start_step}:{window.end_step}", "--heads", heads, "--corpus", b.corpus,
             "--out", str(Path(summary.get("out") or s.out / "scores").resolve())]
    if s.opts.fit_rows:
        args += ["--fit-rows", str(s.opts.fit_rows)]
    if summary.get("method", PRIMARY) != PRIMARY:
        args += ["--method", str(summary["method"])]
    if summary.get("mode"):
        args += ["--mode", str(summary["mode"])]
    if ensemble and s.score_checkpoints is not None:  # every member's trajectory, as the experiment asked for it
        args += ["--checkpoints", s.score_checkpoints, "--aggregate", s.opts.aggregate]
    if summary.get("trajectory"):
        t = summary["trajectory"]
        args += ["--checkpoints", ",".join(f"step{c}" for c in t["checkpoints"]), "--aggregate", t["aggregate"]]
    return shlex.join(args)


def own_baseline_command(s: Setting) -> str:
    spec = s.baseline.own_spec
    args = ["curate", "train", "--corpus", spec.corpus, "--steps", str(spec.steps), "--batch-size", str(spec.batch_size),  # type: ignore[attr-defined]
            "--eval-every", str(spec.eval_every), "--checkpoints", spec.checkpoints, "--seed", str(spec.seed),  # type: ignore[attr-defined]
            "--lr", repr(spec.lr), "--warmup-steps", str(spec.warmup_steps)]  # type: ignore[attr-defined]
    if s.baseline.config_file:
        args += ["--config", s.baseline.config_file]
    args += ["--out", str(Path(s.baseline.run_dir).resolve()), "--resume"]  # type: ignore[arg-type]
    return shlex.join(args)


def class_enrichment(scores: Path, top_rows: int) -> dict:
    """Structural classes enriched among the top rows (augment.explain), or why they could not be computed."""
    try:
        rep = explain_scores(scores, top=str(top_rows))
    except CurateError as e:
        return {"error": str(e)}
    # the top tail (the rows remove-top drops), flat per class; the bottom tail's ratio and the size flag beside it
    classes = [
        {"label": c.label, "top_count": c.top.count, "top_share": c.top.share, "base_count": c.base_count,
         "base_share": c.base_share, "ratio": c.top.ratio, "ci_low": c.top.ci_low, "ci_high": c.top.ci_high,
         "tokens_matched_ratio": c.top.adjusted[0].ratio if c.top.adjusted else None,
         "bottom_ratio": c.bottom.ratio, "size_effect": c.size_effect}
        for c in rep.classes
    ]
    return {"top_k": rep.top_k, "base_rows": rep.base_rows, "base_sampled": rep.base_sampled,
            "classes": classes, "tail_share": rep.tail_share["top"]}
