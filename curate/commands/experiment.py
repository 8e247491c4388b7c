"""`curate experiment`: the causal validation, end to end: baseline, scores, retrained arms, report."""
from __future__ import annotations

import json
from dataclasses import dataclass

import typer
from rich.console import Console
from rich.table import Table

from curate.commands.options import command, save_config
from curate.locks import hold
from curate.options import opt
from curate.pipelines.experiment_options import ExperimentOptions
from curate.workspace import resolve_workspace

HELP = "\n\n".join([
    "Prove an attribution causally: retrain from the window's first checkpoint with the top rows removed or duplicated (and random controls of the same size), for several seeds, and report whether the circuit forms later / sooner.",
    "Arms: baseline, remove-top, remove-random, augment-top, augment-random, augment-neighbors (FAISS neighbours of the top rows, from rows no arm trains on), augment-synthetic (rows built from the top rows' motifs). Finished runs are skipped on a rerun; --rerun ARM trains one arm again. Output: EXP/report/ (report.md, report.html, figures, results.json), EXP/arms/ARM/seedS/ (run folders), EXP/mixes/, EXP/scores/.",
    "Default: the workspace's reference run (trained first if missing), the window from step 0 to the first checkpoint after the head formed (no formation: to the last checkpoint at 2/3 of the run, said so in the report), 3 seeds, arms trained to twice the window end (the window's length again after it, so a delayed head still forms inside the run). --quick: one seed, an own 300-step baseline at half the corpus's batch size, all seven arms: a smoke test of the pipeline, in which the head does not form, so the report says the effects are not testable (timing in bench/RESULTS.md). --scales: baseline + augmentation arms on three or more model sizes (--sizes).",
    "Pythia setting (a machine with the hub and a GPU): curate experiment --model EleutherAI/pythia-70m --revision step1000 --corpus PILE_PREFIX --window 0:1000 --batch-size 1024 --lr 1e-3 --warmup-steps 1430 --schedule-steps 143000 --device cuda --workers 1. The arms start from the hub's stepSTART weights with a fresh optimizer. Cost (an estimate, not measured): scoring 1.02M rows of 2,049 tokens, then 21 arm runs of ~1,500 steps x 1,024 rows (3.1B tokens each); Pythia's own run took roughly 5 A100-hours per 1,500 steps in mixed precision, and this trainer runs fp32 with eager attention, so expect several times that per run. The trainer has no gradient accumulation: a batch of 1024 x 2048 tokens must fit at once, which it does not on one 80 GB GPU; a smaller --batch-size runs but changes which rows each step sees.",
])


@dataclass
class ExperimentCommandOptions(ExperimentOptions):
    """`curate experiment`: the experiment's options plus how to print (progress follows --quiet)."""

    as_json: bool = opt(False, "--json", help="Print the verdicts and effects as JSON.")
    quiet: bool = opt(False, "--quiet", help="No progress output.")

    def __post_init__(self) -> None:
        self.progress = not self.quiet


def experiment_command(opts: ExperimentCommandOptions) -> None:
    # the experiment pipelines import torch, transformers and Ray (~10 s measured): kept out of every command's start-up
    from curate.pipelines.experiment import run_experiment
    from curate.pipelines.experiment_setting import default_out
    from curate.pipelines.scales import run_scales

    quiet, scales, as_json = opts.quiet, opts.scales, opts.as_json
    err = Console(stderr=True)
    log = (lambda m: None) if quiet else (lambda m: err.print(m, markup=False, highlight=False))
    out = opts.out if opts.out is not None else default_out(opts, resolve_workspace(opts.workspace))
    with hold(out, what="experiment"):
        if scales:
            results = run_scales(opts, log)
            summary = {"scales": results["table"], "report": results["report"]}
        else:
            results = run_experiment(opts, log)
            summary = {"verdicts": results["verdicts"], "effects": results["effects"], "report": results["report"]}
        save_config(out, "experiment", opts, resolved={"out": out})
    if as_json:
        print(json.dumps(summary, indent=2, sort_keys=True, default=str))
        return
    _print(results, scales)


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
