"""The bad-input matrix: every command x every kind of bad input gives exit 2, exactly one `error:` line, no
traceback, nothing left behind where it would have written, and every input byte-identical.

The inputs are built once for the module: a tiny scoring corpus and model (`score_helpers`), a scores folder over a
labelled corpus (`mix_helpers.make_setup`), a structure index and a mix of it, and broken copies of the corpus
(an index listing 0 rows beside data, a truncated .idx / .bin, a negative and an out-of-vocabulary token id).
Each case runs in-process through the real entry point (`run_cli`), from an empty working directory, with an
empty workspace; the Ray session and the experiment's baseline are replaced by stubs that fail loudly, so a
case that got past validation shows as a failure instead of running a job.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import pkgutil
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.corpus_helpers import digest, run_cli, run_cli_redirected
from tests.score_helpers import build_tiny_corpus, build_tiny_model


# --------------------------------------------------------------------------- inputs, built once


def _hand_made(folder: Path) -> None:
    """A corpus folder whose files were written by hand: no recorded vocabulary, no sidecar."""
    meta = json.loads((folder / "corpus.json").read_text())
    meta.pop("vocab_size", None)
    meta.pop("sidecar", None)
    (folder / "corpus.json").write_text(json.dumps(meta))
    (folder / "rows.parquet").unlink()


def _broken_copies(corpus: Path, root: Path) -> dict[str, Path]:
    from curate.corpus import open_corpus
    from curate.megatron import write_megatron

    rows = open_corpus(corpus).rows(0, 40).astype(np.int64)
    out = {}

    def copy(name: str) -> Path:
        dst = root / name
        shutil.copytree(corpus, dst)
        return dst

    zero = copy("zero-rows")  # an .idx listing 0 sequences beside a non-empty .bin
    _, idx = write_megatron(root / "empty", np.zeros((0, rows.shape[1]), np.uint16), np.uint16)
    shutil.copyfile(idx, zero / "corpus.idx")
    (root / "empty.bin").unlink()
    idx.unlink()
    out["zero"] = zero
    t = copy("trunc-idx")
    data = (t / "corpus.idx").read_bytes()
    (t / "corpus.idx").write_bytes(data[: len(data) // 2])
    out["trunc_idx"] = t
    t = copy("trunc-bin")
    data = (t / "corpus.bin").read_bytes()
    (t / "corpus.bin").write_bytes(data[:1000])
    out["trunc_bin"] = t
    neg = copy("negative")
    bad = rows.copy()
    bad[5, 3] = -1
    write_megatron(neg / "corpus", bad.astype(np.int32), np.int32)
    _hand_made(neg)
    out["neg"] = neg
    oov = copy("out-of-vocab")
    bad = rows.copy()
    bad[7, 2] = 400  # the corpus (and the model) have 300 tokens
    write_megatron(oov / "corpus", bad, np.uint16)
    _hand_made(oov)
    out["oov"] = oov
    return out


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, Path]:
    from mix_helpers import make_setup

    root = tmp_path_factory.mktemp("bad-input")
    p: dict[str, Path] = {"root": root}
    p["corpus"] = build_tiny_corpus(root / "corpus")
    p["model"] = build_tiny_model(root / "model")
    p["model64"] = build_tiny_model(root / "model64", context=64)
    setup = make_setup(root / "labelled")
    p["scores"], p["mcorpus"] = setup.scores, setup.corpus
    p.update(_broken_copies(p["corpus"], root))
    p["notcorpus"] = root / "notes"
    p["notcorpus"].mkdir()
    (p["notcorpus"] / "readme.txt").write_text("not a corpus\n")
    p["foreign"] = root / "mine"
    p["foreign"].mkdir()
    (p["foreign"] / "precious.txt").write_text("a user's file\n")
    p["missing"] = root / "does-not-exist"
    docs = root / "docs"
    docs.mkdir()
    (docs / "texts.jsonl").write_text("".join(json.dumps({"text": f"the cat sat on mat {i} " * 8}) + "\n" for i in range(40)))
    p["jsonl"], p["docs"] = docs / "texts.jsonl", docs
    (root / "broken.jsonl").write_text('{"text": "fine"}\n{not json\n')
    p["badjsonl"] = root / "broken.jsonl"
    (root / "empty.jsonl").write_text("")
    p["emptyjsonl"] = root / "empty.jsonl"
    p["tok"] = p["corpus"] / "tokenizer.json"
    for name, body in (("badcmd", "{not json"), ("unknowncmd", json.dumps({"command": "frobnicate", "options": {}}))):
        (root / name).mkdir()
        (root / name / "command.json").write_text(body)
        p[name] = root / name
    (root / "badmanifest").mkdir()
    (root / "badmanifest" / "manifest.json").write_text("{oops")
    p["badmanifest"] = root / "badmanifest"
    # a structure index and a mix of the scores (the inputs of neighbors / verify)
    with pytest.MonkeyPatch.context() as mp:
        code, _, err = run_cli_redirected(["index", p["scores"], "--out", root / "index"], mp)
        assert code == 0, err
        code, _, err = run_cli_redirected(["build-mix", p["scores"], "--remove", "5%", "--out", root / "mix"], mp)
        assert code == 0, err
    p["index"], p["mix"] = root / "index", root / "mix"
    (root / "ws-foreign" / "default" / "corpus").mkdir(parents=True)
    (root / "ws-foreign" / "default" / "corpus" / "precious.txt").write_text("a user's file\n")
    p["foreign_ws"] = root / "ws-foreign"
    # a scales-style experiment folder (a size folder's marker) and a single experiment's marker
    (root / "single-exp").mkdir()
    (root / "single-exp" / "experiment.json").write_text(json.dumps({"identity": {"circuit": "induction"}, "command": "curate experiment"}))
    p["single_exp"] = root / "single-exp"
    return p


# --------------------------------------------------------------------------- the matrix

NEW = "{out}/new"  # an --out that does not exist yet (its parent is watched for leftovers)
SCORE = ["score", "--model", "{model}", "--heads", "1.0", "--window", "0:2", "--workers", "1", "--quiet"]
TRAIN = ["train", "--steps", "2", "--batch-size", "8", "--eval-every", "1", "--quiet"]
MIX = ["build-mix", "{scores}"]
EXPERIMENT = ["experiment", "--quick", "--workers", "1", "--quiet"]
EVALUATE = ["evaluate", "--corpus", "{corpus}", "--workers", "1", "--quiet"]

CASES: list[tuple[str, list[str], str]] = [
    # (id, arguments, a phrase the error line must hold)
    # -- score
    ("score-missing-corpus", SCORE + ["--corpus", "{missing}", "--out", NEW], "does-not-exist"),
    ("score-not-a-corpus", SCORE + ["--corpus", "{notcorpus}", "--out", NEW], "notes"),
    ("score-zero-row-idx", SCORE + ["--corpus", "{zero}", "--out", NEW], "0 sequences"),
    ("score-truncated-idx", SCORE + ["--corpus", "{trunc_idx}", "--out", NEW], "trunc-idx"),
    ("score-truncated-bin", SCORE + ["--corpus", "{trunc_bin}", "--out", NEW], "trunc-bin"),
    ("score-negative-ids", SCORE + ["--corpus", "{neg}", "--out", NEW], "-1"),
    ("score-out-of-vocab", SCORE + ["--corpus", "{oov}", "--out", NEW], "400"),
    ("score-scores-as-corpus", SCORE + ["--corpus", "{scores}", "--out", NEW], "scores"),
    ("score-missing-model", ["score", "--model", "{missing}", "--corpus", "{corpus}", "--heads", "1.0", "--window", "0:2", "--out", NEW], "does-not-exist"),
    ("score-corpus-as-model", ["score", "--model", "{corpus}", "--corpus", "{corpus}", "--heads", "1.0", "--window", "0:2", "--out", NEW], "corpus"),
    ("score-out-is-the-corpus", SCORE + ["--corpus", "{corpus}", "--out", "{corpus}"], "input"),
    ("score-out-contains-the-corpus", SCORE + ["--corpus", "{corpus}", "--out", "{root}"], "input"),
    ("score-out-is-the-model", SCORE + ["--corpus", "{corpus}", "--out", "{model}"], "input"),
    ("score-out-foreign", SCORE + ["--corpus", "{corpus}", "--out", "{foreign}"], "not a curate scores folder"),
    ("score-out-is-a-mix", SCORE + ["--corpus", "{corpus}", "--out", "{mix}"], "mix"),
    ("score-head-out-of-range", SCORE + ["--corpus", "{corpus}", "--heads", "9.9", "--out", NEW], "9.9"),
    ("score-head-garbage", SCORE + ["--corpus", "{corpus}", "--heads", "abc", "--out", NEW], "abc"),
    ("score-tail-rows-0", SCORE + ["--corpus", "{corpus}", "--tail-rows", "0%", "--out", NEW], "0%"),
    ("score-tail-rows-150", SCORE + ["--corpus", "{corpus}", "--tail-rows", "150%", "--out", NEW], "150%"),
    ("score-top-abc", SCORE + ["--corpus", "{corpus}", "--top", "abc", "--out", NEW], "abc"),
    ("score-window-reversed", SCORE + ["--corpus", "{corpus}", "--window", "5:2", "--out", NEW], "5:2"),
    ("score-window-beyond-corpus", SCORE + ["--corpus", "{corpus}", "--window", "0:5000", "--out", NEW], "5000"),
    ("score-window-garbage", SCORE + ["--corpus", "{corpus}", "--window", "abc", "--out", NEW], "abc"),
    ("score-circuit-unknown", SCORE + ["--corpus", "{corpus}", "--circuit", "nope", "--out", NEW], "nope"),
    ("score-mode-unknown", SCORE + ["--corpus", "{corpus}", "--mode", "xyz", "--out", NEW], "xyz"),
    ("score-method-unknown", SCORE + ["--corpus", "{corpus}", "--method", "nope", "--out", NEW], "nope"),
    ("score-workers-0", SCORE + ["--corpus", "{corpus}", "--workers", "0", "--out", NEW], "workers"),
    ("score-shard-rows-0", SCORE + ["--corpus", "{corpus}", "--shard-rows", "0", "--out", NEW], "shard-rows"),
    ("score-ray-address-garbage", SCORE + ["--corpus", "{corpus}", "--ray-address", "no-port-here", "--out", NEW], "ray-address"),
    ("score-workers-not-int", SCORE + ["--corpus", "{corpus}", "--workers", "two", "--out", NEW], "workers"),
    # -- train
    ("train-missing-corpus", TRAIN + ["--corpus", "{missing}", "--out", NEW], "does-not-exist"),
    ("train-not-a-corpus", TRAIN + ["--corpus", "{notcorpus}", "--out", NEW], "notes"),
    ("train-zero-row-idx", TRAIN + ["--corpus", "{zero}", "--out", NEW], "0 sequences"),
    ("train-truncated-idx", TRAIN + ["--corpus", "{trunc_idx}", "--out", NEW], "trunc-idx"),
    ("train-truncated-bin", TRAIN + ["--corpus", "{trunc_bin}", "--out", NEW], "trunc-bin"),
    ("train-negative-ids", TRAIN + ["--corpus", "{neg}", "--out", NEW], "-1"),
    ("train-out-of-vocab", TRAIN + ["--corpus", "{oov}", "--from", "{model}", "--out", NEW], "400"),
    ("train-scores-as-corpus", TRAIN + ["--corpus", "{scores}", "--out", NEW], "scores"),
    ("train-out-is-the-corpus", TRAIN + ["--corpus", "{corpus}", "--out", "{corpus}"], "input"),
    ("train-out-contains-the-corpus", TRAIN + ["--corpus", "{corpus}", "--out", "{root}"], "input"),
    ("train-out-foreign", TRAIN + ["--corpus", "{corpus}", "--out", "{foreign}"], "mine"),
    ("train-out-is-scores", TRAIN + ["--corpus", "{corpus}", "--out", "{scores}"], "scores"),
    ("train-steps-0", TRAIN + ["--corpus", "{corpus}", "--steps", "0", "--out", NEW], "steps"),
    ("train-steps-negative", TRAIN + ["--corpus", "{corpus}", "--steps", "-5", "--out", NEW], "steps"),
    ("train-batch-size-0", TRAIN + ["--corpus", "{corpus}", "--batch-size", "0", "--out", NEW], "batch"),
    ("train-from-missing", TRAIN + ["--corpus", "{corpus}", "--from", "{missing}", "--out", NEW], "does-not-exist"),
    ("train-from-a-corpus", TRAIN + ["--corpus", "{corpus}", "--from", "{mcorpus}", "--out", NEW], "corpus"),
    ("train-plan-missing", TRAIN + ["--corpus", "{corpus}", "--plan", "{missing}", "--out", NEW], "does-not-exist"),
    ("train-checkpoints-garbage", TRAIN + ["--corpus", "{corpus}", "--checkpoints", "sometimes", "--out", NEW], "sometimes"),
    ("train-lr-not-a-number", TRAIN + ["--corpus", "{corpus}", "--lr", "abc", "--out", NEW], "lr"),
    ("train-config-missing", TRAIN + ["--corpus", "{corpus}", "--config", "{missing}", "--out", NEW], "does-not-exist"),
    ("train-resume-nothing", TRAIN + ["--corpus", "{corpus}", "--resume", "--out", "{foreign}"], "mine"),
    # -- circuits
    ("circuits-missing-model", ["circuits", "{missing}"], "does-not-exist"),
    ("circuits-corpus-as-model", ["circuits", "{corpus}"], "corpus"),
    ("circuits-scores-as-model", ["circuits", "{scores}"], "scores"),
    ("circuits-not-a-model", ["circuits", "{notcorpus}"], "notes"),
    ("circuits-probes-longer-than-context", ["circuits", "{model64}", "--half-len", "40"], "context"),
    ("circuits-half-len-0", ["circuits", "{model}", "--half-len", "0"], "half length"),
    ("circuits-probes-0", ["circuits", "{model}", "--probes", "0"], "probes"),
    ("circuits-revision-of-a-plain-folder", ["circuits", "{model}", "--revision", "step5"], "step5"),
    # -- build-mix
    ("build-mix-missing-scores", ["build-mix", "{missing}", "--remove", "10%", "--out", NEW], "does-not-exist"),
    ("build-mix-corpus-as-scores", ["build-mix", "{corpus}", "--remove", "10%", "--out", NEW], "corpus"),
    ("build-mix-not-scores", ["build-mix", "{notcorpus}", "--remove", "10%", "--out", NEW], "notes"),
    ("build-mix-remove-0", MIX + ["--remove", "0%", "--out", NEW], "0%"),
    ("build-mix-remove-150", MIX + ["--remove", "150%", "--out", NEW], "150%"),
    ("build-mix-remove-abc", MIX + ["--remove", "abc", "--out", NEW], "abc"),
    ("build-mix-remove-negative", MIX + ["--remove", "-3", "--out", NEW], "-3"),
    ("build-mix-augment-0", MIX + ["--augment", "0", "--out", NEW], "augment"),
    ("build-mix-augment-abc", MIX + ["--augment", "abc", "--out", NEW], "abc"),
    ("build-mix-nothing-to-do", MIX + ["--out", NEW], "remove"),
    ("build-mix-source-unknown", MIX + ["--augment", "2%", "--source", "nope", "--out", NEW], "nope"),
    ("build-mix-control-unknown", MIX + ["--remove", "10%", "--control", "nope", "--out", NEW], "nope"),
    ("build-mix-at-step-outside", MIX + ["--augment", "2%", "--at-step", "100000", "--out", NEW], "100000"),
    ("build-mix-pool-missing", MIX + ["--augment", "2%", "--source", "neighbors", "--pool", "{missing}", "--out", NEW], "does-not-exist"),
    ("build-mix-out-is-the-scores", MIX + ["--remove", "10%", "--out", "{scores}"], "input"),
    ("build-mix-out-is-the-corpus", MIX + ["--remove", "10%", "--out", "{mcorpus}"], "input"),
    ("build-mix-out-contains-inputs", MIX + ["--remove", "10%", "--out", "{root}"], "input"),
    ("build-mix-out-foreign", MIX + ["--remove", "10%", "--out", "{foreign}"], "not a curate mix"),
    ("build-mix-out-is-an-index", MIX + ["--remove", "10%", "--out", "{index}"], "index"),
    # -- verify
    ("verify-missing", ["verify", "{missing}"], "does-not-exist"),
    ("verify-not-a-mix", ["verify", "{notcorpus}"], "notes"),
    ("verify-a-corpus", ["verify", "{corpus}"], "corpus"),
    ("verify-scores", ["verify", "{scores}"], "scores"),
    ("verify-corrupt-manifest", ["verify", "{badmanifest}"], "manifest"),
    # -- explain
    ("explain-missing", ["explain", "{missing}"], "does-not-exist"),
    ("explain-corpus-as-scores", ["explain", "{corpus}"], "corpus"),
    ("explain-not-scores", ["explain", "{notcorpus}"], "notes"),
    ("explain-tail-rows-0", ["explain", "{scores}", "--tail-rows", "0%"], "0%"),
    ("explain-tail-rows-150", ["explain", "{scores}", "--tail-rows", "150%"], "150%"),
    ("explain-top-abc", ["explain", "{scores}", "--top", "abc"], "abc"),
    ("explain-head-out-of-range", ["explain", "{scores}", "--head", "9.9"], "9.9"),
    ("explain-head-garbage", ["explain", "{scores}", "--head", "abc"], "abc"),
    ("explain-tail-unknown", ["explain", "{scores}", "--tail", "middle"], "middle"),
    ("explain-tag-per-unknown", ["explain", "{scores}", "--tag-per", "word"], "word"),
    ("explain-corpus-missing", ["explain", "{scores}", "--corpus", "{missing}"], "does-not-exist"),
    ("explain-corpus-not-a-corpus", ["explain", "{scores}", "--corpus", "{notcorpus}"], "notes"),
    ("explain-corpus-too-short", ["explain", "{scores}", "--corpus", "{corpus}"], "corpus"),
    # -- index
    ("index-missing", ["index", "{missing}", "--out", NEW], "does-not-exist"),
    ("index-corpus-as-scores", ["index", "{corpus}", "--out", NEW], "corpus"),
    ("index-not-scores", ["index", "{notcorpus}", "--out", NEW], "notes"),
    ("index-out-is-the-scores", ["index", "{scores}", "--out", "{scores}"], "scores"),
    ("index-out-is-the-corpus", ["index", "{scores}", "--out", "{mcorpus}"], "input"),
    ("index-out-contains-inputs", ["index", "{scores}", "--out", "{root}"], "input"),
    ("index-out-foreign", ["index", "{scores}", "--out", "{foreign}"], "not a curate structure index"),
    ("index-out-is-a-mix", ["index", "{scores}", "--out", "{mix}"], "mix"),
    ("index-kind-unknown", ["index", "{scores}", "--kind", "nope", "--out", NEW], "nope"),
    ("index-corpus-missing", ["index", "{scores}", "--corpus", "{missing}", "--out", NEW], "does-not-exist"),
    ("index-corpus-zero-rows", ["index", "{scores}", "--corpus", "{zero}", "--out", NEW], "0 sequences"),
    ("index-nlist-0", ["index", "{scores}", "--kind", "ivf", "--nlist", "0", "--out", NEW], "nlist"),
    # -- neighbors
    ("neighbors-scores-missing", ["neighbors", "5", "--scores", "{missing}"], "does-not-exist"),
    ("neighbors-corpus-as-scores", ["neighbors", "5", "--scores", "{corpus}"], "corpus"),
    ("neighbors-index-missing", ["neighbors", "5", "--scores", "{scores}", "--index", "{missing}"], "does-not-exist"),
    ("neighbors-corpus-as-index", ["neighbors", "5", "--scores", "{scores}", "--index", "{corpus}"], "index"),
    ("neighbors-row-out-of-range", ["neighbors", "99999999", "--scores", "{scores}", "--index", "{index}"], "99999999"),
    ("neighbors-row-negative", ["neighbors", "-1", "--scores", "{scores}", "--index", "{index}"], "-1"),
    ("neighbors-top-0", ["neighbors", "--query-rows", "0", "--scores", "{scores}", "--index", "{index}"], "query-rows"),
    ("neighbors-top-abc-old-spelling", ["neighbors", "--top", "abc", "--scores", "{scores}", "--index", "{index}"], "abc"),
    ("neighbors-k-0", ["neighbors", "5", "--k", "0", "--scores", "{scores}", "--index", "{index}"], "k"),
    ("neighbors-no-row-no-top", ["neighbors", "--scores", "{scores}", "--index", "{index}"], "query-rows"),
    # -- synth
    ("synth-from-missing", ["synth", "--from", "{missing}", "--rows", "10", "--out", NEW], "does-not-exist"),
    ("synth-from-a-corpus", ["synth", "--scores", "{corpus}", "--rows", "10", "--out", NEW], "corpus"),
    ("synth-rows-0", ["synth", "--scores", "{scores}", "--rows", "0", "--out", NEW], "rows"),
    ("synth-rows-negative", ["synth", "--scores", "{scores}", "--rows", "-3", "--out", NEW], "rows"),
    ("synth-motif-rows-0", ["synth", "--scores", "{scores}", "--rows", "10", "--motif-rows", "0", "--out", NEW], "motif-rows"),
    ("synth-out-is-the-scores", ["synth", "--scores", "{scores}", "--rows", "10", "--out", "{scores}"], "input"),
    ("synth-out-is-the-corpus", ["synth", "--scores", "{scores}", "--rows", "10", "--out", "{mcorpus}"], "input"),
    ("synth-out-contains-inputs", ["synth", "--scores", "{scores}", "--rows", "10", "--out", "{root}"], "input"),
    ("synth-out-foreign", ["synth", "--scores", "{scores}", "--rows", "10", "--out", "{foreign}"], "mine"),
    # -- corpus info / show / ingest / export
    ("info-missing", ["corpus", "info", "{missing}"], "does-not-exist"),
    ("info-not-a-corpus", ["corpus", "info", "{notcorpus}"], "notes"),
    ("info-zero-row-idx", ["corpus", "info", "{zero}"], "0 sequences"),
    ("info-truncated-idx", ["corpus", "info", "{trunc_idx}"], "trunc-idx"),
    ("info-truncated-bin", ["corpus", "info", "{trunc_bin}"], "trunc-bin"),
    ("info-negative-ids-vocab", ["corpus", "info", "{neg}", "--vocab-size", "300", "--exact"], "-1"),
    ("info-out-of-vocab", ["corpus", "info", "{oov}", "--vocab-size", "300", "--exact"], "400"),
    ("info-scores-as-corpus", ["corpus", "info", "{scores}"], "scores"),
    ("info-batch-size-0", ["corpus", "info", "{corpus}", "--batch-size", "0"], "batch"),
    ("show-missing", ["corpus", "show", "{missing}", "--step", "0"], "does-not-exist"),
    ("show-not-a-corpus", ["corpus", "show", "{notcorpus}", "--step", "0"], "notes"),
    ("show-zero-row-idx", ["corpus", "show", "{zero}", "--step", "0"], "0 sequences"),
    ("show-truncated-idx", ["corpus", "show", "{trunc_idx}", "--step", "0"], "trunc-idx"),
    ("show-step-beyond", ["corpus", "show", "{corpus}", "--step", "99999"], "99999"),
    ("show-step-negative", ["corpus", "show", "{corpus}", "--step", "-1"], "-1"),
    ("show-rows-reversed", ["corpus", "show", "{corpus}", "--step", "0", "--rows", "5:2"], "5:2"),
    ("show-rows-garbage", ["corpus", "show", "{corpus}", "--step", "0", "--rows", "abc"], "abc"),
    ("show-tokenizer-missing", ["corpus", "show", "{corpus}", "--step", "0", "--tokenizer", "{missing}/tokenizer.json"], "does-not-exist"),
    ("ingest-missing", ["corpus", "ingest", "{missing}", "--tokenizer", "{tok}", "--seq-len", "15", "--out", NEW], "does-not-exist"),
    ("ingest-tokenizer-missing", ["corpus", "ingest", "{jsonl}", "--tokenizer", "{missing}/tokenizer.json", "--seq-len", "15", "--out", NEW], "does-not-exist"),
    ("ingest-seq-len-0", ["corpus", "ingest", "{jsonl}", "--tokenizer", "{tok}", "--seq-len", "0", "--out", NEW], "seq-len"),
    ("ingest-not-json", ["corpus", "ingest", "{badjsonl}", "--tokenizer", "{tok}", "--seq-len", "15", "--out", NEW], "broken.jsonl"),
    ("ingest-empty", ["corpus", "ingest", "{emptyjsonl}", "--tokenizer", "{tok}", "--seq-len", "15", "--out", NEW], "empty.jsonl"),
    ("ingest-batch-size-0", ["corpus", "ingest", "{jsonl}", "--tokenizer", "{tok}", "--seq-len", "15", "--batch-size", "0", "--out", NEW], "batch"),
    ("ingest-out-foreign", ["corpus", "ingest", "{jsonl}", "--tokenizer", "{tok}", "--seq-len", "15", "--out", "{foreign}"], "not a curate corpus"),
    ("ingest-out-is-scores", ["corpus", "ingest", "{jsonl}", "--tokenizer", "{tok}", "--seq-len", "15", "--out", "{scores}"], "scores"),
    ("ingest-out-is-a-mix", ["corpus", "ingest", "{jsonl}", "--tokenizer", "{tok}", "--seq-len", "15", "--out", "{mix}"], "mix"),
    ("ingest-out-contains-the-input", ["corpus", "ingest", "{jsonl}", "--tokenizer", "{tok}", "--seq-len", "15", "--out", "{docs}"], "input"),
    ("ingest-out-holds-the-tokenizer", ["corpus", "ingest", "{jsonl}", "--tokenizer", "{tok}", "--seq-len", "15", "--out", "{corpus}"], "input"),
    ("ingest-vocab-and-tokenizer", ["corpus", "ingest", "{jsonl}", "--tokenizer", "{tok}", "--vocab", "300", "--seq-len", "15", "--out", NEW], "vocab"),
    ("ingest-vocab-too-small", ["corpus", "ingest", "{jsonl}", "--vocab", "100", "--seq-len", "15", "--out", NEW], "vocab"),
    # -- tokenizer train
    ("tokenizer-missing", ["tokenizer", "train", "{missing}", "--vocab", "300", "--out", NEW], "does-not-exist"),
    ("tokenizer-not-json", ["tokenizer", "train", "{badjsonl}", "--vocab", "300", "--out", NEW], "broken.jsonl"),
    ("tokenizer-empty", ["tokenizer", "train", "{emptyjsonl}", "--vocab", "300", "--out", NEW], "empty.jsonl"),
    ("tokenizer-vocab-too-small", ["tokenizer", "train", "{jsonl}", "--vocab", "100", "--out", NEW], "vocab"),
    ("tokenizer-out-foreign", ["tokenizer", "train", "{jsonl}", "--vocab", "300", "--out", "{foreign}"], "not a curate"),
    ("tokenizer-out-is-scores", ["tokenizer", "train", "{jsonl}", "--vocab", "300", "--out", "{scores}"], "scores"),
    ("tokenizer-out-contains-the-input", ["tokenizer", "train", "{jsonl}", "--vocab", "300", "--out", "{docs}"], "input"),
    ("tokenizer-out-is-a-corpus", ["tokenizer", "train", "{jsonl}", "--vocab", "300", "--out", "{corpus}"], "corpus"),
    ("export-missing", ["corpus", "export", "{missing}", "--to", "npy", "--out", "{out}/rows.npy"], "does-not-exist"),
    ("export-not-a-corpus", ["corpus", "export", "{notcorpus}", "--to", "npy", "--out", "{out}/rows.npy"], "notes"),
    ("export-zero-row-idx", ["corpus", "export", "{zero}", "--to", "npy", "--out", "{out}/rows.npy"], "0 sequences"),
    ("export-truncated-idx", ["corpus", "export", "{trunc_idx}", "--to", "npy", "--out", "{out}/rows.npy"], "trunc-idx"),
    ("export-truncated-bin", ["corpus", "export", "{trunc_bin}", "--to", "npy", "--out", "{out}/rows.npy"], "trunc-bin"),
    ("export-format-unknown", ["corpus", "export", "{corpus}", "--to", "xml", "--out", "{out}/rows.xml"], "xml"),
    ("export-steps-reversed", ["corpus", "export", "{corpus}", "--to", "npy", "--steps", "5:2", "--out", "{out}/rows.npy"], "5:2"),
    ("export-rows-garbage", ["corpus", "export", "{corpus}", "--to", "npy", "--rows", "abc", "--out", "{out}/rows.npy"], "abc"),
    ("export-rows-beyond", ["corpus", "export", "{corpus}", "--to", "npy", "--rows", "0:999999", "--out", "{out}/rows.npy"], "999999"),
    ("export-over-its-own-data", ["corpus", "export", "{corpus}", "--to", "megatron", "--out", "{corpus}/corpus"], "input"),
    ("export-parquet-into-foreign", ["corpus", "export", "{corpus}", "--to", "parquet", "--out", "{foreign}"], "mine"),
    # -- experiment
    ("experiment-missing-corpus", EXPERIMENT + ["--corpus", "{missing}", "--out", NEW], "does-not-exist"),
    ("experiment-zero-row-corpus", EXPERIMENT + ["--corpus", "{zero}", "--out", NEW], "0 sequences"),
    ("experiment-missing-model", EXPERIMENT[:1] + ["--model", "{missing}", "--out", NEW], "does-not-exist"),
    ("experiment-remove-0", EXPERIMENT + ["--corpus", "{corpus}", "--remove", "0%", "--out", NEW], "0%"),
    ("experiment-k-150", EXPERIMENT + ["--corpus", "{corpus}", "--remove", "150%", "--out", NEW], "150%"),
    ("experiment-augment-abc", EXPERIMENT + ["--corpus", "{corpus}", "--augment", "abc", "--out", NEW], "abc"),
    ("experiment-arm-unknown", EXPERIMENT + ["--corpus", "{corpus}", "--arms", "nope", "--out", NEW], "nope"),
    ("experiment-circuit-unknown", EXPERIMENT + ["--corpus", "{corpus}", "--circuit", "nope", "--out", NEW], "nope"),
    ("experiment-window-reversed", EXPERIMENT + ["--corpus", "{corpus}", "--window", "5:2", "--out", NEW], "5:2"),
    ("experiment-heads-garbage", EXPERIMENT + ["--corpus", "{corpus}", "--heads", "abc", "--out", NEW], "abc"),
    ("experiment-out-is-the-corpus", EXPERIMENT + ["--corpus", "{corpus}", "--out", "{corpus}"], "input"),
    ("experiment-out-contains-the-corpus", EXPERIMENT + ["--corpus", "{corpus}", "--out", "{root}"], "input"),
    ("experiment-out-foreign", EXPERIMENT + ["--corpus", "{corpus}", "--out", "{foreign}"], "not a curate experiment"),
    ("experiment-out-is-scores", EXPERIMENT + ["--corpus", "{corpus}", "--out", "{scores}"], "scores"),
    ("experiment-micro-batch-0", EXPERIMENT + ["--corpus", "{corpus}", "--micro-batch", "0", "--out", NEW], "--micro-batch"),
    ("experiment-precision-fp16", EXPERIMENT + ["--corpus", "{corpus}", "--precision", "fp16", "--out", NEW], "fp16"),
    ("experiment-token-aggregate-max", EXPERIMENT + ["--corpus", "{corpus}", "--token-aggregate", "max", "--out", NEW], "--token-aggregate 'max'"),
    ("experiment-checkpoints-transition-0", EXPERIMENT + ["--corpus", "{corpus}", "--checkpoints", "transition:0", "--out", NEW], "transition:N"),
    ("experiment-dry-run-scales", EXPERIMENT + ["--scales", "--dry-run", "--corpus", "{corpus}", "--out", NEW], "--scales"),
    ("experiment-dry-run-untrained-baseline", EXPERIMENT + ["--dry-run", "--corpus", "{corpus}", "--out", NEW], "not trained yet"),
    ("export-order-no-tokenizer", ["corpus", "export", "{mcorpus}", "--to", "megatron-order", "--out", NEW], "--tokenizer"),
    ("scales-out-foreign", EXPERIMENT + ["--scales", "--corpus", "{corpus}", "--out", "{foreign}"], "not a curate experiment"),
    ("scales-out-is-the-corpus", EXPERIMENT + ["--scales", "--corpus", "{corpus}", "--out", "{corpus}"], "input"),
    ("scales-out-contains-the-corpus", EXPERIMENT + ["--scales", "--corpus", "{corpus}", "--out", "{root}"], "input"),
    ("scales-out-is-scores", EXPERIMENT + ["--scales", "--corpus", "{corpus}", "--out", "{scores}"], "scores"),
    ("scales-out-is-a-single-experiment", EXPERIMENT + ["--scales", "--corpus", "{corpus}", "--out", "{single_exp}"], "single experiment"),
    ("scales-sizes-garbage", EXPERIMENT + ["--scales", "--corpus", "{corpus}", "--sizes", "abc", "--out", NEW], "abc"),
    ("evaluate-split-unknown", EVALUATE + ["--split", "holdout", "--out", NEW], "holdout"),
    ("evaluate-drop-0", EVALUATE + ["--drop", "0%", "--out", NEW], "0%"),
    ("evaluate-token-aggregate-max", EVALUATE + ["--token-aggregate", "max", "--out", NEW], "--token-aggregate 'max'"),
    ("evaluate-aggregate-mean", EVALUATE + ["--aggregate", "mean", "--out", NEW], "expected one of sum, segment, lr-sum"),
    ("evaluate-methods-unknown", EVALUATE + ["--methods", "nope", "--out", NEW], "nope"),
    ("evaluate-scores-garbage", EVALUATE + ["--scores", "abc", "--out", NEW], "abc"),
    ("evaluate-missing-model", ["evaluate", "--model", "{missing}", "--out", NEW], "does-not-exist"),
    ("evaluate-out-foreign", EVALUATE + ["--out", "{foreign}"], "not a curate evaluation"),
    ("evaluate-out-contains-the-corpus", EVALUATE + ["--out", "{root}"], "not a curate evaluation"),
    ("build-default-workspace-is-a-file", ["corpus", "build-default", "--workspace", "{tok}"], "tokenizer.json"),
    ("build-default-over-a-foreign-folder", ["corpus", "build-default", "--workspace", "{foreign_ws}", "--force"], "not a curate corpus"),
    # -- an output path under a file: one error line naming it, for every writing command
    ("score-out-under-a-file", SCORE + ["--corpus", "{corpus}", "--out", "{tok}/x"], "tokenizer.json"),
    ("train-out-under-a-file", TRAIN + ["--corpus", "{corpus}", "--out", "{tok}/x"], "tokenizer.json"),
    ("build-mix-out-under-a-file", MIX + ["--remove", "10%", "--out", "{tok}/x"], "tokenizer.json"),
    ("synth-out-under-a-file", ["synth", "--scores", "{scores}", "--rows", "10", "--out", "{tok}/x"], "tokenizer.json"),
    ("index-out-under-a-file", ["index", "{scores}", "--out", "{tok}/x"], "tokenizer.json"),
    ("ingest-out-under-a-file", ["corpus", "ingest", "{jsonl}", "--tokenizer", "{tok}", "--seq-len", "15", "--out", "{tok}/x"], "tokenizer.json"),
    ("tokenizer-out-under-a-file", ["tokenizer", "train", "{jsonl}", "--vocab", "300", "--out", "{tok}/x"], "tokenizer.json"),
    ("export-parquet-out-under-a-file", ["corpus", "export", "{corpus}", "--to", "parquet", "--out", "{tok}/x.parquet"], "tokenizer.json"),
    ("export-npy-out-under-a-file", ["corpus", "export", "{corpus}", "--to", "npy", "--out", "{tok}/x.npy"], "tokenizer.json"),
    ("export-megatron-out-under-a-file", ["corpus", "export", "{corpus}", "--to", "megatron", "--out", "{tok}/x"], "tokenizer.json"),
    ("experiment-out-under-a-file", EXPERIMENT + ["--corpus", "{corpus}", "--out", "{tok}/x"], "tokenizer.json"),
    ("build-default-workspace-under-a-file", ["corpus", "build-default", "--workspace", "{tok}/ws"], "tokenizer.json"),
    # -- replay
    ("replay-missing", ["replay", "{missing}"], "does-not-exist"),
    ("replay-no-command-json", ["replay", "{notcorpus}"], "command.json"),
    ("replay-corpus", ["replay", "{corpus}"], "command.json"),
    ("replay-corrupt-command-json", ["replay", "{badcmd}"], "command.json"),
    ("replay-unknown-command", ["replay", "{unknowncmd}"], "frobnicate"),
]


def _import_every_module() -> None:
    """Import every pipeline and command module, so none binds a stub by name (`from ... import prepare_baseline`)."""
    import curate.commands
    import curate.pipelines

    for package in (curate.pipelines, curate.commands):
        for module in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{package.__name__}.{module.name}")


def _stub(*_a, **_k):
    raise AssertionError("the command got past validation and started its work")


def _snapshot(args: list[str], watched: list[Path]) -> dict:
    """sha256 of every existing path named in the arguments (files, or every file of a folder) and the listing of
    each watched folder and of the parent of every path argument (where temporaries would appear)."""
    state: dict = {}
    for a in args:
        p = Path(a)
        if not os.path.isabs(a):
            continue
        if p.is_dir():
            state[f"digest:{p}"] = digest(p)
        elif p.is_file():
            state[f"digest:{p}"] = hashlib.sha256(p.read_bytes()).hexdigest()
        if p.parent.is_dir():
            state[f"list:{p.parent}"] = sorted(os.listdir(p.parent))
    for w in watched:
        state[f"tree:{w}"] = sorted(str(x.relative_to(w)) for x in w.rglob("*")) if w.exists() else None
    return state


@pytest.mark.parametrize(("args", "phrase"), [(c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(args, phrase, paths, tmp_path, monkeypatch, capsys) -> None:
    out_parent = tmp_path / "out"
    out_parent.mkdir()
    cwd, ws = tmp_path / "cwd", tmp_path / "ws"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("CURATE_WORKSPACE", str(ws))
    import curate.pipelines.baseline_run as baseline_run
    import curate.pipelines.ray_pool as ray_pool

    _import_every_module()  # a module imported while the stubs are in place would keep them after the test
    monkeypatch.setattr(ray_pool, "ray_session", _stub)
    monkeypatch.setattr(baseline_run, "prepare_baseline", _stub)
    values = {k: str(v) for k, v in paths.items()} | {"out": str(out_parent)}
    argv = [a.format(**values) for a in args]
    watched = [out_parent, cwd, ws]
    before = _snapshot(argv, watched)
    code, stdout, stderr = run_cli(argv, monkeypatch, capsys)
    assert "Traceback" not in stdout + stderr, stderr[-3000:]
    errors = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert code == 2 and len(errors) == 1, f"exit {code}\nstdout: {stdout[-1500:]}\nstderr: {stderr[-1500:]}"
    assert phrase.lower() in errors[0].lower(), errors[0]
    assert _snapshot(argv, watched) == before  # inputs untouched, nothing new where outputs go


def test_the_matrix_covers_every_command() -> None:
    from curate.cli import app
    import typer

    commands = set()
    group = typer.main.get_command(app)
    for name, cmd in group.commands.items():  # type: ignore[attr-defined]
        subs = getattr(cmd, "commands", None)
        commands |= {f"{name} {s}" for s in subs} if subs else {name}
    covered = set()
    for _, args, _ in CASES:
        covered.add(f"{args[0]} {args[1]}" if args[0] in ("corpus", "tokenizer") else args[0])
    assert commands <= covered, sorted(commands - covered)
    assert len(CASES) >= 100
