"""The scores folder: the on-disk form of a scoring job's results, its one reader and its writer pieces.

Layout (written by the scoring pipeline, read by explain / index / neighbors / build-mix / synth):
- `shards/rows-<start>-<stop>.parquet`: score-table Parquet files (`attribution.score_table`): `row_id`,
  `step`, `loss`, `head_{L}_{H}` per head (only for a method with per-head scores), `score`, and for a gradient
  method `grad_norm_{L}_{H}` per head and `grad_norm` (each row's gradient norms; absent in folders scored before
  they were recorded);
- `top_positive.parquet` / `top_negative.parquet`: the k best / worst rows (full score-table rows);
- `factors/`: the EK-FAC factor cache (`attribution.factors_io`);
- `summary.json`: what was scored (at least `corpus`; the pipeline adds `corpus_digest`, the scored corpus's content
  identity (`curate.corpus_digest`) that every reader checks the corpus it opens against, `method` (mda, gradient-dot, copy-share
  or loss; absent: mda), `circuit`, `heads`, `window` [start_step, end_step], `batch_size`, ...). Written LAST: a folder without it is incomplete, and the
  reader refuses it.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curate.atomic import atomic_path, read_json, write_json
from curate.attribution.heads import HeadRef
from curate.attribution.score_table import TAILS, top_indices
from curate.paths import resolve_stored
from curate.corpus import METADATA_FILE, Corpus, CorpusMeta, open_corpus
from curate.corpus_digest import content_digest
from curate.errors import CurateError

SUMMARY_FILE = "summary.json"
CORPUS_DIGEST = "corpus_digest"  # summary.json: the scored corpus's content identity
SHARDS_DIR = "shards"
FACTORS_DIR = "factors"
TOP_POSITIVE_FILE = "top_positive.parquet"
TOP_NEGATIVE_FILE = "top_negative.parquet"
READ_BATCH_ROWS = 65536


def shard_file(start: int, stop: int) -> str:
    """A shard's path relative to the scores folder (names sort in row order)."""
    return f"{SHARDS_DIR}/rows-{start:012d}-{stop:012d}.parquet"


# --------------------------------------------------------------------------- top-k, streaming


class TopK:
    """The k best rows by one column of tables fed one at a time (`top_indices`' rule: best first, ties by
    lower row id). Holds at most about 2k rows plus the table being added."""

    def __init__(self, k: int, column: str = "score", tail: str = "top") -> None:
        if tail not in TAILS:
            raise CurateError(f"tail {tail!r}: expected one of {', '.join(TAILS)}")
        self.k = max(0, int(k))
        self.column = column
        self.tail = tail
        self._parts: list[pa.Table] = []
        self._rows = 0

    def add(self, table: pa.Table) -> None:
        self._parts.append(table)
        self._rows += table.num_rows
        if self._rows > 2 * self.k + READ_BATCH_ROWS:
            self._compact()

    def _compact(self) -> pa.Table:
        merged = pa.concat_tables(self._parts) if len(self._parts) > 1 else self._parts[0]
        values = merged.column(self.column).to_numpy()
        keep = top_indices(values, merged.column("row_id").to_numpy(), self.k, self.tail)
        best = merged.take(pa.array(keep))
        self._parts, self._rows = [best], best.num_rows
        return best

    def result(self) -> pa.Table:
        """The k best rows, best first."""
        if not self._parts:
            raise CurateError("no score rows to select from")
        return self._compact()


@dataclass
class TopRows:
    """The k best rows by one column (`tail` top: highest first; bottom: lowest first), ties by row id."""

    row_ids: np.ndarray
    values: np.ndarray


# --------------------------------------------------------------------------- reading


