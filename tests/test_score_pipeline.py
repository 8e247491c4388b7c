"""The Ray scoring pipeline: equal to the in-process path, resumable after a driver kill, robust to a dead
actor, deterministic whatever the worker count, and refusing to mix results of different jobs.

One local Ray (2 CPUs) serves the whole module; the driver-kill test runs `curate score` in a subprocess
that joins it with --ray-address.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from curate.attribution.scoring import score_corpus
from curate.attribution.score_table import ScoreTable
from curate.corpus_digest import content_digest
from curate.errors import CurateError
from curate.pipelines.score_job import resolve_job
from curate.pipelines.score_request import ScoreRequest
from curate.pipelines import score_progress
from curate.pipelines.score_run import run_job
from curate.progress import heartbeat_seconds
from tests.score_helpers import build_tiny_corpus, build_tiny_model, kill_score_after_first_shard

WINDOW = "0:8"  # 8 steps x 8 rows = 64 rows
HEADS = "1.0,1.2"
SHARD_ROWS = 8  # 8 shards
BATCH_ROWS = 4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("score")
    return {"base": base, "corpus": build_tiny_corpus(base / "corpus"), "model": build_tiny_model(base / "model")}


def request(tiny: dict, out: Path, **kw) -> ScoreRequest:
    args = dict(corpus=str(tiny["corpus"]), model=str(tiny["model"]), heads=HEADS, window=WINDOW, out=out, workers=2,
                batch_rows=BATCH_ROWS, shard_rows=SHARD_ROWS, fit_rows=48, top="10%", progress=False)
    args.update(kw)
    return ScoreRequest(**args)


def score(req: ScoreRequest) -> dict:
    return run_job(resolve_job(req))


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "shards").glob("*.parquet"))}


def all_scores(out: Path) -> ScoreTable:
    return ScoreTable.concat([ScoreTable.from_parquet(p) for p in sorted((out / "shards").glob("*.parquet"))])


@pytest.fixture(scope="module")
def reference(ray_address, tiny) -> dict:
    """An uninterrupted run with 2 workers: the result every other run must reproduce."""
    out = tiny["base"] / "ref"
    job = resolve_job(request(tiny, out))
    summary = run_job(job)
    return {"out": out, "job": job, "summary": summary, "bytes": shard_bytes(out)}


def test_ray_scores_equal_the_in_process_path(reference, tiny):
    job, out = reference["job"], reference["out"]
    assert len(reference["bytes"]) == 8
    assert reference["summary"]["corpus_digest"] == content_digest(job.corpus)  # what every reader checks its corpus against
    ray_table = all_scores(out)
    np.testing.assert_array_equal(ray_table.row_id, np.arange(64))
    np.testing.assert_array_equal(ray_table.step, np.arange(64) // 8)
    # same factors (the job's cache), same probes, same batches: identical numbers
    inproc = score_corpus(job.model, job.corpus, job.rows, "induction", job.heads, "qkvo", batch_rows=BATCH_ROWS,
                          fit_rows=48, seed=0, probes=job.probes, factor_cache=out / "factors")
    np.testing.assert_array_equal(inproc.row_id, ray_table.row_id)
    np.testing.assert_array_equal(inproc.loss, ray_table.loss)
    np.testing.assert_array_equal(inproc.head_scores, ray_table.head_scores)
    assert [str(h) for h in ray_table.heads] == ["1.0", "1.2"]
    # the distributed EK-FAC fit agrees with the in-process fit up to summation order
    fresh = score_corpus(job.model, job.corpus, job.rows, "induction", job.heads, "qkvo", batch_rows=BATCH_ROWS,
                         fit_rows=48, seed=0, probes=job.probes)
    scale = np.abs(ray_table.head_scores).max()
    assert scale > 0
    assert np.abs(fresh.head_scores - ray_table.head_scores).max() / scale < 1e-4


def test_summary_and_top_rows(reference, tiny):
    s, out = reference["summary"], reference["out"]
    saved = json.loads((out / "summary.json").read_text())
    assert saved == json.loads(json.dumps(s, default=str))
    for key in ("corpus", "circuit", "heads", "mode", "window", "batch_size", "rows", "checkpoint", "top_positive",
                "top_negative", "seconds", "retries"):
        assert key in saved
    assert (saved["circuit"], saved["heads"], saved["mode"], saved["window"], saved["batch_size"]) == ("induction", ["1.0", "1.2"], "qkvo", [0, 8], 8)  # qkvo: the induction default
    assert (saved["rows"], saved["rows_scored"], saved["shards"], saved["shards_scored"], saved["shards_skipped"]) == (64, 64, 8, 8, 0)
    assert saved["retries"] == []
    # the folder (its corpus.json, tokenizer, sidecar stay usable), relative to the scores folder so a moved workspace reads
    assert (out / saved["corpus"]).resolve() == tiny["corpus"].resolve() and saved["corpus_absolute"] == str(tiny["corpus"].resolve())
    assert saved["top_k"] == 7  # ceil(10% of 64)
    table = all_scores(out)
    best, worst = table.top_k(7)
    assert pq.read_table(out / "top_positive.parquet").column("row_id").to_pylist() == best.tolist()
    assert pq.read_table(out / "top_negative.parquet").column("row_id").to_pylist() == worst.tolist()
    top = saved["top_positive"][0]
    assert top["row_id"] == int(best[0]) and top["score"] == pytest.approx(float(table.score.max()))
    assert saved["top_negative"][0]["score"] == pytest.approx(float(table.score.min()))
    # domain from the sidecar, text decoded by the corpus tokenizer
    sidecar = pq.read_table(tiny["corpus"] / "rows.parquet").to_pydict()
    assert top["domain"] == sidecar["domain"][sidecar["row_id"].index(top["row_id"])]
    from curate.corpus import open_corpus
    from curate.tokenize import load_tokenizer

    corpus = open_corpus(tiny["corpus"])
    text = load_tokenizer(corpus.tokenizer_spec()).decode(corpus.rows(top["row_id"], top["row_id"] + 1)[0].tolist())
    assert top["text"] == text.replace("\n", "\\n").replace("\t", " ")[:80]


def test_rerun_skips_every_finished_shard(reference, tiny):
    out = reference["out"]
    before = {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()}
    s = score(request(tiny, out))
    assert (s["shards_scored"], s["shards_skipped"], s["rows_scored"]) == (0, 8, 0)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()} == before
    assert s["top_positive"] == reference["summary"]["top_positive"]


def test_changed_job_is_refused_then_forced_previous_token_qkvo(reference, tiny):
    """Another job in the same folder is refused; with --force it replaces the old results (and a
    previous-token / qkvo job scores exactly as the in-process path)."""
    out = tiny["base"] / "changed"
    shutil.copytree(reference["out"], out)
    for changed, field in ((dict(window="0:4"), "window"), (dict(heads="1.1"), "heads"), (dict(seed=3), "probe"),
                           (dict(mode="qk"), "mode")):
        with pytest.raises(CurateError, match=field):
            resolve_job(request(tiny, out, **changed))
    assert shard_bytes(out) == reference["bytes"]
    job = resolve_job(request(tiny, out, circuit="previous-token", heads="0.1,1.3", mode="qkvo", window="2:6", shard_rows=12,
                              fit_rows=None, force=True, workers=1))
    s = run_job(job)
    assert (s["rows"], s["shards"], s["shards_scored"], s["window"], s["heads"]) == (32, 3, 3, [2, 6], ["0.1", "1.3"])
    assert sorted(shard_bytes(out)) == [f"rows-{a:012d}-{b:012d}.parquet" for a, b in ((16, 28), (28, 40), (40, 48))]
    table = all_scores(out)
    np.testing.assert_array_equal(table.row_id, np.arange(16, 48))
    inproc = score_corpus(job.model, job.corpus, job.rows, "previous-token", job.heads, "qkvo", batch_rows=BATCH_ROWS,
                          fit_rows=None, seed=0, probes=job.probes, factor_cache=out / "factors")
    np.testing.assert_array_equal(inproc.head_scores, table.head_scores)
    assert np.abs(table.head_scores).max() > 0


def test_token_aggregate_positive_is_another_job_scored_like_the_in_process_path(reference, tiny):
    """--token-aggregate positive: refused over the sum's results (another job), then forced: the actors' scores equal
    the in-process scorer's, each head's score at least the plain sum's, recorded in the summary and shards."""
    out = tiny["base"] / "positive"
    shutil.copytree(reference["out"], out)
    with pytest.raises(CurateError, match="token_aggregate"):
        resolve_job(request(tiny, out, token_aggregate="positive"))
    assert shard_bytes(out) == reference["bytes"]
    job = resolve_job(request(tiny, out, token_aggregate="positive", force=True))
    s = run_job(job)
    assert s["token_aggregate"] == "positive" and "token_aggregate" not in reference["summary"]
    assert s["fingerprint_hash"] != reference["summary"]["fingerprint_hash"]
    table, plain = all_scores(out), all_scores(reference["out"])
    assert table.meta.get("token_aggregate") == "positive"
    inproc = score_corpus(job.model, job.corpus, job.rows, "induction", job.heads, "qkvo", batch_rows=BATCH_ROWS, fit_rows=48,
                          seed=0, probes=job.probes, factor_cache=out / "factors", token_aggregate="positive")
    np.testing.assert_array_equal(inproc.head_scores, table.head_scores)
    assert (table.head_scores >= plain.head_scores).all() and (table.head_scores > plain.head_scores).any()
    assert (table.head_scores >= 0).all()
    np.testing.assert_array_equal(table.loss, plain.loss)


