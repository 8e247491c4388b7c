"""`curate score --circuit induction`: MDA scores of every row of the attribution window, on Ray actors."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from curate.workspace import WorkspaceOpt


def score_command(
    circuit: Annotated[str, typer.Option("--circuit", help="Circuit to attribute: induction or previous-token.")] = "induction",
    corpus: Annotated[Optional[str], typer.Option("--corpus", help="Training corpus (default: the embedded default corpus, or the run's).")] = None,
    model: Annotated[Optional[str], typer.Option("--model", "--checkpoint", help="HF folder, training run folder, or a Pythia name with --revision (default: the reference run).")] = None,
    revision: Annotated[Optional[str], typer.Option("--revision", help="Checkpoint stepK of a run folder or hub model (default for a run: the first one after the head formed).")] = None,
    heads: Annotated[str, typer.Option("--heads", help="auto (localize) or L.H,L.H.")] = "auto",
    mode: Annotated[Optional[str], typer.Option("--mode", help="Head subspace: qk or qkvo (default: the circuit's: qkvo for induction, qk for previous-token).", show_default=False)] = None,
    window: Annotated[Optional[str], typer.Option("--window", help="Training steps START:END to score (default: 0 to the checkpoint's step).")] = None,
    top: Annotated[str, typer.Option("--top", help="Top rows kept per tail: a share of the window (10%) or a count.")] = "10%",
    out: Annotated[Optional[Path], typer.Option("--out", help="Output folder (default: <workspace>/default/scores/<circuit>).")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", help="Ray actors (default: one per CPU, or per GPU with --device cuda).")] = None,
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", help="Join this Ray cluster (HOST:PORT, ray://HOST:PORT or auto) instead of a local Ray.")] = None,
    device: Annotated[str, typer.Option("--device", help="cpu or cuda.")] = "cpu",
    batch_rows: Annotated[int, typer.Option("--batch-rows", help="Rows per forward/backward.")] = 8,
    shard_rows: Annotated[int, typer.Option("--shard-rows", help="Rows per shard (a multiple of --batch-rows).")] = 1024,
    fit_rows: Annotated[Optional[int], typer.Option("--fit-rows", help="Rows sampled (with --seed) from the window for the EK-FAC fit [default: 8192].", show_default=False)] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the fit-row sample, the sampled labels and the probes.")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Discard results already in --out (even of another job) and start over.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
    workspace: WorkspaceOpt = None,
) -> None:
    """Score every row of the attribution window by its influence on the circuit's heads (sharded, resumable)."""
    import json

    from rich.console import Console

    from curate.pipelines.score_job import DEFAULT_FIT_ROWS, ScoreRequest, resolve_job
    from curate.pipelines.score_run import run_job

    err = Console(stderr=True)
    log = (lambda s: None) if quiet else (lambda s: err.print(s, markup=False, highlight=False))
    req = ScoreRequest(
        circuit=circuit, corpus=corpus, model=model, revision=revision, heads=heads, mode=mode, window=window, top=top,
        out=out, workers=workers, ray_address=ray_address, device=device, batch_rows=batch_rows, shard_rows=shard_rows,
        fit_rows=DEFAULT_FIT_ROWS if fit_rows is None else fit_rows, seed=seed, force=force, workspace=workspace,
        progress=not quiet,
    )
    job = resolve_job(req, log)
    for note in job.notes + job.localization.notes:
        log(f"note: {note}")
    summary = run_job(job, log)
    if as_json:
        print(json.dumps(summary, indent=2, sort_keys=True, default=str))
        return
    print_summary(summary, job.out)


def print_summary(summary: dict, out: Path) -> None:
    """Heads and their metrics, rows scored, time, where the scores are, and the top rows decoded."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console()
    metrics = summary.get("head_metrics", {})
    heads = ", ".join(
        f"{h} (induction {metrics[h]['induction']:.3f}, previous-token {metrics[h]['previous_token']:.3f})" if h in metrics else h
        for h in summary["heads"]
    )
    console.print(f"circuit {summary['circuit']}: heads {heads}; mode {summary['mode']}", highlight=False)
    console.print(f"checkpoint {summary['checkpoint']}  (EK-FAC factors {summary['factors']})", highlight=False)
    w = summary["window"]
    rate = f", {summary['rows_per_s']:,.0f} rows/s" if summary.get("rows_per_s") else ""
    console.print(
        f"window steps [{w[0]}, {w[1]}) = {summary['rows']:,} rows; scored {summary['rows_scored']:,} rows in "
        f"{summary['seconds']:.1f} s{rate} on {summary['workers']} worker(s); shards {summary['shards_scored']} scored, "
        f"{summary['shards_skipped']} skipped; retries {len(summary['retries'])}",
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
    app.command("score")(score_command)