@dataclass
class ScoresFolder:
    """A complete scores folder: its summary and shard files."""

    path: Path
    summary: dict
    shards: list[Path]
    num_rows: int
    columns: list[str]

    @property
    def corpus_path(self) -> str:
        """The scored corpus: `summary.json` `corpus`, relative paths taken from the folder first."""
        return resolve_stored(str(self.summary["corpus"]), self.path, self.summary.get("corpus_absolute"))

    @property
    def checkpoint(self) -> str | None:
        """The scored model: `summary.json` `checkpoint` (a path relative to the folder, or a hub name), read back."""
        value = self.summary.get("checkpoint")
        if value is None:
            return None
        stored = resolve_stored(str(value), self.path, self.summary.get("checkpoint_absolute"))
        if Path(stored).exists():
            return os.path.abspath(stored)
        return str(self.summary.get("checkpoint_absolute", value))  # a hub name, or a model no longer there

    @property
    def summary_path(self) -> Path:
        return self.path / SUMMARY_FILE

    def column_for(self, head: str | None) -> str:
        """The score column: `score`, or `head_L_H` for a head written `L.H`."""
        if head is None:
            return "score"
        col = HeadRef.parse(head).column
        if col not in self.columns:
            heads = ", ".join(str(h) for h in map(HeadRef.from_column, self.columns) if h is not None)
            raise CurateError(f"{self.path}: no scores for head {head} (heads scored: {heads or 'none'})")
        return col

    def iter_columns(self, columns: list[str], batch_rows: int = READ_BATCH_ROWS) -> Iterator[dict[str, np.ndarray]]:
        """Stream the given columns shard by shard, in batches."""
        for batch in self.iter_batches(columns, batch_rows):
            yield {c: batch.column(c).to_numpy(zero_copy_only=False) for c in columns}

    def iter_batches(self, columns: list[str] | None = None, batch_rows: int = READ_BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        for f in self.shards:
            yield from pq.ParquetFile(f).iter_batches(batch_size=batch_rows, columns=columns)

    def top_rows(self, k: int, column: str = "score", tail: str = "top") -> TopRows:
        """The k best rows by `column`, streamed over the shards."""
        top = TopK(k, column, tail)
        for batch in self.iter_batches(["row_id", column]):
            top.add(pa.Table.from_batches([batch]))
        best = top.result()
        return TopRows(best.column("row_id").to_numpy().astype(np.int64), best.column(column).to_numpy().astype(np.float64))


def open_scores(path: str | Path) -> ScoresFolder:
    """Open a complete scores folder; anything missing or malformed is one CurateError line."""
    folder = Path(path)
    if not folder.exists():
        raise CurateError(f"{folder}: scores folder not found")
    if not folder.is_dir():
        raise CurateError(f"{folder}: not a folder (expected a scores folder with {SUMMARY_FILE} and {SHARDS_DIR}/)")
    summary_path = folder / SUMMARY_FILE
    if not summary_path.is_file():
        raise CurateError(f"{folder}: no {SUMMARY_FILE} (not a scores folder, or scoring has not finished)")
    summary = read_json(summary_path, SUMMARY_FILE)
    if not isinstance(summary, dict) or "corpus" not in summary:
        raise CurateError(f"{summary_path}: missing the 'corpus' field")
    shards = sorted((folder / SHARDS_DIR).glob("*.parquet"))
    if not shards:
        raise CurateError(f"{folder}: no score shards ({SHARDS_DIR}/*.parquet)")
    num_rows = 0
    columns: list[str] | None = None
    for f in shards:
        try:
            pf = pq.ParquetFile(f)
        except Exception as e:  # pyarrow raises several types for corrupt files
            raise CurateError(f"{f}: not a readable Parquet file ({type(e).__name__})") from None
        names = pf.schema_arrow.names
        for need in ("row_id", "score"):
            if need not in names:
                raise CurateError(f"{f}: not a score shard (no {need!r} column)")
        columns = names if columns is None else [c for c in columns if c in names]
        num_rows += pf.metadata.num_rows
    if num_rows == 0:
        raise CurateError(f"{folder}: the score shards hold no rows")
    return ScoresFolder(folder, summary, shards, num_rows, columns or [])


def read_summary(folder: Path) -> dict | None:
    """The summary of a complete scores folder, None when there is none (or it is not JSON)."""
    path = Path(folder) / SUMMARY_FILE
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return summary if isinstance(summary, dict) else None


@dataclass(frozen=True)
class Window:
    """The attribution window: steps [start_step, end_step) at `batch_size` rows per step."""

    start_step: int
    end_step: int
    batch_size: int

    @property
    def first_row(self) -> int:
        return self.start_step * self.batch_size

    @property
    def stop_row(self) -> int:
        return self.end_step * self.batch_size

    @property
    def rows(self) -> int:
        return self.stop_row - self.first_row


def read_window(scores: ScoresFolder) -> Window:
    """The window and batch size from `summary.json`; missing or malformed fields are one CurateError line."""
    where = scores.summary_path
    s = scores.summary
    window = s.get("window")
    b = s.get("batch_size")
    if not (isinstance(window, list) and len(window) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in window)):
        raise CurateError(f"{where}: 'window' must be [start_step, end_step], got {window!r}")
    if not isinstance(b, int) or isinstance(b, bool) or b < 1:
        raise CurateError(f"{where}: 'batch_size' must be a positive integer, got {b!r}")
    start, end = window
    if start < 0 or end <= start:
        raise CurateError(f"{where}: window {window} is empty or negative")
    return Window(start, end, b)