def test_dead_actor_is_retried_with_identical_results(reference, tiny, monkeypatch):
    """One worker (so the fit also checks worker-count independence); it dies at the shard of rows 24..32."""
    out = tiny["base"] / "fault"
    marker = tiny["base"] / "fault.marker"
    monkeypatch.setenv("CURATE_FAULT_KILL_ACTOR_AT_SHARD", "24")
    monkeypatch.setenv("CURATE_FAULT_MARKER", str(marker))
    s = score(request(tiny, out, workers=1))
    assert marker.exists()
    assert [(r["task"], r["phase"], r["attempt"]) for r in s["retries"]] == [([24, 32], "score", 1)]
    manifest = json.loads((out / "manifest.json").read_text())
    assert [r["task"] for r in manifest["retries"]] == [[24, 32]]
    assert manifest["shards"]["000000000024-000000000032"]["attempts"] == 2
    assert shard_bytes(out) == reference["bytes"]


def test_driver_killed_then_rerun_resumes_identically(reference, tiny, ray_address, tmp_path):
    out = tmp_path / "killed"
    args = ["--corpus", str(tiny["corpus"]), "--model", str(tiny["model"]), "--heads", HEADS, "--window", WINDOW,
            "--out", str(out), "--workers", "1", "--batch-rows", str(BATCH_ROWS), "--shard-rows", str(SHARD_ROWS),
            "--fit-rows", "48", "--ray-address", ray_address, "--quiet"]
    done = kill_score_after_first_shard(args, out, delay_s=0.4, timeout_s=90)
    assert 1 <= done < 8
    assert not (out / "summary.json").exists()
    s = score(request(tiny, out, workers=1))  # the rerun (in this process, on the same Ray)
    assert (s["shards_skipped"], s["shards_scored"]) == (done, 8 - done)
    assert shard_bytes(out) == reference["bytes"]
    assert sorted(p.name for p in (out / "shards").iterdir()) == sorted(reference["bytes"])  # no temporaries left


