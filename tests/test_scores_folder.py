"""The scores folder (one reader, one writer) and the one top-k rule: best first, ties by the lower row id."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.attribution.heads import HeadRef
from curate.attribution.score_table import ScoreTable, top_indices
from curate.attribution.scores_folder import (
    CORPUS_DIGEST, SUMMARY_FILE, TopK, begin_results, open_scores, read_summary, shard_file, top_tables, write_summary,
)
from curate.augment.mix import rank_rows
from curate.corpus import open_corpus
from curate.corpus_digest import content_digest
from curate.errors import CurateError
from tests.corpus_helpers import train_tiny_tokenizer
from tests.score_helpers import tiny_texts
from tests.structure_helpers import write_scores

# ties everywhere: rows 7, 3, 5 share the top value, rows 9, 1 the bottom one
ROW_IDS = np.array([7, 3, 9, 5, 1, 4, 8], dtype=np.int64)
VALUES = np.array([2.0, 2.0, -1.0, 2.0, -1.0, 0.5, 0.5])


def test_top_indices_breaks_ties_by_lower_row_id() -> None:
    assert ROW_IDS[top_indices(VALUES, ROW_IDS, 4)].tolist() == [3, 5, 7, 4]
    assert ROW_IDS[top_indices(VALUES, ROW_IDS, 3, "bottom")].tolist() == [1, 9, 4]
    assert ROW_IDS[top_indices(VALUES, ROW_IDS)].tolist() == [3, 5, 7, 4, 8, 1, 9]  # k None: every row, ranked
    with pytest.raises(CurateError, match="tail 'middle'"):
        top_indices(VALUES, ROW_IDS, 1, "middle")


def test_every_top_k_applies_the_same_rule(tmp_path: Path) -> None:
    """Score tables, the streaming selection over shard files (in any order, any split) and mixes agree."""
    table = ScoreTable(ROW_IDS, ROW_IDS // 2, np.zeros(7), VALUES[:, None], [HeadRef(1, 0)])
    best, worst = table.top_k(2)
    assert (best.tolist(), worst.tolist()) == ([3, 5], [1, 9])
    parts = [ScoreTable(ROW_IDS[a:b], ROW_IDS[a:b] // 2, np.zeros(b - a), VALUES[a:b, None], [HeadRef(1, 0)]) for a, b in ((4, 7), (0, 2), (2, 4))]
    files = [p.to_parquet(tmp_path / f"part{i}.parquet") for i, p in enumerate(parts)]
    top, bottom = top_tables(files, 2)
    assert top.column("row_id").to_pylist() == [3, 5] and bottom.column("row_id").to_pylist() == [1, 9]
    stream = TopK(4)
    for i in range(7):  # one row at a time, the worst kept rows compacted away as it goes
        stream.add(pa.table({"row_id": ROW_IDS[i : i + 1], "score": VALUES[i : i + 1]}))
    assert stream.result().column("row_id").to_pylist() == [3, 5, 7, 4]
    # a mix ranks window positions (= row ids minus the first row) by the same rule
    window = np.full(10, np.nan)
    window[ROW_IDS] = VALUES
    assert rank_rows(window).tolist() == [3, 5, 7, 4, 8, 1, 9]


def _write_folder(folder: Path, with_summary: bool) -> None:
    begin_results(folder)
    table = ScoreTable(ROW_IDS, ROW_IDS // 2, np.zeros(7), VALUES[:, None], [HeadRef(1, 0)])
    (folder / "shards").mkdir()
    table.to_parquet(folder / shard_file(0, 7))
    if with_summary:
        write_summary(folder, {"corpus": "c", "window": [0, 4], "batch_size": 2})


def test_reader_refuses_a_folder_without_summary(tmp_path: Path) -> None:
    folder = tmp_path / "scores"
    _write_folder(folder, with_summary=False)
    with pytest.raises(CurateError) as e:
        open_scores(folder)
    assert str(e.value) == f"{folder}: no {SUMMARY_FILE} (not a scores folder, or scoring has not finished)"
    assert read_summary(folder) is None
    write_summary(folder, {"corpus": "c", "window": [0, 4], "batch_size": 2})
    scores = open_scores(folder)
    assert scores.num_rows == 7 and read_summary(folder) == json.loads((folder / SUMMARY_FILE).read_text())
    best = scores.top_rows(3)
    assert best.row_ids.tolist() == [3, 5, 7] and best.values.tolist() == [2.0, 2.0, 2.0]
    assert scores.column_for("1.0") == "head_1_0"
    with pytest.raises(CurateError, match="is not LAYER.HEAD") as e:
        scores.column_for("x")
    assert "--" not in str(e.value)
    begin_results(folder)  # a rerun starts by marking the folder incomplete
    with pytest.raises(CurateError, match=f"no {SUMMARY_FILE}"):
        open_scores(folder)
    assert pq.read_table(folder / "shards").num_rows == 7


# --------------------------------------------------------------------------- bound to the scored corpus


def _curate(cwd: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "curate.cli", *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300)


def _ingest(cwd: Path, docs: Path, tokenizer: Path, out: Path, seed: int) -> None:
    proc = _curate(cwd, "corpus", "ingest", docs, "--tokenizer", tokenizer, "--seq-len", 31, "--out", out, "--seed", seed, "--batch-size", 8)
    assert proc.returncode == 0, proc.stderr


def _write_docs(path: Path, seed: int) -> Path:
    texts, domains = tiny_texts(240, seed)
    path.write_text("".join(json.dumps({"text": t, "domain": d}) + "\n" for t, d in zip(texts, domains)))
    return path


@pytest.mark.slow  # a dozen `curate` processes
def test_readers_refuse_another_corpus_at_the_recorded_path(tmp_path: Path) -> None:
    """A corpus re-ingested from other documents to the folder the scores recorded (and another corpus given with
    --corpus) is refused by every reader with one error line, exit 2, nothing written; a copy of the scored corpus
    elsewhere is accepted (the identity is its content, not its path); a folder without an identity is read with a warning."""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    tokenizer = train_tiny_tokenizer(tmp_path / "tokenizer.json", vocab_size=300, seed=0)
    corpus = tmp_path / "corpus"
    _ingest(cwd, _write_docs(tmp_path / "a.jsonl", 0), tokenizer, corpus, 0)
    copy = tmp_path / "copy-of-a"
    shutil.copytree(corpus, copy)
    rows = open_corpus(corpus).num_rows
    scores = write_scores(tmp_path / "scores", corpus, np.arange(64, dtype=float), np.arange(64), batch_size=8)
    summary = json.loads((scores / SUMMARY_FILE).read_text())
    assert summary[CORPUS_DIGEST] == content_digest(open_corpus(corpus)) == content_digest(open_corpus(copy))

    shutil.rmtree(corpus)
    _ingest(cwd, _write_docs(tmp_path / "b.jsonl", 1), tokenizer, corpus, 1)  # other documents, same path and shape
    assert open_corpus(corpus).num_rows >= 64 and summary[CORPUS_DIGEST] != content_digest(open_corpus(corpus))
    commands = [
        ["explain", scores],
        ["explain", scores, "--corpus", corpus],
        ["build-mix", scores, "--remove", "10%", "--out", tmp_path / "mix"],
        ["index", scores, "--out", tmp_path / "index2"],
        ["neighbors", 0, "--scores", scores],
        ["synth", "--scores", scores, "--rows", 4, "--motif-rows", 8, "--out", tmp_path / "synth"],
    ]
    for args in commands:
        proc = _curate(cwd, *args)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1, (args, proc.stderr[-2000:])
        assert lines[0] == (f"error: {open_corpus(corpus).path}: not the corpus {scores} was scored on (its content differs "
                            f"from the identity summary.json records); give the scored corpus, or score this one"), lines[0]
    assert not any((tmp_path / name).exists() for name in ("mix", "index2", "synth"))

    proc = _curate(cwd, "explain", scores, "--corpus", copy, "--json")
    assert proc.returncode == 0 and "warning" not in proc.stderr, proc.stderr[-2000:]
    del summary[CORPUS_DIGEST]  # a folder scored before identities were recorded: read, with a warning
    (scores / SUMMARY_FILE).write_text(json.dumps(summary))
    proc = _curate(cwd, "explain", scores, "--corpus", copy, "--json")
    assert proc.returncode == 0 and proc.stderr.startswith(f"warning: {scores}: records no corpus identity"), proc.stderr[-2000:]
    assert rows == open_corpus(copy).num_rows
