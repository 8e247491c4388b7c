"""Scoring and arm training on a real multi-node Ray cluster on this machine (`ray.cluster_utils.Cluster`: a head
node and a worker node, each with its own CPUs and a custom resource naming it).

- the score job spreads its shards over both nodes and records which node scored each shard;
- removing the worker node mid-run still completes, with scores byte-identical to an undisturbed run, and the
  job reports the shards it re-ran (`retried_shards`, a `retry:` progress line);
- the driver killed (kill -9 of `curate score --ray-address`) and rerun against the same cluster resumes;
- experiment arm runs lost with their node are trained again, finished runs are kept.
"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
import torch

from curate.pipelines.score_job import resolve_job
from curate.pipelines.score_request import ScoreRequest
from curate.pipelines.score_run import run_job
from tests.score_helpers import build_tiny_corpus, build_tiny_model, kill_score_after_first_shard

pytestmark = pytest.mark.slow

WINDOW = "0:8"  # 64 rows
HEADS = "1.0,1.2"
SHARD_ROWS = 8  # 8 shards
STORE = 80 * 1024 * 1024


def add_worker(cluster):
    node = cluster.add_node(num_cpus=2, resources={"worker": 1}, object_store_memory=STORE)
    cluster.wait_for_nodes()
    return node


def wait_until_idle(cpus: int = 4, timeout: float = 120) -> None:
    """Until every CPU of the cluster is free (the actors of an earlier job, or of a killed driver, are gone)."""
    import ray

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and ray.available_resources().get("CPU", 0) < cpus:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0) >= cpus, ray.available_resources()


def node_ids() -> dict[str, str]:
    """'head' / 'worker' -> Ray node id of the live nodes."""
    import ray

    ids = {}
    for n in ray.nodes():
        if n["Alive"]:
            for name in ("head", "worker"):
                if n["Resources"].get(name):
                    ids[name] = n["NodeID"]
    return ids


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    import logging

    import ray
    from ray.cluster_utils import Cluster

    from curate.pipelines.ray_pool import quiet_ray_env

    quiet_ray_env()
    torch.set_num_threads(1)
    assert not ray.is_initialized()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "resources": {"head": 1}, "include_dashboard": False,
                                                      "object_store_memory": STORE})
    holder = {"cluster": c, "worker": add_worker(c)}
    ray.init(address=c.address, logging_level=logging.ERROR, log_to_driver=False)
    try:
        yield holder
    finally:
        ray.shutdown()
        c.shutdown()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("multinode")
    return {"base": base, "corpus": build_tiny_corpus(base / "corpus"), "model": build_tiny_model(base / "model")}


def request(tiny: dict, out: Path, address: str, **kw) -> ScoreRequest:
    args = dict(corpus=str(tiny["corpus"]), model=str(tiny["model"]), heads=HEADS, window=WINDOW, out=out, workers=2,
                batch_rows=4, shard_rows=SHARD_ROWS, fit_rows=48, top="10%", progress=False, ray_address=address)
    args.update(kw)
    return ScoreRequest(**args)


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "shards").glob("*.parquet"))}


def recorded_shards(out: Path) -> dict:
    path = out / "manifest.json"
    try:
        return json.loads(path.read_text())["shards"] if path.is_file() else {}
    except (OSError, ValueError):
        return {}


class when:
    """Run `action()` in a thread as soon as `condition()` holds (polled until `stop()`)."""

    def __init__(self, condition, action) -> None:
        self._stop = threading.Event()

        def watch() -> None:
            while not self._stop.is_set():
                if condition():
                    action()
                    return
                time.sleep(0.02)

        self._thread = threading.Thread(target=watch, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=120)


@pytest.fixture(scope="module")
def reference(cluster, tiny) -> dict:
    """An undisturbed run on both nodes: the scores every other run must reproduce."""
    out = tiny["base"] / "ref"
    summary = run_job(resolve_job(request(tiny, out, cluster["cluster"].address)))
    return {"out": out, "summary": summary, "bytes": shard_bytes(out), "nodes": node_ids()}


def test_shards_spread_over_both_nodes_and_each_records_its_node(reference):
    s, ids = reference["summary"], reference["nodes"]
    assert set(ids) == {"head", "worker"} and ids["head"] != ids["worker"]
    assert (s["shards"], s["shards_scored"], s["retried_shards"], s["retries"]) == (8, 8, 0, [])
    assert set(s["nodes"]) == {ids["head"], ids["worker"]}  # both nodes scored shards
    assert sum(s["nodes"].values()) == 8
    shards = recorded_shards(reference["out"])
    assert len(shards) == 8 and {rec["node"] for rec in shards.values()} == set(s["nodes"])
    for node, n in s["nodes"].items():
        assert sum(rec["node"] == node for rec in shards.values()) == n
    assert len(reference["bytes"]) == 8


def test_worker_node_removed_mid_run_completes_identically_and_reports_retries(reference, cluster, tiny, monkeypatch):
    c = cluster["cluster"]
    out = tiny["base"] / "node-lost"
    worker = reference["nodes"]["worker"]
    monkeypatch.setenv("CURATE_FAULT_SHARD_DELAY_S", "0.5")  # each shard takes >= 0.5 s: the node goes while shards remain
    wait_until_idle()  # both nodes free: one actor on each
    removed = []

    def remove() -> None:
        c.remove_node(cluster["worker"])
        removed.append(len(recorded_shards(out)))

    watcher = when(lambda: len(recorded_shards(out)) >= 1, remove)
    lines: list[str] = []
    try:
        s = run_job(resolve_job(request(tiny, out, c.address)), lines.append)
    finally:
        watcher.stop()
        cluster["worker"] = add_worker(c)  # back to two nodes for the next tests
    assert removed and removed[0] < 8, "the node was removed after the job had finished"
    assert (s["shards"], s["shards_scored"], s["shards_skipped"]) == (8, 8, 0)
    assert shard_bytes(out) == reference["bytes"]  # bit-identical to the undisturbed run
    assert s["retried_shards"] >= 1
    retried = {tuple(r["task"]) for r in s["retries"] if r["phase"] == "score"}
    assert len(retried) == s["retried_shards"]
    retry_lines = [ln for ln in lines if ln.startswith("retry:")]
    assert len(retry_lines) == len(s["retries"])
    a, b = sorted(retried)[0]
    assert any(f"shard of rows {a}..{b}" in ln and "attempt 2" in ln for ln in retry_lines)
    shards = recorded_shards(out)
    for a, b in retried:  # re-run on the node that is left, on a later attempt
        rec = shards[f"{a:012d}-{b:012d}"]
        assert rec["attempts"] >= 2 and rec["node"] == reference["nodes"]["head"]
    assert worker not in {rec["node"] for key, rec in shards.items() if tuple(int(x) for x in key.split("-")) in retried}
    manifest = json.loads((out / "manifest.json").read_text())
    assert {tuple(r["task"]) for r in manifest["retries"]} == retried


def test_driver_killed_then_rerun_against_the_cluster_resumes(reference, cluster, tiny, tmp_path):
    c = cluster["cluster"]
    out = tmp_path / "killed"
    args = ["--corpus", str(tiny["corpus"]), "--model", str(tiny["model"]), "--heads", HEADS, "--window", WINDOW,
            "--out", str(out), "--workers", "2", "--batch-rows", "4", "--shard-rows", str(SHARD_ROWS), "--fit-rows", "48",
            "--ray-address", c.address, "--quiet"]
    kill_score_after_first_shard(args, out, delay_s=0.5)
    done = len(recorded_shards(out))
    assert 1 <= done < 8
    assert not (out / "summary.json").exists()
    assert {rec["node"] for rec in recorded_shards(out).values()} <= set(node_ids().values())
    s = run_job(resolve_job(request(tiny, out, c.address)))  # the rerun, joined to the same cluster
    assert s["shards_skipped"] == done and s["shards_skipped"] > 0 and s["shards_scored"] == 8 - done
    assert sum(s["nodes"].values()) == 8 - done
    assert shard_bytes(out) == reference["bytes"]
    assert sorted(p.name for p in (out / "shards").iterdir()) == sorted(reference["bytes"])  # no temporaries left


# --------------------------------------------------------------------------- experiment arms


def arm_runs(tiny: dict, arms_dir: Path) -> list:
    from curate.pipelines.arms import ArmRun, run_folder, run_key
    from curate.training.default_model import default_model_config
    from curate.training.spec import TrainSpec

    config = default_model_config(300, hidden_size=32, max_position_embeddings=32).to_dict()
    runs = []
    for seed in range(3):  # three runs of different seeds, two at a time on the two nodes
        spec = TrainSpec(corpus=str(tiny["corpus"]), model_config=config, steps=24, batch_size=8, eval_every=8, eval_probes=8,
                         heldout_rows=16, lr=3e-3, warmup_steps=4, checkpoints="every:4", seed=seed)
        runs.append(ArmRun("baseline", seed, run_folder(arms_dir, "baseline", seed), spec, run_key(spec)))
    return runs


def finished_runs(runs: list) -> list:
    from curate.pipelines.arms import is_finished

    return [r for r in runs if is_finished(r.out_dir, r.key)]


def wait_for(condition, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_arm_runs_lost_with_their_node_are_trained_again_and_finished_ones_kept(cluster, tiny, monkeypatch):
    """Deterministic: every run is held at a barrier halfway (`CURATE_FAULT_ARM_HOLD`, `pipelines.arms`); the
    head's first run is released and finishes, the third run starts on the head and is held, and the worker node
    is removed while its run is held there (unfinished, checkpoints up to the barrier saved)."""
    from curate.pipelines.arms import ARM_HOLD_ENV, is_finished, train_runs
    from tests.corpus_helpers import digest

    c = cluster["cluster"]
    runs = arm_runs(tiny, tiny["base"] / "arms")
    hold = tiny["base"] / "hold"
    hold.mkdir()
    monkeypatch.setenv(ARM_HOLD_ENV, str(hold))
    wait_until_idle()  # both nodes free (the killed driver's actors gone): one arm worker on each
    ids = node_ids()
    kept: dict[str, dict] = {}
    on_node: dict[str, str] = {}  # 'head' / 'worker' -> label of the first run held there
    errors: list[BaseException] = []

    def held() -> dict[str, str]:
        """label -> Ray node id of every run held so far."""
        by_dir = {str(r.out_dir): r.label for r in runs}
        out = {}
        for p in hold.glob("*.held"):
            try:
                rec = json.loads(p.read_text())
            except ValueError:  # being written
                continue
            out[by_dir[rec["out_dir"]]] = rec["node"]
        return out

    def script() -> None:
        try:
            wait_for(lambda: len(held()) == 2, "a run held on each node")
            for label, node in held().items():
                on_node["head" if node == ids["head"] else "worker"] = label
            assert set(on_node) == {"head", "worker"}, held()
            first = next(r for r in runs if r.label == on_node["head"])
            (hold / ("-".join(first.out_dir.parts[-2:]) + ".go")).touch()
            wait_for(lambda: is_finished(first.out_dir, first.key) and len(held()) == 3, "the head's run finished, the third held")
            for r in finished_runs(runs):
                kept[r.label] = digest(r.out_dir)
            c.remove_node(cluster["worker"])  # the worker's run is held there, unfinished
        except BaseException as e:  # noqa: BLE001 (reported by the test)
            errors.append(e)
        finally:
            (hold / "all.go").touch()

    thread = threading.Thread(target=script, daemon=True)
    thread.start()
    lines: list[str] = []
    try:
        counts = train_runs(runs, 2, lines.append)
    finally:
        (hold / "all.go").touch()
        thread.join(timeout=120)
        cluster["worker"] = add_worker(c)
    assert not errors, errors
    assert list(kept) == [on_node["head"]]  # the head's first run had finished when the node went
    assert all(is_finished(r.out_dir, r.key) for r in runs)
    assert (counts["trained"], counts["skipped"], counts["workers"]) == (3, 0, 2)
    assert counts["retried"] == [on_node["worker"]], lines  # the run lost with its node, and only it, trained again
    retry_lines = [ln for ln in lines if "died" in ln and "training it again" in ln]
    assert len(retry_lines) == 1 and on_node["worker"] in retry_lines[0]
    for label, files in kept.items():  # finished runs untouched
        r = next(r for r in runs if r.label == label)
        assert digest(r.out_dir) == files
    # a rerun keeps everything
    again = train_runs(runs, 2, lines.append)
    assert (again["trained"], again["skipped"]) == (0, 3)
    # the retried run resumed to the same result as training it without interruption
    from curate.training.trainer import train

    lost = next(r for r in runs if r.label == counts["retried"][0])
    clean = tiny["base"] / "clean"
    train(lost.spec, clean, progress=False)
    assert json.loads((clean / "curves.json").read_text()) == json.loads((lost.out_dir / "curves.json").read_text())


# --------------------------------------------------------------------------- the pool's bounds


def test_a_replacement_that_cannot_start_ends_the_job_with_one_error(cluster):
    """A dead actor's replacement that never comes up (here: its constructor fails) is given up after the pool's
    attempts, with one CurateError, instead of being restarted forever."""
    import ray

    from curate.errors import CurateError
    from curate.pipelines.ray_pool import ActorPool, Task

    class Dies:  # (defined here: shipped by value to the workers) its task kills its process; `broken`: cannot start
        def __init__(self, broken: bool) -> None:
            if broken:
                raise RuntimeError("cannot start")

        def work(self, x: int) -> int:
            os._exit(1)

    remote = ray.remote(Dies).options(num_cpus=1, max_restarts=0)
    made = []

    def factory():
        made.append(1)
        return remote.remote(len(made) > 1)  # the first starts, every replacement fails to

    pool = ActorPool(factory, 1)
    try:
        with pytest.raises(CurateError, match="failed to start 3 times"):
            pool.run("work", [Task(0, (0,))], lambda t, r: None, phase="test")
    finally:
        pool.shutdown()
    assert len(pool.retries) == 1 and len(made) == 4  # the first actor, then three replacements that never came up
