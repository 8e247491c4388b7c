"""A workspace copied or moved elsewhere keeps working: run.json, summary.json and mix plans store paths relative
to their folder, and the score job, the factor cache and the experiment identify a corpus by its content, so
`score` resumes without rescoring, `train --resume` continues and `experiment` reuses its finished arms from
another working directory after the original folder is gone."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.corpus_helpers import run_cli
from tests.score_helpers import build_tiny_corpus

pytestmark = pytest.mark.slow


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def ray_for_module():
    from curate.pipelines.ray_pool import ray_session

    torch.set_num_threads(1)
    with ray_session(None, num_cpus=2):
        yield


def test_a_moved_workspace_resumes_everything(tmp_path, monkeypatch, capsys, ray_for_module):
    from curate.training.default_model import default_model_config

    ws = tmp_path / "a" / "ws"
    corpus = build_tiny_corpus(ws / "corpus", docs=1200, seq_len=31, batch_size=8)
    config = ws / "config.json"
    config.write_text(json.dumps(default_model_config(300, hidden_size=32, max_position_embeddings=32).to_dict()))
    monkeypatch.chdir(ws)
    train = ["train", "--corpus", "corpus", "--config", "config.json", "--steps", "30", "--batch-size", "8", "--eval-every", "10",
             "--checkpoints", "every:10", "--lr", "3e-3", "--warmup-steps", "5", "--out", "run", "--quiet"]
    import curate.training.trainer as trainer

    real_save = trainer.save_checkpoint

    def save_then_stop(out_dir, step, *args, **kwargs):
        real_save(out_dir, step, *args, **kwargs)
        if step == 20:
            raise Interrupted

    with monkeypatch.context() as m:  # the run stops right after its step-20 checkpoint, as if killed
        m.setattr(trainer, "save_checkpoint", save_then_stop)
        with pytest.raises(Interrupted):
            run_cli(train, monkeypatch, capsys)
    capsys.readouterr()
    run_json = json.loads((ws / "run" / "run.json").read_text())
    assert run_json["spec"]["corpus"] == "../corpus" and run_json["base_corpus"].startswith("../corpus")
    score = ["score", "--circuit", "previous-token", "--model", "run", "--revision", "step20", "--window", "0:20",
             "--heads", "0.0", "--shard-rows", "40", "--out", "scores", "--workers", "1", "--json", "--quiet"]
    code, out, err = run_cli(score, monkeypatch, capsys)
    assert code == 0, err
    first = json.loads(out)
    assert first["shards_skipped"] == 0 and json.loads((ws / "scores" / "summary.json").read_text())["corpus"] == "../corpus"
    experiment = ["experiment", "--quick", "--circuit", "previous-token", "--threshold", "0.12", "--corpus", "corpus",
                  "--config", "config.json", "--baseline-steps", "40", "--batch-size", "8", "--eval-every", "10",
                  "--lr", "3e-3", "--warmup-steps", "5", "--seeds", "1", "--arms", "baseline,remove-top",
                  "--out", "exp", "--workers", "1", "--quiet"]
    code, _, err = run_cli(experiment, monkeypatch, capsys)
    assert code == 0, err

    moved = tmp_path / "b" / "elsewhere" / "ws2"
    moved.parent.mkdir(parents=True)
    shutil.copytree(ws, moved, symlinks=True)
    shutil.rmtree(tmp_path / "a")
    other = tmp_path / "cwd"
    other.mkdir()
    monkeypatch.chdir(other)

    # score: the same job, every shard kept
    score_moved = [str(moved / a) if a in ("run", "scores") else a for a in score]
    code, out, err = run_cli(score_moved, monkeypatch, capsys)
    assert code == 0, err
    again = json.loads(out)
    assert again["shards_skipped"] == again["shards"] > 0
    assert again["rows_scored"] == 0
    # train --resume continues the moved run
    resume = [str(moved / a) if a in ("corpus", "config.json", "run") else a for a in train]
    code, out, err = run_cli(resume + ["--resume", "--json"], monkeypatch, capsys)
    assert code == 0, err
    summary = json.loads(out)
    assert summary["step"] == 30 and summary["complete"]
    # experiment: finished arms reused
    exp_moved = [str(moved / a) if a in ("corpus", "config.json", "exp") else a for a in experiment if a != "--quiet"]
    summaries = {p: p.stat().st_mtime_ns for p in (moved / "exp" / "arms").glob("*/seed*/summary.json")}
    assert len(summaries) == 2
    code, _, err = run_cli(exp_moved, monkeypatch, capsys)
    assert code == 0, err
    assert {p: p.stat().st_mtime_ns for p in summaries} == summaries
    assert "already finished, skipped" in err and "scores (mda): reusing" in err