def check_scored_corpus(scores: ScoresFolder, corpus: Corpus) -> None:
    """Refuse (one CurateError line) a corpus other than the one the scores were computed on, by the content identity
    summary.json records. A folder scored before identities were recorded is read with a warning on stderr: only
    its row ids can be checked against the corpus."""
    recorded = scores.summary.get(CORPUS_DIGEST)
    if recorded is None:
        print(f"warning: {scores.path}: records no corpus identity (scored by an earlier curate), so {corpus.path} cannot "
              f"be checked to be the corpus it scored; score again to bind the scores to their corpus", file=sys.stderr)
        return
    if content_digest(corpus) != recorded:
        raise CurateError(f"{corpus.path}: not the corpus {scores.path} was scored on (its content differs from the identity "
                          f"summary.json records); give the scored corpus, or score this one")


def open_checked_corpus(scores: ScoresFolder, path: str | Path | None = None, batch_size: int | None = None) -> Corpus:
    """The corpus at `path` (default: the scored corpus's recorded path), refused unless it is the scored corpus."""
    corpus = open_corpus(path if path is not None else scores.corpus_path, batch_size=batch_size)
    check_scored_corpus(scores, corpus)
    return corpus


def open_scored_corpus(scores: ScoresFolder, batch_size: int) -> tuple[Corpus, str]:
    """The scored corpus and the path to name it by. A data file (`corpus.idx`) inside a corpus folder is
    opened as that folder, so its corpus.json (tokenizer, vocabulary) comes along."""
    raw = Path(scores.corpus_path)
    corpus = open_corpus(raw, batch_size=batch_size)
    name = raw
    if corpus.meta is None:
        folder = Path(corpus.path).parent
        if (folder / METADATA_FILE).is_file():
            meta = CorpusMeta.load(folder)
            data = folder / meta.data
            same = {data.resolve(), data.with_suffix(".idx").resolve(), data.with_name(data.name + ".idx").resolve()}
            if Path(corpus.path).resolve() in same:
                corpus, name = open_corpus(folder, batch_size=batch_size), folder
    check_scored_corpus(scores, corpus)
    return corpus, str(name.resolve())


# --------------------------------------------------------------------------- writing


def begin_results(out: Path) -> None:
    """Make the folder and mark it incomplete (no summary.json) before any result is (re)written."""
    out.mkdir(parents=True, exist_ok=True)
    (out / SUMMARY_FILE).unlink(missing_ok=True)


def clear_results(out: Path, also: Iterable[str] = ()) -> None:
    """Remove a previous job's results (summary, top files, shards, and the files named in `also`); the
    factor cache stays."""
    for name in (*also, SUMMARY_FILE, TOP_POSITIVE_FILE, TOP_NEGATIVE_FILE):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / SHARDS_DIR, ignore_errors=True)


def remove_unlisted_shards(out: Path, keep: set[str]) -> int:
    """Delete files in `shards/` (finished shards of another run, temporaries of killed writers) whose names
    are not in `keep`; returns how many."""
    folder = out / SHARDS_DIR
    if not folder.is_dir():
        return 0
    removed = 0
    for p in folder.iterdir():
        if p.is_file() and p.name not in keep:
            p.unlink()
            removed += 1
    return removed


def top_tables(files: list[Path], k: int, column: str = "score") -> tuple[pa.Table, pa.Table]:
    """The k highest and k lowest rows by `column` across shard files, best first (one shard read at a time)."""
    best, worst = TopK(k, column, "top"), TopK(k, column, "bottom")
    for f in files:
        t = pq.read_table(f)
        best.add(t)
        worst.add(t)
    return best.result(), worst.result()


def write_top_files(out: Path, best: pa.Table, worst: pa.Table) -> None:
    for table, name in ((best, TOP_POSITIVE_FILE), (worst, TOP_NEGATIVE_FILE)):
        with atomic_path(out / name) as tmp:
            pq.write_table(table, tmp)


def write_summary(out: Path, summary: dict) -> None:
    """Write summary.json (atomically): the last file of a job, it marks the folder complete."""
    write_json(out / SUMMARY_FILE, summary)
