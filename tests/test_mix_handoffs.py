"""The hand-offs of `curate build-mix`, run as a user types them (subprocesses from a folder of their own): the mix
verifies, the printed train command runs as printed and trains as long as the experiment's arms, and held-out rows
never enter an index pool, a neighbour or synthetic source, or a mix."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from curate.augment.index import build_index
from curate.errors import CurateError
from curate.pipelines.arm_plan import default_arm_steps
from mix_helpers import BATCH, make_setup, write_scores

BIN = Path(sys.executable).parent  # where the `curate` entry point of this environment lives
HELDOUT_START = 900  # of the setup corpus's 1,130 rows; its scored window is rows [32, 800)


def curate(args: list, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """`curate ARGS` as a subprocess in `cwd`, the environment's own `curate` first on PATH."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(["curate", *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def printed(out: str, prefix: str) -> str:
    return next(line for line in out.splitlines() if line.startswith(prefix))[len(prefix):]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return make_setup(tmp_path_factory.mktemp("handoffs"))


def copy_setup(setup, root: Path) -> Path:
    """A copy of the setup's corpus and of its scores folder, which names the copy; returns the scores folder."""
    shutil.copytree(setup.corpus, root / "corpus")
    scores = root / "scores"
    shutil.copytree(setup.scores, scores)
    summary = json.loads((scores / "summary.json").read_text())
    (scores / "summary.json").write_text(json.dumps({**summary, "corpus": str(root / "corpus")}))
    return scores


def hold_out(corpus: Path, heldout_start: int) -> None:
    """Hold out a corpus folder's rows from `heldout_start` on (corpus.json's `heldout_start`, as ingest writes it)."""
    meta = json.loads((corpus / "corpus.json").read_text())
    (corpus / "corpus.json").write_text(json.dumps({**meta, "heldout_start": heldout_start}))


def with_heldout(setup, root: Path, heldout_start: int) -> Path:
    """A copy of the setup whose corpus holds out its rows from `heldout_start` on; returns the scores folder."""
    scores = copy_setup(setup, root)
    hold_out(root / "corpus", heldout_start)
    return scores


# -- a mix verifies ---------------------------------------------------------------------------------

