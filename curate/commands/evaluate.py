"""`curate evaluate`: the leave-subset-out score (LDS) of the scoring methods for circuit formation."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import typer

from curate.commands.options import command, save_config
from curate.options import composed, opt
from curate.pipelines.evaluate_options import EvaluateOptions

HELP = "\n\n".join([
    "Evaluate attributions the way TRAK, kronfluence and bergson do, for circuit formation: retrain on random subsets of the attribution window (each drops --drop of its rows) and correlate, across subsets, the predicted effect (the sum of the dropped rows' scores) with the measured one (Spearman: the LDS), per scoring method, with a bootstrap interval over subsets.",
    "Measured per retrain: the area under the targeted heads' mean circuit score from the window's start to --horizon, and the best targeted head's interpolated emergence step. The retrains depend only on the subsets: every method in --methods and every extra scores folder (--scores NAME=FOLDER) is evaluated on the same ones, so a new variant costs its scoring only. --split dev and --split report draw from disjoint subset seeds: choose variants on dev, report on report.",
    "--design replace (the default) swaps each dropped row in place for a row the retrains never train otherwise (after their last trained row, before the held-out rows; seeded), so every other row trains at its baseline step; --design compact removes the dropped rows and moves the later rows up (the experiment's remove-random mix). An evaluation folder holds one design.",
    "Baseline, window and retrains as in `curate experiment` (the workspace's reference run by default, --model RUN, --window). Finished retrains are skipped on a rerun; a killed one resumes from its last checkpoint. Output: EVAL/lds.json, report.md, lds.png, command.json; EVAL/subsets/ (mixes), EVAL/retrains/ (runs), EVAL/scores*/.",
    "Example: curate evaluate --circuit induction --subsets 24 --drop 10%",
])


@dataclass
class EvaluateCommandOptions:
    """`curate evaluate`: the library's EvaluateOptions (composed: its flags are its fields') plus how to print (the
    evaluation's progress follows --quiet)."""

    evaluation: EvaluateOptions = composed(EvaluateOptions, flat=True)
    as_json: bool = opt(False, "--json", help="Print the LDS table as JSON.")
    quiet: bool = opt(False, "--quiet", help="No progress output.")

    def __post_init__(self) -> None:
        self.evaluation = dataclasses.replace(self.evaluation, progress=not self.quiet)

    def validate(self) -> None:
        self.evaluation.validate()


def evaluate_command(options: EvaluateCommandOptions) -> None:
    import json

    from rich.console import Console

    from curate.pipelines.evaluate import default_out, run_evaluation

    err = Console(stderr=True)
    opts = options.evaluation
    log = (lambda m: None) if options.quiet else (lambda m: err.print(m, markup=False, highlight=False))
    results = run_evaluation(opts, log)
    out = opts.out if opts.out is not None else default_out(opts)
    save_config(out, "evaluate", options)
    if options.as_json:
        print(json.dumps({"lds": results["lds"], "report": str(out)}, indent=2, sort_keys=True))
        return
    _print(results, out)


def _print(results: dict, out) -> None:
    from rich.console import Console
    from rich.table import Table

    def num(v: float | None) -> str:
        return "n/a" if v is None else f"{v:+.3f}"

    table = Table(title=f"{results['circuit']}: LDS over {len(results['subsets'])} {results['split']} subsets", show_header=True)
    for col in ("method", "outcome", "LDS", "95% interval"):
        table.add_column(col)
    for row in results["lds"]:
        table.add_row(row["method"], row["outcome"], num(row["rho"]), f"[{num(row['low'])}, {num(row['high'])}]")
    console = Console()
    console.print(table)
    console.print(f"report: {out}/report.md", highlight=False)


def register(app: typer.Typer) -> None:
    command(app, "evaluate", EvaluateCommandOptions, evaluate_command, help=HELP)
