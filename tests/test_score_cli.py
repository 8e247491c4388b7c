"""`curate score`: bad inputs are one `error:` line (exit 2) with nothing written to --out; the checkpoint after
the head formed is picked from a run's summary; the defaults resolve to the workspace's corpus and reference run.

Nothing here starts Ray (the end-to-end runs are in test_score_pipeline.py).
"""
from __future__ import annotations

import json
import shutil
import socket
import threading
from pathlib import Path

import pytest

from curate.attribution.circuits import get_circuit
from curate.attribution.factors_io import factor_key, factor_path
from curate.errors import CurateError
from curate.amounts import parse_amount
from curate.pipelines.manifest import Manifest
from curate.pipelines.score_job import emergence_checkpoint, resolve_job
from curate.pipelines.score_request import ScoreRequest, parse_window
from tests.corpus_helpers import run_cli
from tests.score_helpers import build_tiny_corpus, build_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("score_cli")
    return {
        "base": base,
        "corpus": build_tiny_corpus(base / "corpus"),
        "model": build_tiny_model(base / "model"),
        "small_vocab_model": build_tiny_model(base / "model_v100", vocab_size=100),
    }


def base_args(tiny: dict, out: Path) -> list[str]:
    return ["score", "--corpus", tiny["corpus"], "--model", tiny["model"], "--heads", "1.0", "--window", "0:8",
            "--out", out, "--quiet", "--workers", "1"]


BAD_INPUTS = [
    (["--circuit", "copying"], "unknown circuit 'copying'"),
    (["--heads", "1.x"], "'1.x' is not LAYER.HEAD"),
    (["--heads", "5.0"], "head 5.0 is out of range"),
    (["--window", "0:1000"], "the window 0:1000 is outside the corpus"),
    (["--window", "9:3"], "END must be after START"),
    (["--model", "{small_vocab_model}"], "outside the model's vocabulary (size 100)"),
    (["--ray-address", "127.0.0.1:1"], "--ray-address 127.0.0.1:1: cannot reach a Ray cluster"),
    (["--ray-address", "nowhere"], "expected HOST:PORT"),
    (["--tail-rows", "0"], "--tail-rows '0': must be at least 1 row"),
    (["--tail-rows", "150%"], "--tail-rows '150%': expected a percentage in (0, 100]"),
    (["--tail-rows", "ten"], "expected a percentage"),
    (["--tail-rows", "65"], "more rows than the 64 there are"),
    (["--mode", "qv"], "unknown head subspace mode"),
    (["--batch-rows", "4", "--shard-rows", "6"], "must be a multiple of --batch-rows"),
    (["--model", "{base}/missing-model"], "model folder not found"),
    (["--corpus", "{base}/missing-corpus"], "no such file or folder"),
    (["--damping", "0"], "--damping 0.0: expected a positive number"),
    (["--damping", "nan"], "--damping nan: expected a positive number"),
    (["--token-aggregate", "max"], "--token-aggregate 'max': expected one of sum, positive"),
    (["--token-aggregate", "positive", "--method", "copy-share"], "copy-share is a row statistic"),
]


@pytest.mark.parametrize("extra, message", BAD_INPUTS, ids=[" ".join(e) for e, _ in BAD_INPUTS])
def test_bad_input_is_one_error_line_and_writes_nothing(tiny, tmp_path, monkeypatch, capsys, extra, message):
    out = tmp_path / "out"
    extra = [e.format(**{k: str(v) for k, v in tiny.items()}) for e in extra]
    code, stdout, stderr = run_cli(base_args(tiny, out) + extra, monkeypatch, capsys)
    assert code == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert message in lines[0]
    assert not out.exists()


