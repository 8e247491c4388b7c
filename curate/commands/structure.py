"""`curate explain`, `curate index`, `curate neighbors`: what structure the influential rows have,
and where else in a corpus rows like them live."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from curate.amounts import check_amount
from curate.augment.index import KINDS
from curate.commands.feedback import heartbeat
from curate.commands.options import command, save_config
from curate.errors import CurateError
from curate.locks import hold
from curate.options import arg, check_positive, flag, opt, workspace_opt
from curate.workspace import resolve_workspace, scores_dir


def _fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _fmt_ci(lo: float | None, hi: float | None) -> str:
    return "-" if lo is None or hi is None else f"{lo:.2f}-{hi:.2f}"


def print_explain(report) -> None:
    """The enrichment of both tails side by side (raw and size-adjusted), and the tails' weight, with rich."""
    console = Console()
    heads = " ".join(str(h) for h in report.heads) or "-"
    window = f"steps {report.window[0]}-{report.window[1]}" if report.window else "window ?"
    base = f"a seeded sample of {report.base_rows:,}" if report.base_sampled else f"all {report.base_rows:,}"
    if report.by != "tag":
        classes = f"sidecar column {report.by!r}"
    elif report.tagged_per == "document":
        classes = "structure tags, each row its document's vote (sidecar doc_id; --tag-per row: per row)"
    else:
        classes = "structure tags of each row"
    console.print(escape(f"{report.scores}: circuit {report.circuit or '?'} (heads {heads}, {window})"))
    console.print(escape(
        f"classes: {classes}; the {report.top_k:,} highest (top) and {report.top_k:,} lowest (bottom) rows by "
        f"{report.column} of {report.num_rows:,}; base rate over {base} window rows"
    ))
    order = (report.tail, "bottom" if report.tail == "top" else "top")
    measures = report.size_measures
    normalised = report.normalised_by is not None
    key = lambda c: -((getattr(c, report.tail).ratio) or 0.0)  # noqa: E731
    for t in order:  # one table per tail, so that a narrow terminal folds cells instead of cutting columns
        table = Table(title=f"{t} tail", title_justify="left")
        table.add_column("class", justify="left", overflow="fold")
        table.add_column("base share", justify="right", overflow="fold")
        table.add_column("rows", justify="right", overflow="fold")
        table.add_column("share", justify="right", overflow="fold")
        table.add_column("ratio (95% CI)", justify="right", overflow="fold")
        for m in measures:
            table.add_column(f"{m}-matched ratio", justify="right", overflow="fold")
        if normalised:
            table.add_column("normalised rows", justify="right", overflow="fold")
            table.add_column("normalised ratio (95% CI)", justify="right", overflow="fold")
            table.add_column("magnitude", justify="left", overflow="fold")
        table.add_column("note", justify="left", overflow="fold")
        for c in sorted(report.classes, key=key):
            e = getattr(c, t)
            cells = [escape(c.label), f"{c.base_share:.1%}", f"{e.count:,}", f"{e.share:.1%}",
                     f"{_fmt_ratio(e.ratio)} ({_fmt_ci(e.ci_low, e.ci_high)})"]
            cells += [f"{_fmt_ratio(a.ratio)} ({_fmt_ci(a.ci_low, a.ci_high)})" for a in e.adjusted]
            if normalised:
                n = getattr(c.normalised, t)
                cells += [f"{n.count:,}", f"{_fmt_ratio(n.ratio)} ({_fmt_ci(n.ci_low, n.ci_high)})", "yes" if c.magnitude else "no"]
            cells.append(_explain_note(c))
            table.add_row(*cells)
        console.print(table)
    console.print(escape(
        "ratio = tail share / base share, 95% CI = Wilson interval of the tail share / base share; "
        f"{'-, '.join(measures)}-matched: against the base matched on that size (10 quantile bins of the base rows)"
    ))
    if normalised:
        console.print(escape(
            f"normalised: the same enrichment over the {report.top_k:,} highest and lowest rows by {report.normalised_by} "
            "(the score per unit of the row's gradient norm on the scored heads: a relative, cosine-like influence); "
            "magnitude: over-represented in both raw tails but not in both normalised tails (large gradients, not their direction)"
        ))
    else:
        console.print("size: row length only (this scores folder records no per-row gradient norm)")
        console.print(escape(report.normalised_note or ""))
    for t in order:
        sign = "positive" if t == "top" else "negative"
        what = "highest" if t == "top" else "lowest"
        parts = [f"{k.replace('top_', '')} {what} rows carry {v:.1%}" for k, v in report.tail_share[t].items()]
        console.print(escape(f"{t} tail: of the total {sign} influence, the " + "; the ".join(parts)))


