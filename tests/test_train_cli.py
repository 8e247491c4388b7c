"""`curate train`: architecture flags, presets, micro-batches and precision, validated before anything is written; the
heartbeat off a terminal."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from curate.progress import HEARTBEAT_ENV
from curate.training.curves import best_head
from tests.corpus_helpers import run_cli
from tests.test_training import copy_rows, write_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("train-cli") / "c", copy_rows(200, 0), 160)


def train_args(corpus: Path, out: Path, *extra) -> list:
    return ["train", "--corpus", corpus, "--out", out, "--steps", "2", "--eval-every", "2", "--checkpoints", "none",
            "--quiet", "--json", *extra]


def test_architecture_flags_shape_the_fresh_model(corpus, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    code, stdout, stderr = run_cli(train_args(corpus, out, "--layers", "1", "--hidden", "32", "--attention-heads", "2",
                                              "--context", "32", "--micro-batch", "3"), monkeypatch, capsys)
    assert code == 0, stderr
    assert json.loads(stdout)["complete"] is True
    run = json.loads((out / "run.json").read_text())
    config = run["model_config"]
    assert (config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"],
            config["max_position_embeddings"], config["intermediate_size"]) == (1, 32, 2, 32, 128)
    assert run["spec"]["micro_batch"] == 3
    assert run["spec"]["architecture"]["hidden_size"] == 32


def test_rows_longer_than_the_context_are_refused_before_writing(corpus, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    code, _, stderr = run_cli(train_args(corpus, out, "--context", "16"), monkeypatch, capsys)
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "exceed the model's context (16 + 1)" in lines[0]
    assert not out.exists()


@pytest.mark.parametrize("extra,needle", [
    (["--preset", "pythia-14m", "--layers", "2"], "--preset fixes the architecture"),
    (["--preset", "gpt-9"], "--preset"),
    (["--hidden", "30", "--attention-heads", "4"], "not a multiple"),
    (["--micro-batch", "0"], "--micro-batch must be at least 1"),
    (["--precision", "fp8"], "--precision 'fp8'"),
])
def test_bad_shape_options_are_one_line(corpus, tmp_path, monkeypatch, capsys, extra, needle):
    out = tmp_path / "run"
    code, _, stderr = run_cli(train_args(corpus, out, *extra), monkeypatch, capsys)
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and needle in lines[0], stderr
    assert not out.exists()


def test_a_preset_brings_its_architecture_and_training_settings(corpus, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    code, _, stderr = run_cli(train_args(corpus, out, "--preset", "pythia-14m", "--batch-size", "2", "--steps", "1"),
                              monkeypatch, capsys)
    assert code == 0, stderr
    run = json.loads((out / "run.json").read_text())
    config, spec = run["model_config"], run["spec"]
    assert (config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"], config["vocab_size"]) == (6, 128, 4, 50304)
    assert (spec["lr"], spec["min_lr_ratio"], spec["warmup_steps"], spec["schedule_steps"]) == (1e-3, 0.1, 1430, 143_000)
    assert (spec["weight_decay"], spec["beta2"], spec["batch_size"]) == (0.1, 0.95, 2)


def test_the_train_flags_are_the_library_train_request_composed_whole():
    """`curate train` composes `TrainRequest` (no field of the command copied to TrainSpec by name): every request field
    but the shape flags is a TrainSpec field, given ones pass as they are, the shape flags map explicitly."""
    from dataclasses import fields

    from curate.commands.train import TrainOptions
    from curate.options import cli_params, flag
    from curate.training.spec import TrainSpec
    from curate.training.train_request import SHAPE_FLAGS, TrainRequest

    names = {f.name for f in fields(TrainRequest)}
    assert names - set(SHAPE_FLAGS) <= {f.name for f in fields(TrainSpec)} and set(SHAPE_FLAGS) <= names
    assert not {f.name for f in fields(TrainOptions)} & {f.name for f in fields(TrainSpec)}  # nothing mirrored
    assert [p.name for p in cli_params(TrainOptions) if p.owner == "request"] == [f.name for f in fields(TrainRequest)]
    assert flag(TrainOptions, "heads") == "--attention-heads" and flag(TrainOptions, "init_from") == "--model"
    request = TrainRequest(lr=0.002, seed=3, steps=7, hidden=32, layers=1, precision="fp32")
    assert request.overrides() == {"lr": 0.002, "seed": 3, "steps": 7}
    assert request.shape_fields() == {"architecture": {"num_hidden_layers": 1, "hidden_size": 32, "intermediate_size": 128},
                                      "autocast": False}


def run_train_process(corpus: Path, out: Path, cwd: Path, *extra, heartbeat: str | None = None) -> subprocess.CompletedProcess:
    """`curate train` as its own process, stdout and stderr pipes (off a terminal, as under nohup or a scheduler)."""
    env = {k: v for k, v in os.environ.items() if k not in (HEARTBEAT_ENV, "FORCE_COLOR", "FORCE_TERMINAL", "TTY_COMPATIBLE")}
    if heartbeat is not None:
        env[HEARTBEAT_ENV] = heartbeat
    args = ["train", "--corpus", corpus, "--out", out, "--steps", "12", "--eval-every", "4", "--checkpoints", "none",
            "--layers", "1", "--hidden", "32", "--attention-heads", "2", "--context", "32", *extra]
    return subprocess.run([sys.executable, "-m", "curate.cli", *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


HEARTBEAT_RE = re.compile(r"^train: step (\d+)/12  loss (\d+\.\d{3})(  induction (\d\.\d{3}))?  (\d+\.\d{2}) steps/s  ETA (\d+:\d\d:\d\d)$")


def test_off_a_terminal_train_prints_a_heartbeat_line_at_the_interval(corpus, tmp_path):
    proc = run_train_process(corpus, tmp_path / "run", tmp_path, "--json", heartbeat="0")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["complete"] is True  # stdout holds the summary alone: the heartbeat is on stderr
    lines = proc.stderr.strip().splitlines()
    matches = [HEARTBEAT_RE.match(line) for line in lines]
    assert all(matches), lines
    assert [int(m.group(1)) for m in matches] == list(range(1, 13))  # interval 0: one line per step
    curves = json.loads((tmp_path / "run" / "curves.json").read_text())["points"]
    best = {p["step"]: best_head(p, "induction")[1] for p in curves}
    for m in matches:  # the circuit score is the latest evaluation's best induction head (steps 0, 4, 8 before 12)
        step = int(m.group(1))
        last_eval = max(s for s in best if s < step)
        assert m.group(4) == f"{best[last_eval]:.3f}"


def heartbeat_args(corpus: Path, out: Path, *extra) -> list:
    return ["train", "--corpus", corpus, "--out", out, "--steps", "3", "--eval-every", "3", "--checkpoints", "none",
            "--layers", "1", "--hidden", "32", "--attention-heads", "2", "--context", "32", *extra]


def test_the_heartbeat_waits_its_interval_and_quiet_silences_it(corpus, tmp_path, monkeypatch, capsys):
    # in-process (the captured stderr is no terminal either): no line before the interval has passed, none with --quiet
    monkeypatch.setenv(HEARTBEAT_ENV, "3600")
    code, _, stderr = run_cli(heartbeat_args(corpus, tmp_path / "slow"), monkeypatch, capsys)
    assert code == 0 and stderr == "", stderr
    monkeypatch.setenv(HEARTBEAT_ENV, "0")
    code, _, stderr = run_cli(heartbeat_args(corpus, tmp_path / "every", "--json"), monkeypatch, capsys)
    assert code == 0 and len(stderr.splitlines()) == 3, stderr
    code, _, stderr = run_cli(heartbeat_args(corpus, tmp_path / "quiet", "--quiet"), monkeypatch, capsys)
    assert code == 0 and stderr == "", stderr


def test_a_bad_heartbeat_setting_is_one_line_before_anything_is_written(corpus, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(HEARTBEAT_ENV, "soon")
    code, _, stderr = run_cli(heartbeat_args(corpus, tmp_path / "run"), monkeypatch, capsys)
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {HEARTBEAT_ENV}='soon'"), stderr
    assert not (tmp_path / "run").exists()
