"""`curate experiment`: the causal validation, end to end: baseline, scores, retrained arms, report."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import typer
from rich.console import Console
from rich.table import Table

from curate.commands.options import command, save_config
from curate.errors import CurateError
from curate.locks import hold
from curate.options import composed, flag, opt
from curate.pipelines.experiment_options import DEFAULT_SEEDS, QUICK_BASELINE_STEPS, ExperimentOptions
from curate.workspace import resolve_workspace
from curate.progress import duration_text

HELP = "\n\n".join([
    "Prove an attribution causally: retrain from the window's first checkpoint with the top rows removed or duplicated (and random controls of the same size), for several seeds, and report whether the circuit forms later / sooner.",
    "Arms: baseline, remove-top, remove-random, augment-top, augment-random, augment-neighbors (FAISS neighbours of the top rows, from rows no arm trains on), augment-synthetic (rows built from the top rows' motifs), and a remove-top / augment-top pair per compared scoring method (--methods). Finished runs are skipped on a rerun; --rerun ARM trains one arm again. Output: EXP/report/ (report.md, report.html, figures, results.json), EXP/arms/ARM/seedS/ (run folders), EXP/mixes/, EXP/scores/.",
    f"Default: the workspace's reference run (trained first if missing), the window from step 0 to the first checkpoint after the head formed (no formation: to the last checkpoint at 2/3 of the run, said so in the report), {DEFAULT_SEEDS} seeds, arms trained to twice the window end (the window's length again after it, so a delayed head still forms inside the run). --quick: one seed, an own {QUICK_BASELINE_STEPS}-step baseline at half the corpus's batch size: a smoke test of the pipeline, in which the head does not form, so the report says the effects are not testable. --scales: baseline + augmentation arms on three or more model sizes (--sizes).",
    "--dry-run prints the plan (arms x seeds x steps, the distinct runs to train, rows scored per method, tokens trained) and the estimated time, from scoring batches and training steps timed on --device with the runs' own batch, --micro-batch and --precision; it writes nothing. The baseline must be trained already (or an external --model).",
    "Pythia (a machine with the hub and a GPU): curate experiment --model EleutherAI/pythia-70m --revision step1000 --corpus PILE_PREFIX --window 0:1000 --batch-size 1024 --micro-batch M --precision bf16 --device cuda --workers 1 --dry-run (then again without --dry-run). The arms start from the hub's stepSTART weights with a fresh optimizer and the model's own published optimiser settings and schedule, as curate train --model applies them (--lr / --warmup-steps / --schedule-steps override them). --micro-batch M runs each step's rows M at a time with gradients accumulated over the step, so a step still sees all 1,024 rows in Pythia's order; pick M so that M rows fit the GPU.",
])


@dataclass
class ExperimentCommandOptions:
    """`curate experiment`: the library's ExperimentOptions (composed: its flags are its fields') plus how to print
    (the experiment's progress follows --quiet)."""

    experiment: ExperimentOptions = composed(ExperimentOptions, flat=True)
    dry_run: bool = opt(False, "--dry-run", help="Validate, print the plan (arms x seeds x steps, runs, rows scored, tokens trained) and the estimated time from batches timed on the device; write nothing.")
    as_json: bool = opt(False, "--json", help="Print the verdicts and effects (with --dry-run: the plan) as JSON.")
    quiet: bool = opt(False, "--quiet", help="No progress output.")

    def __post_init__(self) -> None:
        self.experiment = dataclasses.replace(self.experiment, progress=not self.quiet)

    def validate(self) -> None:
        self.experiment.validate()
        if self.dry_run and self.experiment.scales:
            raise CurateError(f"{flag(self, 'dry_run')} estimates one experiment; drop {flag(self, 'scales')}")


def experiment_command(options: ExperimentCommandOptions) -> None:
    # the experiment pipelines import torch, transformers and Ray (~10 s measured): kept out of every command's start-up
    from curate.pipelines.experiment import run_experiment
    from curate.pipelines.experiment_setting import default_out
    from curate.pipelines.scales import run_scales

    opts = options.experiment
    quiet, scales, as_json = options.quiet, opts.scales, options.as_json
    err = Console(stderr=True)
    log = (lambda m: None) if quiet else (lambda m: err.print(m, markup=False, highlight=False))
    if options.dry_run:
        from curate.pipelines.experiment_estimate import experiment_dry_run  # torch: see above

        plan = experiment_dry_run(opts, log)
        if as_json:
            print(json.dumps(plan, indent=2, sort_keys=True, default=str))
        else:
            print_dry_run(plan)
        return
    out = opts.out if opts.out is not None else default_out(opts, resolve_workspace(opts.workspace))
    with hold(out, what="experiment"):
        if scales:
            results = run_scales(opts, log)
            summary = {"scales": results["table"], "report": results["report"]}
        else:
            results = run_experiment(opts, log)
            summary = {"verdicts": results["verdicts"], "effects": results["effects"], "report": results["report"]}
        save_config(out, "experiment", options, resolved={"out": out})
    if as_json:
        print(json.dumps(summary, indent=2, sort_keys=True, default=str))
        return
    _print(results, scales)


def print_dry_run(plan: dict) -> None:
    """The dry run: the plan, the calibration and the estimated time."""
    w, steps = plan["window"], plan["arm_steps"]
    baseline = plan["baseline"]
    lines = [
        f"dry run (nothing written): {plan['command']}",
        f"baseline: {baseline['mode']} {baseline['model'] or baseline['run'] or ''}; corpus {baseline['corpus']}",
        f"window: steps {w['start']}-{w['end']} ({w['rows']:,} rows of {plan['row_len']} tokens; {w['reason']}); heads {', '.join(plan['heads'])}",
        f"arms: {len(plan['arms'])} arms x {len(plan['seeds'])} seeds = {plan['arm_runs']} runs, {plan['runs_to_train']} distinct to train "
        f"(equal runs train once, finished ones are skipped), each steps {steps['from']}-{steps['to']} ({steps['steps']:,} steps x "
        f"{plan['batch_size']:,} rows, micro-batch {plan['micro_batch'] or plan['batch_size']}, {plan['precision']})",
        f"arms: {', '.join(plan['arms'])}; seeds {', '.join(map(str, plan['seeds']))}; rows removed {plan['rows_removed']:,}, added {plan['rows_added']:,}",
    ]
    for m in plan["scoring"]:
        lines.append(f"scoring {m['method']}: {m['rows_to_score']:,} of {m['rows']:,} rows to score ({m['rows_passed']:,} rows passed "
                     f"with the fit) at {m['checkpoint']} on {m['workers']} worker(s): {duration_text(m['seconds'])}")
    lines.append(f"rows scored: {plan['rows_scored']:,}; tokens trained: {plan['tokens_trained']:,} ({plan['tokens_per_run']:,} per run)")
    cal = plan["train_calibration"]
    if cal is not None:
        lines.append(f"training calibration on {plan['device']}: {cal['steps']} steps of {cal['rows_per_step']:,} rows timed, "
                     f"{cal['seconds_per_step']:.3f} s per step")
    est = plan["estimate"]
    lines.append(f"estimate: scoring {duration_text(est['seconds_score'])} + training {duration_text(est['seconds_train'])} on "
                 f"{plan['train_workers']} worker(s) = {duration_text(est['seconds'])}; not included: {est['excludes']}")
    for note in plan["notes"]:
        lines.append(f"note: {note}")
    print("\n".join(lines))


def _print(results: dict, scales: bool) -> None:
    console = Console()
    if scales:
        table = Table(title="acceleration per model size", show_header=True)
        for col in ("size", "params", "arm", "emergence", "baseline emergence", "acceleration", "final score delta"):
            table.add_column(col)
        for row in results["table"]:
            table.add_row(*[str(row[c]) for c in ("size", "params", "arm", "emergence", "baseline_emergence", "acceleration", "score_delta_text")])
        console.print(table)
    else:
        table = Table(title=f"{results['circuit']}: expected effects", show_header=True)
        table.add_column("expected effect")
        table.add_column("status")
        for v in results["verdicts"]:
            table.add_row(v["expectation"], v["status"])
        console.print(table)
    console.print(f"report: {results['report']}/report.md  (html: {results['report']}/report.html)", highlight=False)


def register(app: typer.Typer) -> None:
    command(app, "experiment", ExperimentCommandOptions, experiment_command, help=HELP,
            example="curate experiment --quick --workers 2")