def _explain_note(c) -> str:
    """A class in both raw tails: a size effect? (no gradient norms), or in both normalised tails too (the magnitude
    column says the rest)."""
    if not c.size_effect or c.magnitude:
        return ""
    return "both tails: size effect?" if c.magnitude is None else "both tails, also normalised"


@dataclass
class ExplainOptions:
    """`curate explain`."""

    scores: Path = arg(help="Scores folder (summary.json + shards/*.parquet).")
    top: str = opt("10%", "--tail-rows", deprecated=("--top", "--tail-share"), help="Rows in each tail (top and bottom): a percentage of the window (10%) or a count (500).")
    head: str | None = opt(None, "--head", help="Rank by one head's column (LAYER.HEAD) instead of the aggregate score.")
    tail: str = opt("top", "--tail", help="The tail shown first and ordered by: top (builders, highest scores) or bottom (suppressors, lowest).")
    by: str | None = opt(None, "--by", help="Classes: a label column of the corpus sidecar (domain, source, ...); default: the structure tagger.")
    tag_per: str = opt("document", "--tag-per", help="Structure tags: document (each row gets its document's vote over all the document's rows, where the sidecar has doc_id) or row.")
    corpus: Path | None = opt(None, "--corpus", help="Corpus the row ids refer to (default: summary.json 'corpus').")
    base_sample: int = opt(20_000, "--base-sample", help="Tag at most this many window rows for the base rate (seeded sample).")
    seed: int = opt(0, "--seed", help="Seed of the base-rate sample.")
    as_json: bool = opt(False, "--json", help="Print the report as JSON.")
    workspace: Path | None = workspace_opt()

    def validate(self) -> None:
        from curate.augment.explain import TAG_PER, TAILS  # explain imports torch via the scores folder (seconds)

        check_amount(self.top, flag(self, "top"))
        if self.tail not in TAILS:
            raise CurateError(f"{flag(self, 'tail')} {self.tail!r}: expected one of {', '.join(TAILS)}")
        if self.tag_per not in TAG_PER:
            raise CurateError(f"{flag(self, 'tag_per')} {self.tag_per!r}: expected one of {', '.join(TAG_PER)}")
        check_positive(self, "base_sample")


def explain_command(o: ExplainOptions) -> None:
    """Which classes (sidecar labels or structure tags) are enriched in the top and bottom tails vs. the window's base
    rate, raw and size-adjusted, and by the magnitude-normalised score (score / the row's gradient norm on the scored
    heads: a relative, cosine-like influence; gradient methods), with a "magnitude" flag for a class over-represented
    in both raw tails but not in both normalised ones, and how heavy the tails are."""
    from curate.augment.explain import explain_scores

    with heartbeat("explain: tagging the tails and the base rows", quiet=o.as_json):
        report = explain_scores(o.scores, top=o.top, head=o.head, tail=o.tail, corpus=o.corpus, base_sample=o.base_sample,
                                seed=o.seed, by=o.by, tag_per=o.tag_per)
    if o.as_json:
        typer.echo(json.dumps(report.to_json(), indent=2, sort_keys=True))
    else:
        print_explain(report)


@dataclass
class IndexOptions:
    """`curate index`."""

    scores: Path = arg(help="Scores folder; the index is written to SCORES/index unless --out.")
    corpus: Path | None = opt(None, "--corpus", help="Corpus to index (default: the scored corpus from summary.json).")
    out: Path | None = opt(None, "--out", help="Index folder (default: SCORES/index).")
    kind: str = opt("auto", "--kind", help="auto (exact up to --exact-max-rows, else IVF), flat or ivf.")
    exact_max_rows: int = opt(200_000, "--exact-max-rows", help="auto: exact search up to this many rows.")
    nlist: int | None = opt(None, "--nlist", help="IVF lists (default 4*sqrt(rows)).")
    nprobe: int | None = opt(None, "--nprobe", help="IVF lists probed (default: tuned to recall@10 >= 0.9).")
    seed: int = opt(0, "--seed", help="Seed of the k-means sample, training and recall queries.")
    workspace: Path | None = workspace_opt()

    def validate(self) -> None:
        if self.kind not in KINDS:
            raise CurateError(f"{flag(self, 'kind')} {self.kind!r}: the index kind must be one of {', '.join(KINDS)}")
        check_positive(self, "nlist", "nprobe")


