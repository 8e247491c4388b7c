"""`curate corpus ...`: inspect, view, ingest and export token corpora.

`corpus_app` is importable so that other modules can add sub-commands to it (e.g. the embedded
default corpus adds `corpus build-default`).
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from curate.corpus import Corpus, MegatronCorpus, check_token_ids, open_corpus
from curate.errors import CurateError
from curate.locks import hold
from curate.commands.options import HELP_OPTIONS, command, save_config
from curate.export import ExportFormat, export_rows
from curate.ingest import ingest_path
from curate.labels import read_row_labels
from curate.megatron_order import (MEGATRON_DEFAULT_SEED, NULL_TOKENIZER, TRAIN_SPLIT, flags_line, megatron_job_flags,
                                   tokenizer_identifiers, write_megatron_order)
from curate.options import arg, check_positive, flag, named, opt, workspace_opt
from curate.tokenize import MIN_VOCAB, load_tokenizer
from curate.training.recipes import REFERENCE_RUN
from curate.workspace import default_corpus_dir, resolve_workspace

REFERENCE_BATCH_SIZE = int(REFERENCE_RUN["batch_size"])  # `corpus ingest`'s default: the default recipe's batch size

corpus_app = typer.Typer(
    name="corpus",
    help="Inspect, view, ingest and export token corpora (Megatron .bin/.idx, .npy, Parquet).",
    no_args_is_help=True,
    rich_markup_mode=None,  # help texts are plain, as in the top-level app
    context_settings=HELP_OPTIONS,
)

EXACT_SCAN_MAX_TOKENS = 1 << 28  # above this, `info` samples the vocabulary range unless --exact
SAMPLED_STEPS = 64


def register(app: typer.Typer) -> None:
    """Attach `corpus_app` to the top-level CLI as `curate corpus`."""
    command(corpus_app, "info", InfoOptions, info_command, example="curate corpus info curate-workspace/default/corpus")
    command(corpus_app, "show", ShowOptions, show_command, example="curate corpus show --step 100 --rows 0:4")
    command(corpus_app, "ingest", IngestOptions, ingest_command,
            example="curate corpus ingest texts.jsonl --vocab 4096 --seq-len 256 --out my-corpus")
    command(corpus_app, "export", ExportOptions, export_command,
            example="curate corpus export my-corpus --to parquet --steps 0:10 --out first-steps.parquet")
    app.add_typer(corpus_app, name="corpus")


# -- shared helpers ---------------------------------------------------------------------------------

def _stdout() -> Console:
    return Console(highlight=False, soft_wrap=True)


@contextlib.contextmanager
def progress_bar() -> Iterator[Progress]:
    """A rich progress display on stderr (silent when stderr is not a terminal)."""
    console = Console(stderr=True)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as bar:
        yield bar


def parse_span(text: str, flag: str, upper: int) -> tuple[int, int]:
    """`a:b`, `a:`, `:b`, `:` or `a` (= a:a+1) as [a, b) clipped to nothing: out of range is an error."""
    raw = text.strip()
    try:
        if ":" in raw:
            left, right = raw.split(":", 1)
            a = int(left) if left.strip() else 0
            b = int(right) if right.strip() else upper
        else:
            a = int(raw)
            b = a + 1
    except ValueError:
        raise CurateError(f"{flag} {text!r}: expected a:b with whole numbers (e.g. 0:8)") from None
    if a < 0 or b < 0:
        raise CurateError(f"{flag} {text!r}: negative bounds are not allowed")
    if a >= b:
        raise CurateError(f"{flag} {text!r}: empty range")
    if b > upper:
        raise CurateError(f"{flag} {text!r}: past the end (there are {upper})")
    return a, b


def resolve_corpus_path(path: Optional[Path], workspace: Optional[Path]) -> Path:
    """PATH, or the workspace's default corpus folder when PATH is omitted."""
    if path is not None:
        return path
    default = default_corpus_dir(resolve_workspace(workspace))
    if not default.exists():
        raise CurateError(
            f"no corpus given and the workspace's default corpus {default} does not exist "
            "(pass PATH, or build it with `curate corpus build-default`)"
        )
    return default


def _load(path: Optional[Path], workspace: Optional[Path], batch_size: Optional[int]) -> Corpus:
    return open_corpus(resolve_corpus_path(path, workspace), batch_size=batch_size)


