"""End to end on one's own text, with curate commands only: a folder of raw text files (LaTeX, XML, Python, troff
man pages, prose; `tests/fixtures/raw_text/<domain>/`) -> tokenizer -> corpus -> a tiny model trained for two
epochs -> circuits -> scores -> explain -> a mix without the top 10% -> the retrained arm (the command build-mix
prints). Each step's outputs are checked against the previous ones (rows, provenance, the rows each run trained on)."""
from __future__ import annotations

import json
import shlex
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from curate.corpus import open_corpus
from tests.corpus_helpers import run_cli

RAW = Path(__file__).resolve().parent / "fixtures" / "raw_text"
DOMAINS = {"latex", "python", "prose", "troff", "xml"}
BATCH = 8
EPOCHS = 2
HELDOUT = 40
SHAPE = ["--layers", "2", "--hidden", "32", "--attention-heads", "2", "--context", "32"]


def cli(args: list, monkeypatch, capsys) -> str:
    code, out, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, (args, out, err)
    return out


def stream_rows(run: Path) -> list[int]:
    return pq.read_table(run / "stream.parquet").column("row_id").to_pylist()


def test_raw_text_folder_to_a_retrained_arm(tmp_path: Path, monkeypatch, capsys, ray_address) -> None:
    # tokenizer and corpus
    cli(["tokenizer", "train", RAW, "--vocab", 300, "--out", tmp_path / "tok"], monkeypatch, capsys)
    corpus_dir = tmp_path / "corpus"
    out = cli(["corpus", "ingest", RAW, "--tokenizer", tmp_path / "tok", "--seq-len", 32, "--batch-size", BATCH,
               "--heldout-rows", HELDOUT, "--out", corpus_dir], monkeypatch, capsys)
    assert "from 15 documents" in out and f"the last {HELDOUT} rows held out" in out
    corpus = open_corpus(corpus_dir)
    n = corpus.num_rows - HELDOUT  # training rows
    assert corpus.meta is not None and corpus.meta.extra["heldout_start"] == n
    side = pq.read_table(corpus_dir / "rows.parquet").to_pydict()
    assert set(side["domain"]) == DOMAINS and side["row_id"] == list(range(n + HELDOUT))
    assert (corpus_dir / "tokenizer.json").read_bytes() == (tmp_path / "tok" / "tokenizer.json").read_bytes()

    # baseline: a tiny model, two epochs
    run = tmp_path / "run"
    summary = json.loads(cli(["train", "--corpus", corpus_dir, *SHAPE, "--epochs", EPOCHS, "--eval-every", 20,
                              "--warmup-steps", 10, "--out", run, "--quiet", "--json"], monkeypatch, capsys))
    steps = EPOCHS * n // BATCH
    first_epoch = n // BATCH
    assert summary["complete"] and summary["steps"] == steps
    assert "(heldout_start)" in summary["heldout"] and summary["emergence"]["icl"]["final"] is not None
    rows = stream_rows(run)
    second = rows[n:]  # the second epoch, in a fresh order, cut at the last whole step
    assert rows[:n] == list(range(n)) and len(set(second)) == len(second) == steps * BATCH - n and second != rows[: len(second)]
    assert max(rows) < n  # the held-out rows are never trained on
    assert json.loads((run / "plan.json").read_text())["epochs"] == EPOCHS

    report = json.loads(cli(["circuits", run, "--revision", f"step{steps}", "--json"], monkeypatch, capsys))
    assert [h["head"] for h in report["heads"]] == ["0.0", "0.1", "1.0", "1.1"]  # the --layers/--heads shape
    assert report["probes"]["vocab_size"] == 300

    # scores: the default window (0 to the checkpoint) spans both epochs, so it is scored as the first epoch
    scores = tmp_path / "scores"
    out = cli(["score", "--model", run, "--revision", f"step{steps}", "--heads", "1.0", "--out", scores, "--quiet",
               "--workers", "1", "--ray-address", ray_address, "--fit-rows", 64, "--json"], monkeypatch, capsys)
    s = json.loads(out)
    assert s["window"] == [0, first_epoch] and s["rows"] == first_epoch * BATCH
    assert any(f"scored as 0:{first_epoch}" in note for note in s["notes"])
    table = pq.read_table(scores / "shards")
    ids, shard_steps = table.column("row_id").to_pylist(), table.column("step").to_pylist()
    assert sorted(ids) == list(range(first_epoch * BATCH))
    trained_at = {r: i // BATCH for i, r in enumerate(rows[:n])}  # first-epoch step of each row, from the run
    assert all(trained_at[r] == st for r, st in zip(ids, shard_steps))
    assert s["top_positive"] and all(r["domain"] == side["domain"][r["row_id"]] for r in s["top_positive"])  # labels travel

    out = cli(["explain", scores], monkeypatch, capsys)
    assert f"{first_epoch * BATCH:,} window rows" in out  # the tail is read against the scored window
    assert "each row its document's vote" in out  # the files span several rows: the tags are voted per document
    voted = json.loads(cli(["explain", scores, "--json"], monkeypatch, capsys))
    per_row = json.loads(cli(["explain", scores, "--tag-per", "row", "--json"], monkeypatch, capsys))
    assert (voted["tagged_per"], per_row["tagged_per"]) == ("document", "row")
    from curate.augment.explain import document_ids, tag_corpus_rows, tag_rows_per_document
    from curate.augment.tags import vote_by_document

    docs = document_ids(corpus)
    assert docs is not None and np.array_equal(docs, side["doc_id"])
    every = np.arange(corpus.num_rows)
    assert tag_rows_per_document(corpus, every, docs) == vote_by_document(tag_corpus_rows(corpus, every), docs.tolist())
    by_doc = {}
    for d, label in zip(docs.tolist(), tag_rows_per_document(corpus, every[::-1], docs)[::-1]):
        assert by_doc.setdefault(d, label) == label  # one label per document, whatever rows are asked for
    by_domain = json.loads(cli(["explain", scores, "--by", "domain", "--json"], monkeypatch, capsys))  # both tails
    assert all(domain in json.dumps(by_domain) for domain in ("latex", "xml", "python", "troff", "prose")), by_domain

    # the mix without the top 10% and the arm trained on it, by the command build-mix prints
    mix = tmp_path / "mix"
    out = cli(["build-mix", scores, "--remove", "10%", "--out", mix], monkeypatch, capsys)
    hint = next(line for line in out.splitlines() if line.startswith("train on it: "))
    args = shlex.split(hint[len("train on it: "):])
    assert args[:2] == ["curate", "train"] and "--epochs" in args and "--layers" in args
    arm = Path(args[args.index("--out") + 1])
    cli([*args[1:], "--quiet"], monkeypatch, capsys)
    prov = pq.read_table(mix / "provenance.parquet").to_pydict()
    removed = set(json.loads((mix / "plan.json").read_text())["drop"])
    assert len(removed) == round(0.1 * first_epoch * BATCH) and len(prov["row_id"]) == first_epoch * BATCH - len(removed)
    assert set(prov["source_row_id"]).isdisjoint(removed)
    arm_rows = stream_rows(arm)
    counts = Counter(arm_rows)
    assert removed.isdisjoint(counts) and max(counts) < n  # the arm never saw a removed or a held-out row
    assert all(counts[r] >= 1 for r in prov["source_row_id"])  # and trained on every row of the mix
    assert arm_rows[: len(prov["row_id"])] == prov["source_row_id"]  # in the mix's order in its first epoch
    arm_run = json.loads((arm / "run.json").read_text())
    assert arm_run["spec"]["epochs"] == EPOCHS and arm_run["model_config"]["hidden_size"] == 32