def index_command(o: IndexOptions) -> None:
    """Build and persist a FAISS index of row structure vectors next to the scores; print recall@10."""
    # the scores folder and the neighbour search import torch (seconds, measured): only where a command runs
    from curate.attribution.scores_folder import open_checked_corpus, open_scores
    from curate.augment.index import IndexParams, build_index
    from curate.augment.neighbors import INDEX_SUBDIR

    folder = open_scores(o.scores)
    if o.corpus is None:  # the scored corpus (another --corpus is a pool of rows to find neighbours in, unchecked)
        open_checked_corpus(folder)
    target = o.corpus if o.corpus is not None else folder.corpus_path
    params = IndexParams(kind=o.kind, exact_max_rows=o.exact_max_rows, nlist=o.nlist, nprobe=o.nprobe, seed=o.seed)
    dest = o.out if o.out is not None else folder.path / INDEX_SUBDIR
    with hold(dest, what="structure index"), heartbeat("index: building the structure index"):
        info = build_index(target, dest, params=params).info
        save_config(dest, "index", o, resolved={"out": dest})
    detail = "exact inner product" if info["kind"] == "flat" else f"IVF, nlist {info['nlist']}, nprobe {info['nprobe']}"
    typer.echo(f"indexed {info['num_rows']:,} rows of {info['corpus']} ({detail}, dim {info['dim']}) in {info['build_seconds']:.1f} s -> {dest}")
    typer.echo(f"recall@{info['recall_k']}: {info['recall']:.3f} on {info['recall_queries']} seeded query rows")


@dataclass
class NeighborsOptions:
    """`curate neighbors`."""

    row_id: int | None = arg(None, help="Row id in the scored corpus.")
    top: str | None = opt(None, "--query-rows", deprecated=("--top",), help="Instead of ROW_ID: query with the top rows by score (a count or a percentage).")
    k: int = opt(10, "--k", help="Neighbours per row.")
    scores: Path | None = opt(None, "--scores", help="Scores folder (default: the workspace's scores of --circuit).")
    circuit: str = opt("induction", "--circuit", help="Circuit whose workspace scores to use when --scores is not given.")
    index: Path | None = opt(None, "--index", help="Index folder (default: SCORES/index).")
    chars: int = opt(80, "--chars", help="Characters of decoded text to show per row.")
    as_json: bool = opt(False, "--json", help="Print the neighbours as JSON.")
    workspace: Path | None = workspace_opt()

    def validate(self) -> None:
        if (self.row_id is None) == (self.top is None):
            raise CurateError(f"give either {flag(self, 'row_id')} or {flag(self, 'top')} K (not both, not neither)")
        if self.top is not None:
            check_amount(self.top, flag(self, "top"))
        if self.k < 1:
            raise CurateError(f"{flag(self, 'k')} {self.k}: must be at least 1")
        if self.chars < 0:
            raise CurateError(f"{flag(self, 'chars')} {self.chars}: must not be negative")


def neighbors_command(o: NeighborsOptions) -> None:
    """Structural neighbours of a row (or of the top-K rows), with their tags and the start of their text."""
    from curate.augment.neighbors import find_neighbors

    folder = o.scores if o.scores is not None else scores_dir(resolve_workspace(o.workspace), o.circuit)
    with heartbeat("neighbors: searching the index", quiet=o.as_json):
        result = find_neighbors(folder, row_id=o.row_id, top=o.top, k=o.k, index=o.index, chars=o.chars)
    if o.as_json:
        typer.echo(json.dumps(result, indent=2, sort_keys=True))
        return
    print_neighbors(result)


def register(app: typer.Typer) -> None:
    command(app, "explain", ExplainOptions, explain_command,
            example="curate explain curate-workspace/default/scores/induction --tail-rows 10% --by domain")
    command(app, "index", IndexOptions, index_command, example="curate index curate-workspace/default/scores/induction")
    command(app, "neighbors", NeighborsOptions, neighbors_command, example="curate neighbors --query-rows 5 --circuit induction")


def print_neighbors(result: dict) -> None:
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
