"""`curate score --circuit induction [--method M]`: MDA (or baseline) scores of every row of the attribution window,
on Ray actors."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from curate.commands.options import command, save_config
from curate.errors import CurateError
from curate.locks import hold
from curate.options import composed, opt
from curate.pipelines.score_request import ScoreRequest
from curate.progress import duration_text


@dataclass
class ScoreOptions:
    """`curate score`: the library's ScoreRequest (composed: its flags are its fields') plus how to print (the
    request's progress follows --quiet)."""

    request: ScoreRequest = composed(ScoreRequest, flat=True)
    as_json: bool = opt(False, "--json", help="Print the summary as JSON.")
    quiet: bool = opt(False, "--quiet", help="No progress bars.")
    dry_run: bool = opt(False, "--dry-run", help="Validate, count rows, tokens, heads and passes, time a few batches of each pass on the device and print the estimated time; write nothing.")

    def __post_init__(self) -> None:
        self.request = dataclasses.replace(self.request, progress=not self.quiet)

    def validate(self) -> None:
        self.request.validate()


def score_command(options: ScoreOptions) -> None:
    """Score every row of the attribution window by its influence on the circuit's heads (sharded, resumable)."""
    # the scoring pipelines import torch, transformers and Ray (seconds, measured): only when a command scores
    from curate.pipelines.score_ensemble import resolve_scoring, run_scoring  # one model's job, or an --ensemble's

    err = Console(stderr=True)
    log = (lambda s: None) if options.quiet else (lambda s: err.print(s, markup=False, highlight=False))
    if options.dry_run and options.request.ensemble is not None:
        raise CurateError("--dry-run estimates one model, not an --ensemble: dry-run one member with --model RUN "
                          "(the ensemble costs about that times its members)")
    if options.dry_run:
        from curate.pipelines.score_build_plan import default_build_plan

        builds = default_build_plan(options.request)  # the defaults not built yet: say what would be, and how long (builds nothing)
        if builds is not None:
            print(json.dumps(builds, indent=2, sort_keys=True, default=str) if options.as_json else "\n".join(build_plan_lines(builds)))
            return
    job = resolve_scoring(options.request, log)
    if options.dry_run:
        from curate.pipelines.score_estimate import dry_run

        plan = dry_run(job, log)
        if options.as_json:
            print(json.dumps(plan, indent=2, sort_keys=True, default=str))
        else:
            print_plan(plan)
        return
    with hold(job.out, what="scores folder"):
        save_config(job.out, "score", options, resolved=resolved_defaults(options, job))
        for note in job.notes + job.localization.notes:
            log(f"note: {note}")
        summary = run_scoring(job, log)
    if options.as_json:
        print(json.dumps(summary, indent=2, sort_keys=True, default=str))
        return
    print_summary(summary, job.out)


def resolved_defaults(options: ScoreOptions, job) -> dict:
    """What the job resolved for options left to their defaults (saved in command.json): the output folder and the
    head subspace. The corpus, model and window stay as given: their defaults depend on the run folder (its
    checkpoint after formation, its epochs), which a replay resolves again the same way."""
    resolved: dict = {"out": job.out}
    if options.request.mode is None:
        resolved["mode"] = job.request.mode
    return resolved


def _per_row(seconds: float) -> str:
    return f"{seconds:,.2f} s/row" if seconds >= 1 else f"{seconds * 1000:,.2f} ms/row"


def print_plan(plan: dict) -> None:
    """The dry run: counts, passes, sizes, the calibration and the estimated time."""
    est, cal = plan["estimate"], plan["calibration"]
    w = plan["window"]
    lines = [
        f"dry run (nothing written): curate score --circuit {plan['circuit']} --method {plan['method']}; out {plan['out']}",
        f"checkpoint {plan['checkpoint']}",
        f"window steps [{w[0]}, {w[1]}) = {plan['rows']:,} rows x {plan['row_len']:,} tokens = {plan['tokens']:,} tokens; "
        f"{plan['rows_to_score']:,} rows to score in {plan['shards_to_score']} of {plan['shards']} shards of {plan['shard_rows']:,}",
        f"heads ({len(plan['heads'])}, mode {plan['mode']}): {', '.join(plan['heads'])}",
        f"EK-FAC factors: {plan['factors']}",
        "passes: " + "; ".join(f"{p['pass']} over {p['rows']:,} rows" for p in plan["passes"]),
        f"batch {plan['batch_rows']} rows; {plan['workers']} worker(s) on {plan['device']}, {plan['where']}",
        "calibration on " + cal["device"] + (f" ({cal['threads_per_worker']} thread per worker)" if cal["threads_per_worker"] else "") + ": "
        + "; ".join(f"{p['name']} {p['batches']} batch{'es' if p['batches'] != 1 else ''} ({p['rows']} rows) in {p['seconds']:.2f} s = {_per_row(p['seconds_per_row'])}"
                    for p in cal["passes"])
        + f"; probe gradients {cal['seconds_precondition']:.2f} s",
        f"estimated time: {duration_text(est['seconds'])} (fit {duration_text(est['seconds_fit'])}, probe {duration_text(est['seconds_precondition'])}, "
        f"score {duration_text(est['seconds_score'])}; without {est['excludes']})",
    ]
    for line in lines:
        print(line)


def build_plan_lines(plan: dict) -> list[str]:
    """The dry run on a workspace without its defaults: what would be built first, and the estimated time."""
    lines = [f"dry run (nothing written): curate score --circuit {plan['circuit']} --method {plan['method']} on the defaults of "
             f"{plan['workspace']}, which are not built yet"]
    for b in plan["builds"]:
        if b["build"] == "default corpus":
            lines.append(f"would build the default corpus: {b['rows']:,} rows of {b['row_len']} tokens (vocabulary {b['vocab_size']}) "
                         f"-> {b['folder']}; estimated {duration_text(b['seconds'])} (timed on {b['sample_docs']} documents; without {b['excludes']})")
        else:
            lines.append(f"would train the reference run: {b['steps']:,} steps of {b['batch_size']} rows, {b['parameters']:,} parameters "
                         f"-> {b['folder']}; estimated {duration_text(b['seconds'])} ({b['seconds_per_step'] * 1000:,.1f} ms/step over "
                         f"{b['steps_timed']} timed steps on {b['threads']} thread; without {b['excludes']})")
    lines.append(f"estimated time before scoring: {duration_text(plan['estimate']['seconds'])}; then scoring, whose window ends where "
                 f"the head forms in the reference run: run this dry run again once it is trained to estimate it")
    return lines


def print_summary(summary: dict, out: Path) -> None:
    """Heads and their metrics, rows scored, time, where the scores are, and the top rows decoded."""
    console = Console()
    metrics = summary.get("head_metrics", {})
    heads = ", ".join(
        f"{h} (induction {metrics[h]['induction']:.3f}, previous-token {metrics[h]['previous_token']:.3f})" if h in metrics else h
        for h in summary["heads"]
    )
    method = summary.get("method", "mda")
    console.print(f"circuit {summary['circuit']}: heads {heads}; mode {summary['mode']}; method {method}", highlight=False)
    console.print(f"checkpoint {summary['checkpoint']}  (EK-FAC factors {summary['factors']})", highlight=False)
    if summary.get("trajectory"):
        t = summary["trajectory"]
        console.print(f"trajectory: checkpoints {', '.join(f'step{c}' for c in t['checkpoints'])}; aggregate {t['aggregate']}",
                      highlight=False)
    if summary.get("ensemble"):
        e = summary["ensemble"]
        console.print(f"ensemble of {len(e['members'])} runs (scores divided by each member's standard deviation over the window, "
                      f"then averaged): " + "; ".join(f"{Path(m['run']).name} (heads {', '.join(m['heads'])}, checkpoint "
                                                      f"step{m['checkpoint_step']}, sd {m['score_sd']:.4g})" for m in e["members"]),
                      highlight=False)
    w = summary["window"]
    rate = f", {summary['rows_per_s']:,.0f} rows/s" if summary.get("rows_per_s") else ""
    console.print(
        f"window steps [{w[0]}, {w[1]}) = {summary['rows']:,} rows; scored {summary['rows_scored']:,} rows in "
        f"{summary['seconds']:.1f} s{rate} on {summary['workers']} worker(s); shards {summary['shards_scored']} scored, "
        f"{summary['shards_skipped']} skipped; retries {len(summary['retries'])} ({summary.get('retried_shards', 0)} shard(s) re-run)"
        + (f"; on {len(summary['nodes'])} Ray nodes" if len(summary.get("nodes") or {}) > 1 else ""),
        highlight=False,
    )
    console.print(f"scores: {out / summary['shards_dir']}  summary: {out / 'summary.json'}  top-{summary['top_k']}: "
                  f"{out / summary['top_files']['positive']}, {out / summary['top_files']['negative']}", highlight=False)
    for title, rows in (("top positive (builders)", summary["top_positive"]), ("top negative (suppressors)", summary["top_negative"])):
        table = Table(title=title, show_header=True, title_justify="left")
        for col, justify in (("row", "right"), ("step", "right"), ("score", "right"), ("domain", "left"), ("text", "left")):
            table.add_column(col, justify=justify, overflow="fold" if col == "text" else "ellipsis")
        for r in rows:
            table.add_row(str(r["row_id"]), str(r["step"]), f"{r['score']:+.4g}", Text(r.get("domain") or "-"), Text(r.get("text") or ""))
        console.print(table)


def register(app: typer.Typer) -> None:
    command(app, "score", ScoreOptions, score_command, example="curate score --circuit induction --method mda")
