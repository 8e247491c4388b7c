"""`curate experiment`: the causal validation, end to end: baseline, scores, retrained arms, report."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from curate.commands.options import WorkspaceOpt

HELP = "\n\n".join([
    "Prove an attribution causally: retrain from the window's first checkpoint with the top rows removed or duplicated (and random controls of the same size), for several seeds, and report whether the circuit forms later / sooner.",
    "Arms: baseline, remove-top, remove-random, augment-top, augment-random, augment-neighbors (FAISS neighbours of the top rows, from rows no arm trains on), augment-synthetic (rows built from the top rows' motifs). Finished runs are skipped on a rerun; --rerun ARM trains one arm again. Output: EXP/report/ (report.md, report.html, figures, results.json), EXP/arms/ARM/seedS/ (run folders), EXP/mixes/, EXP/scores/.",
    "Default: the workspace's reference run (trained first if missing), the window from step 0 to the first checkpoint after the head formed (no formation: to the last checkpoint at 2/3 of the run, said so in the report), 3 seeds, arms trained to twice the window end (the window's length again after it, so a delayed head still forms inside the run). --quick: one seed, an own 300-step baseline at half the corpus's batch size, all seven arms (measured: 2.7 minutes on 2 shared cores, default corpus build included). --scales: baseline + augmentation arms on three or more model sizes (--sizes).",
    "Pythia setting (a machine with the hub and a GPU): curate experiment --model EleutherAI/pythia-70m --revision step1000 --corpus PILE_PREFIX --window 0:1000 --batch-size 1024 --lr 1e-3 --warmup-steps 1430 --schedule-steps 143000 --device cuda --workers 1. The arms start from the hub's stepSTART weights with a fresh optimizer. Cost (an estimate, not measured): scoring 1.02M rows of 2,049 tokens, then 21 arm runs of ~1,500 steps x 1,024 rows (3.1B tokens each); Pythia's own run took roughly 5 A100-hours per 1,500 steps in mixed precision, and this trainer runs fp32 with eager attention, so expect several times that per run. The trainer has no gradient accumulation: a batch of 1024 x 2048 tokens must fit at once, which it does not on one 80 GB GPU; a smaller --batch-size runs but changes which rows each step sees.",
])


def experiment_command(
    circuit: Annotated[str, typer.Option("--circuit", help="Circuit to validate: induction or previous-token.")] = "induction",
    quick: Annotated[bool, typer.Option("--quick", help="Reduced run for smoke tests: one seed, a short own baseline, all arms.")] = False,
    scales: Annotated[bool, typer.Option("--scales", help="Baseline + augmentation arms on several model sizes (--sizes), acceleration per size.")] = False,
    sizes: Annotated[str, typer.Option("--sizes", help="Model sizes for --scales: HIDDENxLAYERS list (at least three).")] = "64x2,96x2,128x3",
    k: Annotated[str, typer.Option("--k", help="Rows removed: a share of the window (10%), a fraction (0.1) or a count.")] = "10%",
    augment: Annotated[str, typer.Option("--augment", help="Rows added: a share of the window (2%), a fraction or a count.")] = "2%",
    seeds: Annotated[Optional[int], typer.Option("--seeds", help="Seeds per arm (default 3; --quick: 1).", show_default=False)] = None,
    arms: Annotated[Optional[str], typer.Option("--arms", help="Comma-separated arms to run (default: all; the baseline always runs).", show_default=False)] = None,
    rerun: Annotated[Optional[str], typer.Option("--rerun", help="Discard these arms' runs and mixes and train them again.", show_default=False)] = None,
    window: Annotated[Optional[str], typer.Option("--window", help="Attribution window START:END in steps (default: 0 to the first checkpoint after formation).", show_default=False)] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help="Arms train until this step (default: window end + the window's length, at most the baseline's length).", show_default=False)] = None,
    threshold: Annotated[Optional[float], typer.Option("--threshold", help="Emergence threshold of the circuit score (default: the circuit's, 0.3).", show_default=False)] = None,
    heads: Annotated[str, typer.Option("--heads", help="Heads to attribute: auto (localize) or L.H,L.H.")] = "auto",
    corpus: Annotated[Optional[str], typer.Option("--corpus", help="Training corpus (default: the embedded default corpus).", show_default=False)] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="A finished curate run folder, or an external model (hub name / folder of stepK/) with --corpus and --window.", show_default=False)] = None,
    revision: Annotated[Optional[str], typer.Option("--revision", help="Checkpoint stepK to score at (default: the window's end).", show_default=False)] = None,
    config: Annotated[Optional[str], typer.Option("--config", help="GPT-NeoX config JSON of an own baseline model (default: the embedded default model).", show_default=False)] = None,
    baseline_steps: Annotated[Optional[int], typer.Option("--baseline-steps", help="Length of an own baseline run (default 3000; --quick: 300).", show_default=False)] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Rows per step (default: the corpus's; --quick: half of it).", show_default=False)] = None,
    eval_every: Annotated[Optional[int], typer.Option("--eval-every", help="Evaluate every K steps (default 100; --quick: 25).", show_default=False)] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Peak learning rate (default 1e-3).", show_default=False)] = None,
    warmup_steps: Annotated[Optional[int], typer.Option("--warmup-steps", help="Warm-up steps (default 100).", show_default=False)] = None,
    schedule_steps: Annotated[Optional[int], typer.Option("--schedule-steps", help="Cosine horizon (default: the baseline's; external model: the arms' length).", show_default=False)] = None,
    arm_checkpoints: Annotated[str, typer.Option("--arm-checkpoints", help="Checkpoints the arm runs keep (resume points); the final one always.")] = "every:1000",
    motif_rows: Annotated[int, typer.Option("--motif-rows", help="Top rows mined for motifs (synthetic) and queried for neighbours.")] = 2000,
    fit_rows: Annotated[Optional[int], typer.Option("--fit-rows", help="Rows for the EK-FAC fit (default: curate score's, 8192).", show_default=False)] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", help="Parallel runs (Ray workers, one torch thread each; default: one per CPU).", show_default=False)] = None,
    device: Annotated[str, typer.Option("--device", help="cpu or cuda.")] = "cpu",
    out: Annotated[Optional[Path], typer.Option("--out", help="Experiment folder (default: WORKSPACE/experiments/CIRCUIT[-quick][-scales]).", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the verdicts and effects as JSON.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress output.")] = False,
    workspace: WorkspaceOpt = None,
) -> None:
    import json

    from rich.console import Console

    from curate.pipelines.experiment import ExperimentOptions, run_experiment

    opts = ExperimentOptions(
        circuit=circuit, quick=quick, k=k, augment=augment, seeds=seeds, arms=arms, rerun=rerun, window=window, steps=steps,
        threshold=threshold, heads=heads, corpus=corpus, model=model, revision=revision, config=config,
        baseline_steps=baseline_steps, batch_size=batch_size, eval_every=eval_every, lr=lr, warmup_steps=warmup_steps,
        schedule_steps=schedule_steps, arm_checkpoints=arm_checkpoints, motif_rows=motif_rows, fit_rows=fit_rows,
        workers=workers, device=device, out=out, workspace=workspace, progress=not quiet, scales=scales, sizes=sizes,
    )
    err = Console(stderr=True)
    log = (lambda m: None) if quiet else (lambda m: err.print(m, markup=False, highlight=False))
    if scales:
        from curate.pipelines.scales import run_scales

        results = run_scales(opts, log)
        summary = {"scales": results["table"], "report": results["report"]}
    else:
        results = run_experiment(opts, log)
        summary = {"verdicts": results["verdicts"], "effects": results["effects"], "report": results["report"]}
    if as_json:
        print(json.dumps(summary, indent=2, sort_keys=True, default=str))
        return
    _print(results, scales)


def _print(results: dict, scales: bool) -> None:
    from rich.console import Console
    from rich.table import Table

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
    app.command("experiment", help=HELP)(experiment_command)
