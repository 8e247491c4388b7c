"""Helpers of the journey tests (tests/test_journeys.py, tests/test_journeys_quick_start.py): a user running
`curate` command lines from a folder, the small generated text folder, and readers of what the commands wrote."""
from __future__ import annotations

import json
import os
import random
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

CURATE = Path(sys.executable).parent / "curate"  # the console script installed beside this interpreter
CIRCUIT = "previous-token"  # the circuit that forms at this size (module docstring)
SHAPE = "--layers 2 --hidden 32 --heads 4 --context 32"
SMALL_TRAIN = "--lr 3e-3 --warmup-steps 20 --eval-every 25 --checkpoints every:25"
DOCS = 1800
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


def printed(stdout: str, command: str) -> str:
    """The one next command `stdout` hands on that runs `curate COMMAND` (whatever its label)."""
    lines = [m.group(1) for m in map(PRINTED.match, (ln.strip() for ln in stdout.splitlines()))
             if m and m.group(1).split()[1] == command]
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


def own_text_corpus(user: "User") -> None:
    """README "Your own text", its first two commands on the generated folder: my_tok, my_corpus."""
    write_text_folder(user.cwd / "my_text", docs=DOCS, seed=0)
    out = user("curate tokenizer train my_text --vocab 300 --out my_tok")
    assert "300 tokens" in out and (user.cwd / "my_tok" / "tokenizer.json").is_file()
    out = user(f"curate corpus ingest my_text --tokenizer my_tok --seq-len 32 --batch-size 16 --heldout-rows {HELDOUT} --out my_corpus")
    assert f"from {DOCS:,} documents" in out and f"the last {HELDOUT} rows held out" in out