def test_ray_address_that_is_not_ray_is_one_error_line(tiny, tmp_path, monkeypatch, capsys):
    """A port that answers, but not with gRPC (here: an HTTP/1 reply), fails fast instead of hanging in ray.init."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)

    def answer() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    out = tmp_path / "out"
    try:
        port = server.getsockname()[1]
        code, _, stderr = run_cli(base_args(tiny, out) + ["--ray-address", f"127.0.0.1:{port}"], monkeypatch, capsys)
    finally:
        server.close()
    assert code == 2 and stderr.strip() == f"error: --ray-address 127.0.0.1:{port}: something answers there, but not a Ray cluster (no gRPC endpoint)"
    assert not out.exists()


def test_corpus_without_model_and_model_without_step(tiny, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    code, _, stderr = run_cli(["score", "--corpus", tiny["corpus"], "--out", out, "--workspace", tmp_path / "ws"], monkeypatch, capsys)
    assert code == 2 and "--corpus needs --model" in stderr
    args = [a for a in base_args(tiny, out) if a not in ("--window", "0:8")]
    code, _, stderr = run_cli(args, monkeypatch, capsys)
    assert code == 2 and "cannot tell which training step" in stderr and "give the window START:END" in stderr
    code, _, stderr = run_cli(["score", "--model", tiny["model"], "--out", out], monkeypatch, capsys)
    assert code == 2 and "give the corpus the model was trained on" in stderr
    assert not out.exists()


def test_existing_results_of_another_job_are_refused(tiny, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    out.mkdir()
    manifest = {"fingerprint": {"window": [0, 4]}, "shards": {}, "retries": []}
    (out / "manifest.json").write_text(json.dumps(manifest))
    code, _, stderr = run_cli(base_args(tiny, out), monkeypatch, capsys)
    assert code == 2 and "holds results of a different job" in stderr and "force a fresh start" in stderr
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"]
    assert json.loads((out / "manifest.json").read_text()) == manifest


def test_damping_is_part_of_the_job(tiny, tmp_path, monkeypatch, capsys):
    """Another --damping is another job: another fingerprint, another factor-cache key, and a scores folder holding
    the default damping's results is refused (one line, nothing touched) instead of being resumed with it."""
    out = tmp_path / "out"
    args = dict(corpus=str(tiny["corpus"]), model=str(tiny["model"]), heads="1.0", window="0:8", out=out, progress=False)
    default = resolve_job(ScoreRequest(**args))
    other = resolve_job(ScoreRequest(**args, damping=0.01))
    assert default.fingerprint["factors"]["damping"] == 0.1 and other.fingerprint["factors"]["damping"] == 0.01
    assert default.result_hash != other.result_hash
    keys = [factor_key(j.model_fp, j.heads[0], "qkvo", j.fingerprint["factors"]["damping"], j.fingerprint["factors"]["damping_floor"],
                       j.data_key) for j in (default, other)]
    assert factor_path(out / "factors", keys[0]) != factor_path(out / "factors", keys[1])
    out.mkdir()
    Manifest.open(out, default.fingerprint).save()
    before = (out / "manifest.json").read_bytes()
    code, _, stderr = run_cli(base_args(tiny, out) + ["--damping", "0.01"], monkeypatch, capsys)
    assert code == 2 and "holds results of a different job" in stderr and len(stderr.strip().splitlines()) == 1
    assert (out / "manifest.json").read_bytes() == before and sorted(p.name for p in out.iterdir()) == ["manifest.json"]
    resolve_job(ScoreRequest(**args, damping=0.1))  # the same damping is the same job


def test_parse_top_and_window():
    assert parse_amount("10%", 64) == 7 and parse_amount("100%", 64) == 64 and parse_amount("0.5%", 1000) == 5
    assert parse_amount("12", 64) == 12
    assert parse_window("0:1500") == (0, 1500) and parse_window(":20") == (None, 20) and parse_window("5:") == (5, None)
    for bad in ("1500", "a:b", "3:3"):
        with pytest.raises(CurateError):
            parse_window(bad)


# --------------------------------------------------------------------------- run folders and the defaults


def fake_run(run_dir: Path, model_src: Path, corpus: Path, steps: list[int], induction_step: int | None,
             prev_step: int | None = 100) -> Path:
    """A training-run folder: run.json, summary.json with emergence steps, checkpoints stepK (copies of a model)."""
    for s in steps:
        shutil.copytree(model_src, run_dir / "checkpoints" / f"step{s}")
    (run_dir / "run.json").write_text(json.dumps({"spec": {"corpus": str(corpus), "plan": None}, "batch_size": 8}))
    emergence = {
        "induction": {"threshold": 0.3, "emergence_step": induction_step, "max": 0.61 if induction_step else 0.12},
        "previous_token": {"threshold": 0.3, "emergence_step": prev_step, "max": 0.8},
    }
    (run_dir / "summary.json").write_text(json.dumps({"complete": True, "emergence": emergence}))
    return run_dir


def test_emergence_checkpoint_is_the_first_saved_one_after_formation(tiny, tmp_path):
    run = fake_run(tmp_path / "run", tiny["model"], tiny["corpus"], [2, 4, 6, 8], induction_step=5, prev_step=2)
    step, folder, formed = emergence_checkpoint(run, get_circuit("induction"))
    assert (step, folder.name, formed) == (6, "step6", 5)
    assert emergence_checkpoint(run, get_circuit("previous-token"))[:1] == (2,)
    never = fake_run(tmp_path / "never", tiny["model"], tiny["corpus"], [2, 4], induction_step=None)
    with pytest.raises(CurateError, match="never formed"):
        emergence_checkpoint(never, get_circuit("induction"))
    late = fake_run(tmp_path / "late", tiny["model"], tiny["corpus"], [2, 4], induction_step=7)
    with pytest.raises(CurateError, match="no saved checkpoint at or after step 7"):
        emergence_checkpoint(late, get_circuit("induction"))


def test_run_folder_gives_checkpoint_corpus_and_window(tiny, tmp_path):
    run = fake_run(tmp_path / "run", tiny["model"], tiny["corpus"], [2, 4, 6, 8], induction_step=3)
    job = resolve_job(ScoreRequest(model=str(run), heads="1.0,1.1", out=tmp_path / "out", progress=False))
    assert Path(job.checkpoint).name == "step4" and job.checkpoint_step == 4
    assert job.window == (0, 4) and job.rows == (0, 32) and job.top_k == 4
    assert job.corpus.folder().resolve() == tiny["corpus"].resolve()
    assert any("step4" in n and "step 3" in n for n in job.notes)
    assert [str(h) for h in job.heads] == ["1.0", "1.1"]
    assert not (tmp_path / "out").exists()


