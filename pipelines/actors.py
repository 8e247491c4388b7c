"""The scoring worker of a Ray actor: `attribution.scoring.ScoringWorker` (the per-row work the in-process
executor runs too) plus what an actor needs.

A worker loads the model, the corpus (memory-mapped) and, once known, the preconditioned probe
gradients ONCE, then serves three kinds of task on row ranges:
- `fit_covariance(heads, ids)` / `fit_lambda(heads, bases, ids)`: EK-FAC partial sums (pass 1 / pass 2) of
  its rows, returned as `state_dict()`s for the driver to merge (`attribution.scoring.ScoringDriver`);
- `score_shard(start, stop, path)`: scores rows [start, stop) and writes the shard atomically as a
  score-table Parquet file (`attribution.score_table`); returns rows, sha256, seconds.
Each worker runs torch with one thread.

Test hooks (fault injection, read by the DRIVER from its environment and passed to the workers):
- `CURATE_FAULT_KILL_ACTOR_AT_SHARD=<row start>`: the worker that picks up the shard starting at that row
  calls `os._exit(1)` before scoring it, once: it first creates the marker file named by
  `CURATE_FAULT_MARKER` (default `<out>/.fault-kill-<row start>`), and does nothing when it exists.
- `CURATE_FAULT_SHARD_DELAY_S=<seconds>`: sleep that long before each shard (to kill a run midway in tests).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from curate.attribution.heads import HeadBlocks, HeadRef
from curate.attribution.scoring import RowStatistic, ScoringWorker
from curate.corpus import open_corpus
from curate.errors import CurateError
from curate.atomic import file_sha256

FAULT_KILL_ENV = "CURATE_FAULT_KILL_ACTOR_AT_SHARD"
FAULT_MARKER_ENV = "CURATE_FAULT_MARKER"
FAULT_DELAY_ENV = "CURATE_FAULT_SHARD_DELAY_S"


@dataclass
class FaultPlan:
    """Injected faults for tests (see the module docstring); the default injects nothing."""

    kill_at_shard: int | None = None
    marker: str | None = None
    delay_s: float = 0.0

    @classmethod
    def from_env(cls, out_dir: Path) -> "FaultPlan":
        raw = os.environ.get(FAULT_KILL_ENV, "").strip()
        kill = None
        if raw:
            if not raw.lstrip("-").isdigit():
                raise CurateError(f"${FAULT_KILL_ENV}={raw!r}: expected the first row of a shard (an integer)")
            kill = int(raw)
        marker = os.environ.get(FAULT_MARKER_ENV) or (str(out_dir / f".fault-kill-{kill}") if kill is not None else None)
        delay_raw = os.environ.get(FAULT_DELAY_ENV, "").strip()
        try:
            delay = float(delay_raw) if delay_raw else 0.0
        except ValueError:
            raise CurateError(f"${FAULT_DELAY_ENV}={delay_raw!r}: expected seconds") from None
        return cls(kill, marker, delay)

    def before_shard(self, start: int) -> None:
        if self.delay_s > 0:
            time.sleep(self.delay_s)
        if self.kill_at_shard is not None and start == self.kill_at_shard and self.marker:
            marker = Path(self.marker)
            if not marker.exists():
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.touch()
                os._exit(1)


@dataclass
class WorkerSetup:
    """Everything a worker needs besides the model and the probe gradients (plain, picklable)."""

    corpus: str
    batch_size: int  # rows per training step (step = row_id // batch_size)
    heads: list[HeadRef]
    mode: str
    seed: int  # label-sampling seed of the EK-FAC fit
    batch_rows: int
    device: str = "cpu"
    vocab_size: int | None = None  # token ids must be below it
    shard_meta: dict = field(default_factory=dict)  # written into every shard's Parquet metadata
    faults: FaultPlan = field(default_factory=FaultPlan)
    threads: int = 1
    statistic: RowStatistic | None = None  # a method without a probe (`pipelines.score_methods`): it scores the rows
    token_aggregate: str = "sum"  # how a row's per-position contributions form its score (`attribution.token_aggregation`)


class ScoreWorker(ScoringWorker):
    """A Ray actor's `ScoringWorker`: loads the model, the corpus (memory-mapped) and, once known, the
    preconditioned probe gradients once; writes each scored shard to its file."""

    def __init__(self, setup: WorkerSetup, model: nn.Module, preconditioned: dict[HeadRef, HeadBlocks] | None = None) -> None:
        torch.set_num_threads(max(1, int(setup.threads)))
        self.setup = setup
        model = model.to(torch.device(setup.device))
        model.eval()
        corpus = open_corpus(setup.corpus, batch_size=setup.batch_size)
        heads = list(setup.heads)
        super().__init__(model, corpus, heads, setup.mode, setup.seed, setup.batch_rows, setup.vocab_size, setup.shard_meta,
                         setup.statistic, setup.token_aggregate)
        if preconditioned is not None:
            self.load_probe(preconditioned)

    def pid(self) -> int:
        return os.getpid()

    def score_shard(self, start: int, stop: int, path: str) -> dict:
        """Score rows [start, stop) and write them atomically to `path`; returns rows, sha256, wall and CPU seconds."""
        self.setup.faults.before_shard(int(start))
        t0, c0 = time.perf_counter(), time.process_time()
        table = self.score_rows(int(start), int(stop))
        table.to_parquet(path)
        return {"rows": len(table), "sha256": file_sha256(Path(path)), "seconds": time.perf_counter() - t0,
                "cpu_seconds": time.process_time() - c0, "pid": os.getpid(), "node": _node_id()}


def _node_id() -> str:
    """The Ray node this actor runs on ("" outside Ray)."""
    try:
        import ray

        return str(ray.get_runtime_context().get_node_id() or "")
    except Exception:  # not in a Ray worker
        return ""