def factor_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.rglob("*.safetensors"))}


def test_one_driver_two_executors_same_factors_and_scores(reference, tiny, monkeypatch):
    """The in-process executor, chunked like the Ray shards, fits byte-identical factors and scores identically;
    the cache it writes is used by a Ray run (no refit), and the Ray run's cache by the in-process path."""
    from curate.attribution.ekfac import EKFACFitter

    job, ref_out = reference["job"], reference["out"]
    cache = tiny["base"] / "inproc-factors"
    inproc = score_corpus(job.model, job.corpus, job.rows, "induction", job.heads, "qkvo", batch_rows=BATCH_ROWS, fit_rows=48,
                          seed=0, probes=job.probes, factor_cache=cache, shard_rows=SHARD_ROWS)
    assert factor_bytes(cache) == factor_bytes(ref_out / "factors")
    ray_table = all_scores(ref_out)
    np.testing.assert_array_equal(inproc.row_id, ray_table.row_id)
    np.testing.assert_array_equal(inproc.loss, ray_table.loss)
    np.testing.assert_array_equal(inproc.head_scores, ray_table.head_scores)
    # a Ray run on the in-process cache loads it, and matches the reference run
    out = tiny["base"] / "from-inproc-cache"
    out.mkdir()
    shutil.copytree(cache, out / "factors")
    s = score(request(tiny, out))
    assert s["factors"] == "loaded from the cache"
    assert shard_bytes(out) == reference["bytes"]
    # and the in-process path on the Ray cache fits nothing
    def no_fit(*a, **k):
        raise AssertionError("factors were refitted although cached")

    monkeypatch.setattr(EKFACFitter, "covariance_accumulator", no_fit)
    again = score_corpus(job.model, job.corpus, job.rows, "induction", job.heads, "qkvo", batch_rows=BATCH_ROWS, fit_rows=48,
                         seed=0, probes=job.probes, factor_cache=ref_out / "factors", shard_rows=SHARD_ROWS)
    np.testing.assert_array_equal(again.head_scores, inproc.head_scores)


def test_quiet_progress_keeps_a_heartbeat(monkeypatch, capsys):
    """Without progress bars a long phase still prints one line at most every heartbeat_seconds() seconds (shards done/total)."""
    clock = [1000.0]
    monkeypatch.setattr(score_progress.time, "monotonic", lambda: clock[0])
    with score_progress.JobProgress(False) as progress:
        progress.phase("score", 4096, 1024, shards=4, shards_done=1)
        progress.advance(1024)  # at once: no line
        clock[0] += heartbeat_seconds()
        progress.advance(1024)  # a minute on: one line
        clock[0] += 5
        progress.advance(1024)  # 5 s later: none
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["score: 3/4 shards, 3,072/4,096 rows done (1 min elapsed)"]
    with score_progress.JobProgress(True) as bars:  # with bars: no heartbeat lines
        bars.phase("score", 10, shards=1)
        clock[0] += 2 * heartbeat_seconds()
        bars.advance(10)
    assert "rows done" not in capsys.readouterr().err