def test_defaults_use_the_workspace_corpus_and_reference_run(tiny, tmp_path, monkeypatch, capsys):
    ws = tmp_path / "ws"
    shutil.copytree(tiny["corpus"], ws / "default" / "corpus")
    fake_run(ws / "default" / "runs" / "reference", tiny["model"], ws / "default" / "corpus", [4, 8], induction_step=8)
    job = resolve_job(ScoreRequest(workspace=ws, heads="1.2", progress=False))
    assert job.out == ws / "default" / "scores" / "induction"
    assert Path(job.checkpoint).name == "step8" and job.window == (0, 8)
    assert job.corpus.folder().resolve() == (ws / "default" / "corpus").resolve()
    # an untrained model has no induction head: auto localization says so in one line
    code, _, stderr = run_cli(["score", "--workspace", ws, "--quiet"], monkeypatch, capsys)
    assert code == 2 and stderr.startswith("error: no induction head localized") and len(stderr.strip().splitlines()) == 1


def test_print_summary_shows_heads_counts_paths_and_top_rows(capsys, tmp_path):
    from curate.commands.score import print_summary

    row = {"row_id": 17, "step": 2, "score": 3.5, "loss": 4.0, "domain": "latex", "text": r"\begin{table} [x]"}
    summary = {
        "circuit": "induction", "heads": ["1.2"], "head_metrics": {"1.2": {"induction": 0.61, "previous_token": 0.05}},
        "mode": "qk", "checkpoint": "run/checkpoints/step8", "factors": "loaded from the cache", "window": [0, 8],
        "rows": 64, "rows_scored": 40, "seconds": 3.2, "rows_per_s": 20.0, "workers": 2, "shards_scored": 5,
        "shards_skipped": 3, "retries": [{"task": [24, 32]}], "shards_dir": "shards", "top_k": 7,
        "top_files": {"positive": "top_positive.parquet", "negative": "top_negative.parquet"},
        "top_positive": [row], "top_negative": [{**row, "row_id": 3, "score": -2.0, "domain": None}],
    }
    print_summary(summary, tmp_path)
    printed = " ".join(capsys.readouterr().out.split())
    assert "heads 1.2 (induction 0.610, previous-token 0.050)" in printed
    assert "window steps [0, 8) = 64 rows; scored 40 rows" in printed
    assert "shards 5 scored, 3 skipped; retries 1" in printed
    assert f"scores: {tmp_path / 'shards'}" in printed
    assert r"\begin{table} [x]" in printed and "latex" in printed and "+3.5" in printed and "-2" in printed


def test_score_saves_its_config_and_a_replay_resolves_the_same_job(tiny, tmp_path, monkeypatch, capsys):
    """`curate score` writes OUT/command.json once the job resolved; `curate replay OUT` resolves the same job
    (same fingerprint). The Ray run itself is stubbed (test_score_pipeline runs it)."""
    import curate.pipelines.score_run as score_run
    from curate.commands.options import CONFIG_FILE

    jobs = []
    monkeypatch.setattr(score_run, "run_job", lambda job, log: jobs.append(job) or {"out": str(job.out)})
    out = tmp_path / "scores"
    code, _, stderr = run_cli([*base_args(tiny, out), "--tail-rows", "5", "--seed", "3", "--json"], monkeypatch, capsys)
    assert code == 0, stderr
    saved = json.loads((out / CONFIG_FILE).read_text())
    assert saved["command"] == "score" and saved["options"]["top"] == "5" and saved["options"]["seed"] == 3
    assert saved["options"]["out"] == "." and "out" in saved["paths"]  # stored relative to the folder
    assert saved["options"]["heads"] == "1.0" and "curate_version" in saved
    code, _, stderr = run_cli(["replay", out], monkeypatch, capsys)
    assert code == 0, stderr
    assert len(jobs) == 2 and jobs[0].fingerprint == jobs[1].fingerprint and jobs[1].top_k == 5


def test_replay_of_a_folder_without_config_is_one_error_line(tmp_path, monkeypatch, capsys):
    code, _, stderr = run_cli(["replay", tmp_path], monkeypatch, capsys)
    assert code == 2 and stderr.strip().splitlines() == [f"error: {tmp_path}: no command.json (not a folder written by a curate command that saves its config)"]


def test_score_help_keeps_brackets_and_lists_the_flags(monkeypatch, capsys):
    code, out, _ = run_cli(["score", "--help"], monkeypatch, capsys)
    assert code == 0
    for flag in ("--circuit", "--corpus", "--model", "--revision", "--heads", "--mode", "--window", "--tail-rows",
                 "--out", "--workers", "--ray-address", "--device", "--batch-rows", "--shard-rows", "--fit-rows", "--seed",
                 "--force", "--json", "--quiet", "--workspace"):
        assert flag in out
    assert "[default: 8192]" in out and "[default: 10%]" in out
    code, out, _ = run_cli(["circuits", "--help"], monkeypatch, capsys)
    assert code == 0 and "[r, r]" in out
