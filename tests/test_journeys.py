"""The user's journeys through the commands (README "Quick start on the embedded default" and "Your own text"),
run as a user runs them: `curate ...` subprocesses (the installed console script) from a folder that is neither
the repository nor the one holding the inputs, each command's outputs handed to the next as the README writes
it, and every command a command prints for the next step ("train on it: curate train ...", "check it: curate
verify ...") executed as printed, not only checked for text. Then every folder kind is replayed from another
folder (`curate replay ../user/FOLDER`).

Small settings: a generated text folder of two kinds ("copy": a span of random words and the same span again,
"prose": random words; one file a document), a byte-level BPE of 300, rows of 33 tokens, a 2-layer hidden-32
model. At that size an induction head does not form in seconds (tests/test_experiment.py says the same), the
previous-token head forms within 100 steps: the journeys score `--circuit previous-token` where the README
writes `--circuit induction` (the workspace's scores folder is named by the circuit, so its paths follow), and
add the size flags (`--seq-len 32`, `--batch-size 16`, `--lr` ...) the README leaves at their defaults. The
quick start is in tests/test_journeys_quick_start.py (a file of its own, so the two xdist processes share the work).
"""
from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.corpus_helpers import digest
from tests.journey_helpers import (
    CIRCUIT, DOCS, HELDOUT, SHAPE, SMALL_TRAIN, User, final_step, heldout_start, one_error_line, option, own_text_corpus,
    printed, summary, write_text_folder,
)


# --------------------------------------------------------------------------- your own text (README)


@pytest.fixture(scope="module")
def own_text(tmp_path_factory) -> dict:
    """README "Your own text", its first three commands: tokenizer -> corpus -> a trained run (two epochs)."""
    base = tmp_path_factory.mktemp("journeys")
    user = User(base / "user")
    own_text_corpus(user)
    user(f"curate train --corpus my_corpus {SHAPE} --epochs 2 {SMALL_TRAIN} --out my_run --quiet")
    run = summary(user.cwd / "my_run")
    assert run["complete"] and run["emergence"]["previous_token"]["emergence_step"] is not None, run["emergence"]
    return {"base": base, "user": user}


def test_your_own_text_to_a_retrained_arm(own_text) -> None:
    user: User = own_text["user"]
    cwd = user.cwd
    formed = summary(cwd / "my_run")["emergence"]["previous_token"]["emergence_step"]
    checkpoints = sorted(int(p.name[4:]) for p in (cwd / "my_run" / "checkpoints").glob("step*"))
    n = next(s for s in checkpoints if s >= formed)
    out = user(f"curate circuits my_run --revision step{n}")
    assert sum(ln.startswith("│") for ln in out.splitlines()) == 8  # the 2 x 4 heads of the --layers/--heads shape
    assert re.search(r"^previous-token \(threshold 0\.3\): \d\.\d", out, re.M), out  # the head that formed

    out = user(f"curate score --model my_run --out my_scores --circuit {CIRCUIT} --fit-rows 256 --quiet")
    scores = json.loads((cwd / "my_scores" / "summary.json").read_text())
    assert scores["window"][1] == n and Path(scores["checkpoint"]).name == f"step{n}"  # the first checkpoint after it formed
    out = user("curate explain my_scores --by domain")
    assert "copy" in out and "prose" in out and "top tail" in out and "bottom tail" in out

    out = user("curate build-mix my_scores --remove 10% --out my_mix")
    train_line = printed(out, "train")
    assert printed(out, "verify") == "curate verify my_mix"
    ran = user.follow(out)
    assert {train_line, "curate verify my_mix"} <= set(ran)
    arm = cwd / option(train_line, "--out")
    assert summary(arm)["complete"]
    # the arm trains past the step where the scored head formed, so the mix's effect on it can show
    assert final_step(arm) >= n, (train_line, final_step(arm), n)
    arm_rows = set(pq.read_table(arm / "stream.parquet").column("row_id").to_pylist())
    dropped = set(json.loads((cwd / "my_mix" / "plan.json").read_text())["drop"])
    assert arm_rows and arm_rows.isdisjoint(dropped) and max(arm_rows) < heldout_start(cwd / "my_corpus")
    report = json.loads(user(f"curate circuits {shlex.quote(str(arm.relative_to(cwd)))} --json"))
    assert [h["head"] for h in report["heads"]] == ["0.0", "0.1", "0.2", "0.3", "1.0", "1.1", "1.2", "1.3"]


def test_scores_refuse_another_corpus(own_text) -> None:
    """A scores folder is bound to its corpus's content: `explain --corpus OTHER` with another corpus of the same
    shape is one error line, not a report on the wrong rows."""
    user: User = own_text["user"]
    if not (user.cwd / "my_scores" / "summary.json").is_file():
        user(f"curate score --model my_run --out my_scores --circuit {CIRCUIT} --fit-rows 256 --quiet")
    write_text_folder(user.cwd / "other_text", docs=DOCS, seed=1)
    user(f"curate corpus ingest other_text --tokenizer my_tok --seq-len 32 --batch-size 16 --heldout-rows {HELDOUT} --out other_corpus")
    proc = user.run("curate explain my_scores --by domain --corpus other_corpus", expect=2)
    assert "other_corpus" in one_error_line(proc)


# --------------------------------------------------------------------------- replay from another folder


REPLAYED = {  # folder (under the user folder) -> files whose bytes a replay must reproduce
    "my_tok": ["tokenizer.json"],
    "my_corpus": ["corpus.bin", "corpus.idx", "rows.parquet"],
    "my_run": ["stream.parquet", "curves.json"],
    "my_scores": ["shards"],
    "my_mix": ["mix.bin", "mix.idx", "plan.json", "provenance.parquet"],
}


def test_every_folder_kind_replays_from_another_folder(own_text) -> None:
    """`curate replay ../user/FOLDER` from a sibling folder: each saved command runs again on the same inputs
    (its stored paths resolved against the folder, not the caller's) and reproduces the same bytes."""
    user: User = own_text["user"]
    for line in (f"curate score --model my_run --out my_scores --circuit {CIRCUIT} --fit-rows 256 --quiet",
                 "curate build-mix my_scores --remove 10% --out my_mix"):
        name = option(line, "--out")
        if not (user.cwd / name / "command.json").is_file():
            user(line)
    if not (user.cwd / "my_scores" / "index" / "command.json").is_file():
        user("curate index my_scores")
    elsewhere = User(own_text["base"] / "elsewhere")
    folders = {name: user.cwd / name for name in REPLAYED}
    folders["index"] = user.cwd / "my_scores" / "index"
    for name, folder in folders.items():
        files = REPLAYED.get(name, ["index.faiss"])
        before = {f: digest(folder / f) if (folder / f).is_dir() else (folder / f).read_bytes() for f in files}
        rel = os.path.relpath(folder, elsewhere.cwd)
        elsewhere(f"curate replay {shlex.quote(rel)}")
        after = {f: digest(folder / f) if (folder / f).is_dir() else (folder / f).read_bytes() for f in files}
        assert after == before, f"replay of {name} changed its outputs"
    assert not any(elsewhere.cwd.iterdir()), "a replay wrote into the caller's folder"
