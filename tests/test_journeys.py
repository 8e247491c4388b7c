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
quick start's workspace holds that corpus as its default corpus and a reference run trained on it.
"""
from __future__ import annotations

import json
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.corpus_helpers import digest

CURATE = Path(sys.executable).parent / "curate"  # the console script installed beside this interpreter
CIRCUIT = "previous-token"  # the circuit that forms at this size (module docstring)
SHAPE = "--layers 2 --hidden 32 --heads 4 --context 32"
SMALL_TRAIN = "--lr 3e-3 --warmup-steps 20 --eval-every 25 --checkpoints every:25"
HELDOUT = 512  # a sixth of the rows: a neighbour or added row taken from them would show
PRINTED = re.compile(r"^[a-z][a-z ]*: (curate \S.*)$")
"""A line that hands the user the next command ("train on it: curate train ...")."""


def write_text_folder(folder: Path, docs: int, seed: int) -> Path:
    """`folder/copy/*.txt` (a span of random words, then the span again) and `folder/prose/*.txt` (random words)."""
    rng = random.Random(seed)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 5))) for _ in range(400)]
    for i in range(docs):
        kind = "prose" if i % 4 == 0 else "copy"
        span = [rng.choice(words) for _ in range(rng.randint(6, 10))]
        rest = [rng.choice(words) for _ in span] if kind == "prose" else span
        path = folder / kind / f"doc{i:04d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(" ".join(span + rest) + "\n")
    return folder


class User:
    """Runs `curate` command lines from one folder, as typed (plus `extra` small-setting flags)."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        cwd.mkdir(parents=True, exist_ok=True)
        self.env = {k: v for k, v in os.environ.items() if k != "CURATE_WORKSPACE"}
        self.env.update({"COLUMNS": "200", "PYTHONUNBUFFERED": "1"})

    def run(self, line: str, expect: int = 0) -> subprocess.CompletedProcess:
        args = shlex.split(line)
        assert args[0] == "curate", line
        proc = subprocess.run([str(CURATE), *args[1:]], cwd=self.cwd, env=self.env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == expect, f"{line}\n(in {self.cwd}) exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        if expect == 0:
            assert "Traceback" not in proc.stderr, proc.stderr
        return proc

    def __call__(self, line: str) -> str:
        return self.run(line).stdout

    def follow(self, stdout: str) -> dict[str, str]:
        """Execute every command `stdout` hands on, as printed; returns {command line: its stdout}."""
        done = {}
        for line in stdout.splitlines():
            m = PRINTED.match(line.strip())
            if m:
                done[m.group(1)] = self(m.group(1))
        return done


def printed(stdout: str, label: str) -> str:
    """The command printed after `label: `."""
    lines = [ln.strip()[len(label) + 2:] for ln in stdout.splitlines() if ln.strip().startswith(f"{label}: curate ")]
    assert len(lines) == 1, stdout
    return lines[0]


def option(line: str, name: str) -> str:
    args = shlex.split(line)
    return args[args.index(name) + 1]


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def final_step(run: Path) -> int:
    return int(summary(run)["steps"])


def heldout_start(corpus: Path) -> int:
    return int(json.loads((corpus / "corpus.json").read_text())["heldout_start"])


def base_rows(mix: Path) -> list[int]:
    """The mix's rows taken from the scored corpus (its first source; synthetic rows come from their own corpus)."""
    table = pq.read_table(mix / "provenance.parquet")
    source = table.column("source_corpus").combine_chunks()
    base = source.dictionary[0].as_py()
    return [r for s, r in zip(source.to_pylist(), table.column("source_row_id").to_pylist()) if s == base]


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


# --------------------------------------------------------------------------- your own text (README)


@pytest.fixture(scope="module")
def own_text(tmp_path_factory) -> dict:
    """README "Your own text", its first three commands: tokenizer -> corpus -> a trained run (two epochs)."""
    base = tmp_path_factory.mktemp("journeys")
    user = User(base / "user")
    write_text_folder(user.cwd / "my_text", docs=1800, seed=0)
    out = user("curate tokenizer train my_text --vocab 300 --out my_tok")
    assert "300 tokens" in out and (user.cwd / "my_tok" / "tokenizer.json").is_file()
    out = user(f"curate corpus ingest my_text --tokenizer my_tok --seq-len 32 --batch-size 16 --heldout-rows {HELDOUT} --out my_corpus")
    assert "from 1,800 documents" in out and f"the last {HELDOUT} rows held out" in out
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
    train_line = printed(out, "train on it")
    assert printed(out, "check it") == "curate verify my_mix"
    ran = user.follow(out)
    assert set(ran) == {train_line, "curate verify my_mix"}
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
    write_text_folder(user.cwd / "other_text", docs=1800, seed=1)
    user(f"curate corpus ingest other_text --tokenizer my_tok --seq-len 32 --batch-size 16 --heldout-rows {HELDOUT} --out other_corpus")
    proc = user.run("curate explain my_scores --by domain --corpus other_corpus", expect=2)
    assert "other_corpus" in one_error_line(proc)


# --------------------------------------------------------------------------- quick start (README)


@pytest.fixture(scope="module")
def quick_start(own_text) -> dict:
    """A user folder whose ./curate-workspace holds the small corpus as its default corpus and a reference run
    trained on it (one pass, as the default's reference run)."""
    src: User = own_text["user"]
    user = User(own_text["base"] / "quick")
    ws = user.cwd / "curate-workspace" / "default"
    shutil.copytree(src.cwd / "my_corpus", ws / "corpus")
    user(f"curate train --corpus curate-workspace/default/corpus {SHAPE} --steps 150 {SMALL_TRAIN} "
         "--out curate-workspace/default/runs/reference --quiet")
    return {"user": user}


def test_quick_start_mixes_verify_and_their_printed_arms_train(quick_start) -> None:
    user: User = quick_start["user"]
    cwd = user.cwd
    scores = f"curate-workspace/default/scores/{CIRCUIT}"
    reference = cwd / "curate-workspace" / "default" / "runs" / "reference"
    corpus = cwd / "curate-workspace" / "default" / "corpus"
    held = heldout_start(corpus)

    user(f"curate score --circuit {CIRCUIT} --fit-rows 256 --quiet")  # scores in curate-workspace/default/scores/<circuit>
    s = json.loads((cwd / scores / "summary.json").read_text())
    n = s["window"][1]
    assert s["circuit"] == CIRCUIT and n >= summary(reference)["emergence"]["previous_token"]["emergence_step"]
    out = user(f"curate explain {scores} --top 10%")
    assert "top tail" in out
    user(f"curate index {scores}")
    assert (cwd / scores / "index").is_dir()
    out = user(f"curate neighbors --top 5 --circuit {CIRCUIT}")
    listed = json.loads(user(f"curate neighbors --top 5 --circuit {CIRCUIT} --json"))
    neighbour_ids = [int(m) for m in re.findall(r'"row_id": (\d+)', json.dumps(listed))]
    assert neighbour_ids and max(neighbour_ids) < held, "a held-out row offered as a neighbour"

    mixes = {
        "remove-top": f"curate build-mix {scores} --remove 10% --out mixes/remove-top",
        "remove-random": f"curate build-mix {scores} --remove 10% --control random --out mixes/remove-random",
        "augment-top": f"curate build-mix {scores} --augment 5% --out mixes/augment-top",
        "augment-neighbors": f"curate build-mix {scores} --augment 5% --source neighbors --out mixes/augment-neighbors",
        "augment-synthetic": f"curate build-mix {scores} --augment 5% --source synthetic --top 100 --out mixes/augment-synthetic",
    }
    for name, line in mixes.items():
        out = user(line)
        train_line = printed(out, "train on it")
        assert printed(out, "check it") == f"curate verify mixes/{name}", out
        ran = user.follow(out)  # `curate verify` then the arm's `curate train`, as printed
        assert set(ran) == {train_line, f"curate verify mixes/{name}"}
        arm = cwd / option(train_line, "--out")
        assert summary(arm)["complete"], name
        # the arm trains past the scored checkpoint (where the head had formed), so the mix's effect can show
        assert final_step(arm) >= n, (name, train_line, final_step(arm), n)
        assert max(base_rows(cwd / "mixes" / name)) < held, f"{name}: a held-out row in the mix"
    remove = cwd / "mixes" / "remove-top-run"
    report = json.loads(user(f"curate circuits {remove.relative_to(cwd)} --json"))  # circuits on the arm's result
    assert len(report["heads"]) == 8


# --------------------------------------------------------------------------- replay from another folder


REPLAYED = {  # folder (under the user folder) -> files whose bytes a replay must reproduce
    "my_tok": ["tokenizer.json"],
    "my_corpus": ["corpus.bin", "corpus.idx", "rows.parquet"],
    "my_run": ["stream.parquet", "curves.json"],
    "my_scores": ["shards"],
    "my_mix": ["mix.bin", "mix.idx", "plan.json", "provenance.parquet"],
}


def test_every_folder_kind_replays_from_another_folder(own_text, quick_start) -> None:
    """`curate replay ../user/FOLDER` from a sibling folder: each saved command runs again on the same inputs
    (its stored paths resolved against the folder, not the caller's) and reproduces the same bytes."""
    user: User = own_text["user"]
    for line in ("curate score --model my_run --out my_scores --circuit previous-token --fit-rows 256 --quiet",
                 "curate build-mix my_scores --remove 10% --out my_mix"):
        name = option(line, "--out")
        if not (user.cwd / name / "command.json").is_file():
            user(line)
    quick: User = quick_start["user"]
    index = quick.cwd / "curate-workspace" / "default" / "scores" / CIRCUIT / "index"
    if not index.is_dir():
        if not index.parent.is_dir():
            quick(f"curate score --circuit {CIRCUIT} --fit-rows 256 --quiet")
        quick(f"curate index curate-workspace/default/scores/{CIRCUIT}")
    elsewhere = User(own_text["base"] / "elsewhere")
    folders = {name: user.cwd / name for name in REPLAYED}
    folders["index"] = index
    for name, folder in folders.items():
        files = REPLAYED.get(name, ["index.faiss"])
        before = {f: digest(folder / f) if (folder / f).is_dir() else (folder / f).read_bytes() for f in files}
        rel = os.path.relpath(folder, elsewhere.cwd)
        elsewhere(f"curate replay {shlex.quote(rel)}")
        after = {f: digest(folder / f) if (folder / f).is_dir() else (folder / f).read_bytes() for f in files}
        assert after == before, f"replay of {name} changed its outputs"
    assert not any(elsewhere.cwd.iterdir()), "a replay wrote into the caller's folder"