def vocab_range(corpus: Corpus, exact: bool) -> tuple[int | None, int | None, bool]:
    """(min id, max id, exact?) by a full streaming scan, or over evenly spaced steps for big corpora."""
    if corpus.num_rows == 0:
        return None, None, True
    total = corpus.num_rows * corpus.row_len
    chunk = max(1, min(corpus.num_rows, (1 << 22) // max(1, corpus.row_len)))
    if exact or total <= EXACT_SCAN_MAX_TOKENS:
        spans = [(a, min(corpus.num_rows, a + chunk)) for a in range(0, corpus.num_rows, chunk)]
        is_exact = True
    else:
        b = min(corpus.batch_size, corpus.num_rows)
        starts = np.unique(np.linspace(0, corpus.num_rows - b, SAMPLED_STEPS).astype(np.int64))
        spans = [(int(a), int(a) + b) for a in starts]
        is_exact = False
    lo, hi = None, None
    with progress_bar() as bar:
        task = bar.add_task("scanning token ids", total=len(spans))
        for a, b in spans:
            block = np.asarray(corpus.rows(a, b))
            if block.size:
                blo, bhi = int(block.min()), int(block.max())
                lo = blo if lo is None else min(lo, blo)
                hi = bhi if hi is None else max(hi, bhi)
            bar.advance(task)
    return lo, hi, is_exact


def check_vocab_with_progress(corpus: Corpus, vocab_size: int) -> None:
    """`check_token_ids` over the whole corpus with a progress bar."""
    chunk = max(1, (1 << 22) // max(1, corpus.row_len))
    with progress_bar() as bar:
        task = bar.add_task("checking token ids", total=corpus.num_rows)
        check_token_ids(corpus, (0, corpus.num_rows), vocab_size, chunk, progress=lambda n: bar.advance(task, n))


# -- info -------------------------------------------------------------------------------------------

BATCH_SIZE_HELP = "Rows per step (default: recorded, else 1024)."
OUT_ONLY_WORKSPACE_HELP = "Workspace folder (taken by every command; this one writes only --out)."


@dataclass
class InfoOptions:
    """`curate corpus info`."""

    path: Path | None = arg(None, help="Corpus: .bin/.idx prefix, shard, .npy, .parquet (file or folder), or corpus folder. Default: the workspace's default corpus.")
    as_json: bool = opt(False, "--json", help="Print JSON instead of a table.")
    batch_size: int | None = opt(None, "--batch-size", help=BATCH_SIZE_HELP)
    vocab_size: int | None = opt(None, "--vocab-size", help="Fail if any token id is outside [0, V).")
    exact: bool = opt(False, "--exact", help="Scan every row for the id range even on big corpora.")
    workspace: Path | None = workspace_opt()

    def validate(self) -> None:
        check_positive(self, "batch_size", "vocab_size")


def info_command(o: InfoOptions) -> None:
    """Rows, steps, batch size, dtype, token id range, shards and files of a corpus."""
    corpus = _load(o.path, o.workspace, o.batch_size)
    vocab_size = o.vocab_size
    if vocab_size is not None:
        check_vocab_with_progress(corpus, vocab_size)
    lo, hi, is_exact = vocab_range(corpus, o.exact)
    desc = corpus.describe()
    desc.update(
        {
            "token_id_min": lo,
            "token_id_max": hi,
            "token_id_range_exact": is_exact,
            "leftover_rows": corpus.num_rows - corpus.num_steps * corpus.batch_size,
            "bytes_per_row": corpus.row_bytes,
            "bytes_per_step": corpus.row_bytes * corpus.batch_size,
            "tokenizer": corpus.tokenizer_spec(),
            "sidecar": str(corpus.sidecar_path()) if corpus.sidecar_path() else None,
            "vocab_size": corpus.meta.vocab_size if corpus.meta else None,
            "eot_id": corpus.meta.eot_id if corpus.meta else None,
        }
    )
    if vocab_size is not None:
        desc["vocab_check"] = f"all ids < {vocab_size}"
    if o.as_json:
        print(json.dumps(desc, indent=2, default=str))
        return
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    shown = {
        "path": desc["path"],
        "format": desc["format"],
        "rows": f"{desc['rows']:,} x {desc['row_len']:,} tokens ({desc['bytes_per_row']:,} bytes per row)",
        "dtype": desc["dtype"],
        "batch size": f"{desc['batch_size']:,} rows ({desc['bytes_per_step']:,} bytes per step)",
        "steps": f"{desc['steps']:,}" + (f" (+{desc['leftover_rows']:,} rows of a partial step)" if desc["leftover_rows"] else ""),
        "token ids": "none" if lo is None else f"{lo} .. {hi}" + ("" if is_exact else f" (sampled over {SAMPLED_STEPS} steps; --exact scans all)"),
    }
    if vocab_size is not None:
        shown["vocab check"] = desc["vocab_check"]
    if "shards" in desc:
        shown["shards"] = str(desc["shards"])
    for key in ("vocab_size", "eot_id", "tokenizer", "sidecar"):
        if desc.get(key) is not None:
            shown[key.replace("_", " ")] = str(desc[key])
    files = desc["files"]
    shown["files"] = "\n".join(files[:6] + ([f"... and {len(files) - 6} more"] if len(files) > 6 else []))
    for k, v in shown.items():
        table.add_row(k, v)
    _stdout().print(table)


# -- show -------------------------------------------------------------------------------------------

@dataclass
class ShowOptions:
    """`curate corpus show`."""

    path: Path | None = arg(None, help="Corpus (default: the workspace's default corpus).")
    step: int = opt(..., "--step", help="Training step whose batch to show.", show_default=False)
    rows: str = opt("0:4", "--rows", help="Positions a:b inside the step's batch (':' = the whole batch).")
    batch_size: int | None = opt(None, "--batch-size", help=BATCH_SIZE_HELP)
    tokenizer: str | None = opt(None, "--tokenizer", help="tokenizer.json or a transformers name (default: the corpus's own).")
    raw: bool = opt(False, "--raw", help="Print token ids even when a tokenizer is known.")
    as_json: bool = opt(False, "--json", help="Print JSON records (row_id, step, position, token_ids, text, labels).")
    workspace: Path | None = workspace_opt()

    def validate(self) -> None:
        check_positive(self, "batch_size")
        check_positive(self, "step", minimum=0)


def show_command(o: ShowOptions) -> None:
    """The rows of step N's batch, decoded when a tokenizer is known (like Pythia's batch viewer)."""
    step = o.step
    corpus = _load(o.path, o.workspace, o.batch_size)
    b = corpus.batch_size
    if (step + 1) * b > corpus.num_rows:
        raise CurateError(f"{flag(o, 'step')} {step}: the corpus has steps 0..{corpus.num_steps - 1} at batch size {b}")
    a_pos, b_pos = parse_span(o.rows, flag(o, "rows"), b)
    start = step * b
    block = np.asarray(corpus.rows(start + a_pos, start + b_pos))
    spec = o.tokenizer or corpus.tokenizer_spec()
    tok = load_tokenizer(spec) if spec and not o.raw else None
    row_ids = list(range(start + a_pos, start + b_pos))
    labels = read_row_labels(corpus, row_ids)  # {} without a sidecar
    records = []
    for pos, rid, ids in zip(range(a_pos, b_pos), row_ids, block):
        rec: dict = {"row_id": rid, "step": step, "position": pos, "token_ids": ids.tolist()}
        if tok is not None:
            rec["text"] = tok.decode(ids)
        if rid in labels:
            rec["labels"] = labels[rid]
        records.append(rec)
    if o.as_json:
        print(json.dumps(records, indent=1, default=str))
        return
    console = _stdout()
    for rec in records:
        extra = "".join(f"  {k}={v}" for k, v in rec.get("labels", {}).items() if k in ("doc_id", "domain", "path") or "." in k)
        console.rule(f"row {rec['row_id']}  step {step}  position {rec['position']}{extra}", align="left")
        if "text" in rec:
            console.print(rec["text"], markup=False)
        else:
            console.print(" ".join(map(str, rec["token_ids"])), markup=False)


# -- ingest -----------------------------------------------------------------------------------------

@dataclass
class IngestOptions:
    """`curate corpus ingest`."""

    input_path: Path = arg(help="JSONL ({\"text\": ...} per line, .gz ok; other fields become row labels) or a folder of raw text files (recursive; any extension, .gz decompressed, UTF-8; binary files skipped; labels domain = top-level subfolder, source = relative path).", metavar="INPUT")
    tokenizer: str | None = opt(None, "--tokenizer", help="tokenizer.json path (or folder holding one) or a transformers name.", show_default=False)
    vocab: int | None = opt(None, "--vocab", help="Instead of --tokenizer: train a byte-level BPE of this many tokens on INPUT (saved in --out).", show_default=False)
    seq_len: int = opt(..., "--seq-len", help="Context length; rows hold seq_len + 1 tokens (2048 -> Pythia's 2,049).", show_default=False)
    out: Path = opt(..., "--out", help="Output corpus folder (created; replaced if it is a curate corpus).", show_default=False)
    seed: int = opt(0, "--seed", help="Seed of the row shuffle (training order).")
    batch_size: int = opt(REFERENCE_BATCH_SIZE, "--batch-size", help="Rows per training step recorded in corpus.json (default: the default recipe's).")
    heldout_rows: int = opt(0, "--heldout-rows", help="Hold out the last N rows (a random sample, after the shuffle): training never reads them and reports its held-out loss and ICL score on them.")
    workspace: Path | None = workspace_opt(OUT_ONLY_WORKSPACE_HELP)

    def validate(self) -> None:
        check_positive(self, "seq_len", "batch_size")
        check_positive(self, "heldout_rows", minimum=0)
        if (self.tokenizer is None) == (self.vocab is None):
            raise CurateError(f"give {flag(self, 'tokenizer')} or {flag(self, 'vocab')} (to train one on INPUT)"
                              + (", not both" if self.tokenizer is not None else ""))
        if self.vocab is not None:
            check_vocab(self, "vocab")


def check_vocab(options: object, name: str) -> None:
    """A BPE vocabulary size: the 256 byte symbols plus the end-of-text token at least."""
    check_positive(options, name, minimum=MIN_VOCAB)


def skipped_note(skipped: int) -> str:
    return f"; skipped {skipped:,} binary or non-UTF-8 file{'s' if skipped != 1 else ''}" if skipped else ""


def ingest_command(o: IngestOptions) -> None:
    """Tokenize text, pack rows with end-of-text separators, shuffle, write a Megatron corpus folder."""
    with hold(o.out, what="corpus"), progress_bar() as bar:
        tasks: dict[str, int] = {}

        def report(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done)

        result = ingest_path(o.input_path, o.tokenizer, o.seq_len, o.out, o.seed, o.batch_size, progress=report,
                             vocab_size=o.vocab, heldout_rows=o.heldout_rows)
        save_config(result.out_dir, "ingest", o)
    steps = (result.num_rows - o.heldout_rows) // o.batch_size
    held = f"; the last {o.heldout_rows:,} rows held out" if o.heldout_rows else ""
    trained = f"; tokenizer: BPE of {o.vocab:,} trained on INPUT" if o.vocab is not None else ""
    print(
        f"wrote {result.out_dir}: {result.num_rows:,} rows x {o.seq_len + 1} tokens from {result.num_documents:,} documents "
        f"({steps:,} steps of {o.batch_size}{held}; {result.dropped_tail_tokens:,} tail tokens dropped{skipped_note(result.skipped_files)}{trained})"
    )


# -- export -----------------------------------------------------------------------------------------

ORDER_ONLY = ("seed", "global_batch", "train_iters", "tokenizer", "data_path")
"""`curate corpus export` options of `--to megatron-order` alone."""


@dataclass
class ExportOptions:
    """`curate corpus export`."""

    src: Path | None = arg(None, help="Corpus to export (default: the workspace's default corpus).", metavar="SRC")
    to: ExportFormat = opt(..., "--to", help="Output format: megatron, parquet, npy (rows), or megatron-order: no rows, the index files megatron-core's GPTDataset caches, so that a Megatron-LM / GPT-NeoX job reads SRC (a Megatron .bin/.idx, e.g. a build-mix folder) in its row order; prints the job's flags.", show_default=False, case_sensitive=False)
    out: Path = opt(..., "--out", help="Output: a .bin/.idx prefix (megatron), a .parquet file, a .npy file, or the job's --data-cache-path folder (megatron-order).", show_default=False)
    steps: str | None = opt(None, "--steps", help="Steps a:b to export (at the batch size).")
    rows: str | None = opt(None, "--rows", help="Row ids a:b to export.")
    batch_size: int | None = opt(None, "--batch-size", help=BATCH_SIZE_HELP)
    seed: int | None = opt(None, "--seed", help=f"megatron-order: the job's --seed (default {MEGATRON_DEFAULT_SEED}, Megatron-LM's).", show_default=False)
    global_batch: int | None = opt(None, "--global-batch", help="megatron-order: the job's --global-batch-size (with --train-iters; both left out: one pass over the rows).", show_default=False)
    train_iters: int | None = opt(None, "--train-iters", help="megatron-order: the job's --train-iters; the job reads train-iters x global-batch samples, row i as sample i, cycling.", show_default=False)
    tokenizer: str | None = opt(None, "--tokenizer", help=f"megatron-order: the job's tokenizer: {NULL_TOKENIZER} (megatron-core's NullTokenizer) or a JSON file of its unique_identifiers (megatron hashes them into the cache's name).", show_default=False)
    data_path: str | None = opt(None, "--data-path", help="megatron-order: SRC's prefix as the job passes it (default: its absolute path here; megatron hashes it verbatim).", show_default=False)
    workspace: Path | None = workspace_opt()

    def validate(self) -> None:
        if self.steps is not None and self.rows is not None:
            raise CurateError(f"{flag(self, 'steps')} and {flag(self, 'rows')} exclude each other; give one")
        check_positive(self, "batch_size", "global_batch", "train_iters")
        if self.to is ExportFormat.megatron_order:
            for name in ("steps", "rows"):
                if getattr(self, name) is not None:
                    raise CurateError(f"{flag(self, name)}: --to megatron-order orders every row of SRC; export the rows "
                                      f"first (--to megatron) and order that file")
            if (self.global_batch is None) != (self.train_iters is None):
                raise CurateError(f"{flag(self, 'global_batch')} and {flag(self, 'train_iters')} go together (the job's "
                                  "samples are their product)")
            if self.tokenizer is None:
                raise CurateError(f"--to megatron-order needs {flag(self, 'tokenizer')} ({NULL_TOKENIZER} or a JSON file "
                                  "of the job tokenizer's unique_identifiers)")
            if self.seed is not None and self.seed < 0:
                raise CurateError(f"{flag(self, 'seed')} must be >= 0 (got {self.seed})")
            return
        given = [flag(self, n) for n in ORDER_ONLY if getattr(self, n) is not None]
        if given:
            raise CurateError(f"{', '.join(given)}: only with --to megatron-order")
        need = fmt_suffix_mismatch(self.to, self.out)
        if need:
            raise CurateError(f"{flag(self, 'out')} {self.out}: a {self.to.value} export needs a {need} file name")


def export_command(o: ExportOptions) -> None:
    """Stream a corpus (or a step / row range of it) to Megatron, Parquet or .npy, or write the index files that make
    a Megatron job read a Megatron file in row order."""
    corpus = _load(o.src, o.workspace, o.batch_size)
    if o.to is ExportFormat.megatron_order:
        _export_order(o, corpus)
        return
    if o.steps is not None:
        a, b = parse_span(o.steps, flag(o, "steps"), corpus.num_steps)
        start, stop = a * corpus.batch_size, b * corpus.batch_size
    elif o.rows is not None:
        start, stop = parse_span(o.rows, flag(o, "rows"), corpus.num_rows)
    else:
        start, stop = 0, corpus.num_rows
    with hold(o.out, what="export"), progress_bar() as bar:
        task = bar.add_task(f"export {o.to.value}", total=stop - start)
        written = export_rows(corpus, o.to, o.out, start, stop, progress=lambda n: bar.advance(task, n))
    print(f"wrote rows {start}..{stop} ({stop - start:,} rows) to {', '.join(map(str, written))}")


def _export_order(o: ExportOptions, corpus: Corpus) -> None:
    """`--to megatron-order`: the cache files, then the job's flags (the last line, alone)."""
    if not isinstance(corpus, MegatronCorpus) or len(corpus.bin.files) != 1:
        raise CurateError(f"{corpus.path}: megatron-order needs one Megatron .bin/.idx (megatron-core reads no shards or "
                          "other formats); write one with --to megatron first")
    with named(o, "tokenizer"):
        identifiers = tokenizer_identifiers(str(o.tokenizer))
    if o.out.exists() and not o.out.is_dir():
        raise CurateError(f"{flag(o, 'out')} {o.out}: exists and is not a folder (the job's --data-cache-path)")
    prefix = str(corpus.path.resolve())[: -len(".idx")]
    samples = o.global_batch * o.train_iters if o.global_batch is not None and o.train_iters is not None else None
    summary = write_megatron_order(prefix, o.out.resolve(), tokenizer_identifiers=identifiers,
                                   dataset_path=o.data_path or prefix, num_samples=samples,
                                   random_seed=MEGATRON_DEFAULT_SEED if o.seed is None else o.seed, split=TRAIN_SPLIT)
    vocab = corpus.meta.vocab_size if corpus.meta is not None and corpus.meta.vocab_size else corpus.vocab_range()[1] + 1
    flags = megatron_job_flags(summary, o.global_batch, o.train_iters, str(o.tokenizer), vocab)
    print(f"wrote the GPTDataset order of {summary['rows']:,} rows ({samples or summary['rows']:,} samples, sample i = row "
          f"i mod {summary['rows']:,}) to {o.out.resolve()}; the job's flags:")
    print(flags_line(flags))


def fmt_suffix_mismatch(fmt: ExportFormat, out: Path) -> str | None:
    """The suffix an output needs when `out` has the wrong one (None when it is fine)."""
    if fmt is ExportFormat.parquet and out.suffix != ".parquet":
        return ".parquet"
    if fmt is ExportFormat.npy and out.suffix != ".npy":
        return ".npy"
    return None
