"""`curate train`: architecture flags, presets, micro-batches and precision, validated before anything is written."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

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
