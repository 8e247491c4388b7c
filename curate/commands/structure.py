"""`curate explain`, `curate index`, `curate neighbors`: what structure the influential rows have,
and where else in a corpus rows like them live."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from curate.errors import CurateError
from curate.commands.options import WorkspaceOpt
from curate.workspace import resolve_workspace, scores_dir


def _fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def print_explain(report) -> None:
    """The enrichment table and the tail weight, with rich."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    heads = " ".join(str(h) for h in report.heads) or "-"
    window = f"steps {report.window[0]}-{report.window[1]}" if report.window else "window ?"
    what = "highest" if report.tail == "top" else "lowest"
    base = f"a seeded sample of {report.base_rows:,}" if report.base_sampled else f"all {report.base_rows:,}"
    console.print(escape(f"{report.scores}: circuit {report.circuit or '?'} (heads {heads}, {window})"))
    console.print(escape(f"{report.top_k:,} {what} rows by {report.column} of {report.num_rows:,}; base rate over {base} window rows"))
    table = Table()
    for col in ("class", "top rows", "top share", "base share", "ratio", "95% CI of ratio"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for c in sorted(report.classes, key=lambda c: -(c.ratio or 0.0)):
        ci = "-" if c.ci_low is None else f"{c.ci_low:.2f}-{c.ci_high:.2f}"
        table.add_row(c.label, f"{c.top_count:,}", f"{c.top_share:.1%}", f"{c.base_share:.1%}", _fmt_ratio(c.ratio), ci)
    console.print(table)
    sign = "positive" if report.tail == "top" else "negative"
    parts = [f"{k.replace('_', ' ')} of rows carry {v:.1%}" for k, v in report.tail_share.items()]
    console.print(escape(f"tail: of the total {sign} influence, the " + "; the ".join(parts)))


def register(app: typer.Typer) -> None:
    @app.command("explain")
    def explain_cmd(
        scores: Annotated[Path, typer.Argument(help="Scores folder (summary.json + shards/*.parquet).", show_default=False)],
        top: Annotated[str, typer.Option("--top", help="Top rows: a percentage of the window (10%) or a count (500).")] = "10%",
        head: Annotated[Optional[str], typer.Option("--head", help="Rank by one head's column (LAYER.HEAD) instead of the aggregate score.")] = None,
        tail: Annotated[str, typer.Option("--tail", help="top: builders (highest scores); bottom: suppressors (lowest).")] = "top",
        corpus: Annotated[Optional[Path], typer.Option("--corpus", help="Corpus the row ids refer to (default: summary.json 'corpus').")] = None,
        base_sample: Annotated[int, typer.Option("--base-sample", help="Tag at most this many window rows for the base rate (seeded sample).")] = 20_000,
        seed: Annotated[int, typer.Option("--seed", help="Seed of the base-rate sample.")] = 0,
        as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
        workspace: WorkspaceOpt = None,
    ) -> None:
        """Which structural classes are enriched among the top-k rows vs. the window's base rate, and how heavy the tail is."""
        from curate.augment.explain import explain_scores

        report = explain_scores(scores, top=top, head=head, tail=tail, corpus=corpus, base_sample=base_sample, seed=seed)
        if as_json:
            typer.echo(json.dumps(report.to_json(), indent=2, sort_keys=True))
        else:
            print_explain(report)

    @app.command("index")
    def index_cmd(
        scores: Annotated[Path, typer.Argument(help="Scores folder; the index is written to SCORES/index unless --out.", show_default=False)],
        corpus: Annotated[Optional[Path], typer.Option("--corpus", help="Corpus to index (default: the scored corpus from summary.json).")] = None,
        out: Annotated[Optional[Path], typer.Option("--out", help="Index folder (default: SCORES/index).")] = None,
        kind: Annotated[str, typer.Option("--kind", help="auto (exact up to --exact-max-rows, else IVF), flat or ivf.")] = "auto",
        exact_max_rows: Annotated[int, typer.Option("--exact-max-rows", help="auto: exact search up to this many rows.")] = 200_000,
        nlist: Annotated[Optional[int], typer.Option("--nlist", help="IVF lists (default 4*sqrt(rows)).")] = None,
        nprobe: Annotated[Optional[int], typer.Option("--nprobe", help="IVF lists probed (default: tuned to recall@10 >= 0.9).")] = None,
        seed: Annotated[int, typer.Option("--seed", help="Seed of the k-means sample, training and recall queries.")] = 0,
        workspace: WorkspaceOpt = None,
    ) -> None:
        """Build and persist a FAISS index of row structure vectors next to the scores; print recall@10."""
        from curate.attribution.scores_folder import open_scores
        from curate.augment.index import IndexParams, build_index
        from curate.augment.neighbors import INDEX_SUBDIR

        folder = open_scores(scores)
        target = corpus if corpus is not None else folder.corpus_path
        params = IndexParams(kind=kind, exact_max_rows=exact_max_rows, nlist=nlist, nprobe=nprobe, seed=seed)
        dest = out if out is not None else folder.path / INDEX_SUBDIR
        info = build_index(target, dest, params=params).info
        detail = "exact inner product" if info["kind"] == "flat" else f"IVF, nlist {info['nlist']}, nprobe {info['nprobe']}"
        typer.echo(f"indexed {info['num_rows']:,} rows of {info['corpus']} ({detail}, dim {info['dim']}) in {info['build_seconds']:.1f} s -> {dest}")
        typer.echo(f"recall@{info['recall_k']}: {info['recall']:.3f} on {info['recall_queries']} seeded query rows")

    @app.command("neighbors")
    def neighbors_cmd(
        row_id: Annotated[Optional[int], typer.Argument(help="Row id in the scored corpus.", show_default=False)] = None,
        top: Annotated[Optional[str], typer.Option("--top", help="Instead of ROW_ID: the top K rows by score (a count or a percentage).")] = None,
        k: Annotated[int, typer.Option("--k", help="Neighbours per row.")] = 10,
        scores: Annotated[Optional[Path], typer.Option("--scores", help="Scores folder (default: the workspace's scores of --circuit).")] = None,
        circuit: Annotated[str, typer.Option("--circuit", help="Circuit whose workspace scores to use when --scores is not given.")] = "induction",
        index: Annotated[Optional[Path], typer.Option("--index", help="Index folder (default: SCORES/index).")] = None,
        chars: Annotated[int, typer.Option("--chars", help="Characters of decoded text to show per row.")] = 80,
        as_json: Annotated[bool, typer.Option("--json", help="Print the neighbours as JSON.")] = False,
        workspace: WorkspaceOpt = None,
    ) -> None:
        """Structural neighbours of a row (or of the top-K rows), with their tags and the start of their text."""
        from curate.augment.neighbors import find_neighbors

        if (row_id is None) == (top is None):
            raise CurateError("give either ROW_ID or --top K (not both, not neither)")
        if k < 1:
            raise CurateError(f"--k {k}: must be at least 1")
        if chars < 0:
            raise CurateError(f"--chars {chars}: must not be negative")
        folder = scores if scores is not None else scores_dir(resolve_workspace(workspace), circuit)
        result = find_neighbors(folder, row_id=row_id, top=top, k=k, index=index, chars=chars)
        if as_json:
            typer.echo(json.dumps(result, indent=2, sort_keys=True))
            return
        print_neighbors(result)


def print_neighbors(result: dict) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    for q in result["queries"]:
        title = f"row {q['row_id']} [{q['tag']}]"
        if q.get("score") is not None:
            title += f" score {q['score']:.4g}"
        title += f": {q['text']}"
        table = Table(title=escape(title), title_justify="left")
        for col in ("rank", "row", "similarity", "tag", "text"):
            table.add_column(col, justify="right" if col in ("rank", "row", "similarity") else "left")
        for rank, nb in enumerate(q["neighbors"], start=1):
            table.add_row(str(rank), str(nb["row_id"]), f"{nb['similarity']:.3f}", nb["tag"], escape(nb["text"]))
        console.print(table)
    console.print(escape(f"index: {result['index']} over {result['index_corpus']}"))
    if result.get("same_tokenizer") is False:
        console.print("note: the indexed corpus uses another tokenizer; only the repetition features are comparable")