def test_a_mix_built_from_the_command_line_verifies_and_its_command_json_is_checked(setup, tmp_path) -> None:
    r = curate(["build-mix", setup.scores, "--remove", "10%", "--augment", "2%", "--out", "M"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert printed(r.stdout, "check it: ") == "curate verify M"
    check = curate(shlex.split(printed(r.stdout, "check it: "))[1:], tmp_path)
    assert check.returncode == 0 and check.stdout.startswith("ok: "), check.stderr
    manifest = json.loads((tmp_path / "M" / "manifest.json").read_text())
    assert "command.json" in manifest["outputs"]  # the manifest covers the command's own record
    saved = json.loads((tmp_path / "M" / "command.json").read_text())
    (tmp_path / "M" / "command.json").write_text(json.dumps({**saved, "command": "build-mix "}))
    check = curate(["verify", "M", "--outputs-only"], tmp_path)
    lines = check.stderr.strip().splitlines()
    assert check.returncode == 2 and len(lines) == 1 and "command.json" in lines[0] and lines[0].startswith("error: ")


# -- the printed train command ------------------------------------------------------------------------

def test_the_arm_length_rule_gives_the_defaults_3400() -> None:
    assert default_arm_steps(0, 1700, 100, 4000) == 3400  # the default: past the step (1,700) where the head forms
    assert default_arm_steps(0, 1700, 100, 3000) == 3000  # at most the scored run's length
    assert default_arm_steps(2, 20, 10, None) == 40  # the window's length rounded up to whole evaluations


@pytest.mark.slow
def test_the_printed_train_command_runs_as_printed_to_the_experiments_arm_length(setup, tmp_path) -> None:
    run = tmp_path / "run"
    r = curate(["train", "--corpus", setup.corpus, "--layers", 1, "--hidden", 16, "--attention-heads", 2, "--context", 128,
                "--steps", 45, "--eval-every", 10, "--checkpoints", 20, "--seed", 3, "--out", run, "--quiet"], tmp_path)
    assert r.returncode == 0, r.stderr
    # scores of that run's window, steps 2-20, recording the checkpoint they were computed at
    a, b = 2 * BATCH, 20 * BATCH
    scores = write_scores(tmp_path / "scores", setup.corpus, np.random.default_rng(0).uniform(size=b - a), np.arange(a, b),
                          batch_size=BATCH)
    summary = json.loads((scores / "summary.json").read_text())
    (scores / "summary.json").write_text(json.dumps({**summary, "checkpoint": str(run / "checkpoints" / "step20")}))

    r = curate(["build-mix", "scores", "--remove", "10%", "--out", "mixes/remove-top"], tmp_path)
    assert r.returncode == 0, r.stderr
    command = shlex.split(printed(r.stdout, "train on it: "))
    steps = default_arm_steps(2, 20, 10, 45)
    assert steps == 40 and command[:2] == ["curate", "train"]
    options = dict(zip(command[2::2], command[3::2]))
    assert options == {**options, "--plan": "mixes/remove-top/plan.json", "--steps": str(steps), "--eval-every": "10",
                       "--seed": "3", "--batch-size": str(BATCH), "--layers": "1", "--hidden": "16", "--attention-heads": "2",
                       "--context": "128"}
    r = subprocess.run(command + ["--quiet"], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"})
    assert r.returncode == 0, r.stderr
    arm = tmp_path / options["--out"]
    done = json.loads((arm / "summary.json").read_text())
    assert done["complete"] and done["steps"] == steps
    spec = json.loads((arm / "run.json").read_text())["spec"]
    assert spec["seed"] == 3 and spec["eval_every"] == 10 and spec["plan"]


# -- held-out rows ------------------------------------------------------------------------------------

def test_held_out_rows_never_enter_an_index_pool_or_a_neighbour_mix(setup, tmp_path) -> None:
    scores = with_heldout(setup, tmp_path / "h", HELDOUT_START)
    r = curate(["index", scores], tmp_path)
    assert r.returncode == 0, r.stderr
    info = json.loads((scores / "index" / "index.json").read_text())
    assert (info["row_start"], info["num_rows"]) == (0, HELDOUT_START)

    for name, pool in (("from-index", []), ("from-corpus", ["--pool", tmp_path / "h" / "corpus"])):
        r = curate(["build-mix", scores, "--augment", "5%", "--source", "neighbors", "--motif-rows", 20, *pool, "--out", name],
                   tmp_path)
        assert r.returncode == 0, r.stderr
        prov = pq.read_table(tmp_path / name / "provenance.parquet").to_pydict()
        added = [row for row, why in zip(prov["source_row_id"], prov["reason"]) if why == "neighbor"]
        counts = json.loads((tmp_path / name / "manifest.json").read_text())["counts"]
        assert len(added) == counts["added"] == 39 and max(added) < HELDOUT_START, sorted(added)[-5:]  # 5% of 768

    with pytest.raises(CurateError, match="reaches the held-out rows"):
        build_index(tmp_path / "h" / "corpus", tmp_path / "idx", rows=(800, 1000))


def test_an_index_that_holds_held_out_rows_is_refused(setup, tmp_path) -> None:
    scores = copy_setup(setup, tmp_path / "h")
    old = tmp_path / "old-index"
    build_index(tmp_path / "h" / "corpus", old)  # every row: the corpus had no held-out rows then
    hold_out(tmp_path / "h" / "corpus", HELDOUT_START)
    r = curate(["build-mix", scores, "--augment", "5%", "--source", "neighbors", "--pool", old, "--out", "m"], tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "held-out rows" in lines[0] and "curate index" in lines[0], r.stderr
    assert not (tmp_path / "m").exists()


def test_a_window_or_motif_rows_in_the_held_out_rows_are_refused(setup, tmp_path) -> None:
    scores = with_heldout(setup, tmp_path / "h", 700)  # inside the scored window [32, 800)
    for args in (["build-mix", scores, "--remove", "10%", "--out", "m"],
                 ["synth", "--scores", scores, "--rows", 8, "--motif-rows", 768, "--out", "m"]):
        r = curate(args, tmp_path)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and "held-out row" in lines[0], r.stderr
        assert not (tmp_path / "m").exists()
