"""The scoring driver: fit EK-FAC factors -> precondition the probe gradients -> score rows (kronfluence's
phases), run by one of two executors that share one factor cache.

- `ScoringDriver.fit_factors`: cached heads are loaded (`attribution.factors_io`); the missing ones are fitted
  in two passes: the executor returns covariance partial sums of the fit-row chunks, the driver merges them in
  chunk order and finalizes the eigenbases, the executor returns eigenvalue partial sums in those bases, the
  driver merges and finalizes them; the fresh factors are saved.
- `ScoringDriver.precondition`: the probe gradients, preconditioned once (`EKFACFactors.precondition`).
- `ScoringDriver.score`: the executor scores the row shards.

The curvature is EK-FAC (the MDA score) or the identity (`curvature="identity"`: the gradient-dot baseline,
no fit, the probe gradients used as they are; `ScoringDriver.fit_curvature`). A method that needs no probe
(a `RowStatistic`, e.g. `row_loss`) skips fit and precondition: the workers score shards with it alone.

The executors do the per-row work with the same `ScoringWorker` code on the same chunks: `InProcessExecutor`
here, the Ray executor (`curate.pipelines.ray_executor.RayExecutor`) on a pool of actors. Whichever runs a job,
the factors, and so the scores, are bit-identical, and a factor cache one wrote serves the other.
Chunks: the fit rows in runs of `chunk_rows` (None: one chunk); the summation order of the fit follows them.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Generic, Protocol, Sequence, TypeVar

import numpy as np
import torch
from torch import nn

from curate.attribution.circuits import get_circuit
from curate.attribution.ekfac import (
    DEFAULT_DAMPING, DEFAULT_DAMPING_FLOOR, CovarianceAccumulator, EigenBases, EKFACFactors, EKFACFitter, IdentityCurvature,
    LambdaAccumulator,
)
from curate.attribution.factors_io import load_factors, save_factors
from curate.attribution.fingerprint import model_fingerprint
from curate.attribution.heads import HeadBlocks, HeadGeometry, HeadRef, check_mode
from curate.attribution.influence import (
    HeadInfluenceScorer, BoundProbe, Progress, circuit_probe, fit_data_key, fit_row_ids, iter_row_batches,
    probe_gradients,
)
from curate.attribution.probes import corpus_probes
from curate.attribution.metrics import first_candidate_layer
from curate.attribution.score_table import ScoreTable
from curate.attribution.trace import mean_token_loss
from curate.errors import CurateError

T = TypeVar("T", covariant=True)
OnRows = Callable[[int], None]
"""on_rows(n): n more rows done (progress)."""
RowStatistic = Callable[[nn.Module, np.ndarray], "tuple[np.ndarray, np.ndarray]"]
"""A score that needs no probe: (model, token rows (n, row_len)) -> (mean token loss (n,), NaN where the model is
not run; score (n,)). A module-level function, so that Ray can ship it to the actors."""
CURVATURES = ("ekfac", "identity")
"""What the probe gradients are preconditioned with: the EK-FAC inverse (MDA) or the identity (gradient-dot)."""


def row_loss(model: nn.Module, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The `loss` method: score = the row's mean next-token loss under the model, as the float32 `loss` column
    holds it (higher loss, higher score)."""
    loss = mean_token_loss(model, rows).float().cpu().numpy()
    return loss, loss.astype(np.float64)


def work_dtype(model: nn.Module) -> torch.dtype:
    """Factors and dot products in float32, or float64 for a float64 model."""
    return torch.float64 if next(model.parameters()).dtype == torch.float64 else torch.float32


def split_rows(ids: np.ndarray, size: int | None) -> list[np.ndarray]:
    """`ids` in consecutive runs of `size` (None: one run)."""
    ids = np.asarray(ids, dtype=np.int64)
    if size is None or size >= len(ids):
        return [ids]
    return [ids[a : a + size] for a in range(0, len(ids), size)]


def row_shards(rows: tuple[int, int], size: int | None) -> list[tuple[int, int]]:
    """Row range [a, b) in shards of `size` rows from a (the last may be shorter; None: one shard)."""
    a, b = rows
    if size is None:
        return [(a, b)]
    return [(s, min(s + size, b)) for s in range(a, b, size)]


# --------------------------------------------------------------------------- the per-row work


class ScoringWorker:
    """A model and a corpus: EK-FAC partial sums of row chunks and scores of row shards (one per Ray actor, or
    one in this process)."""

    def __init__(
        self,
        model: nn.Module,
        corpus,
        heads: Sequence[HeadRef],
        mode: str,
        seed: int,
        batch_rows: int,
        vocab_size: int | None = None,
        shard_meta: dict | None = None,
        statistic: RowStatistic | None = None,
        token_aggregate: str = "sum",
    ) -> None:
        self.model = model
        self.corpus = corpus
        self.heads = list(heads)
        self.mode = mode
        self.seed = int(seed)
        self.batch_rows = int(batch_rows)
        self.vocab_size = vocab_size
        self.shard_meta = dict(shard_meta or {})
        self.dtype = work_dtype(model)
        self._fitters: dict[tuple[HeadRef, ...], EKFACFitter] = {}
        self.scorer: HeadInfluenceScorer | None = None
        self.statistic = statistic  # set: rows are scored by it, with no probe and no head columns
        self.token_aggregate = token_aggregate  # how a row's per-position contributions form its score

    def batches(self, ids: np.ndarray):
        """(row ids, rows) batches of `ids`; a token id outside the vocabulary (when known) is an error."""
        vocab = self.vocab_size
        for chunk, rows in iter_row_batches(self.corpus, np.asarray(ids, dtype=np.int64), self.batch_rows):
            if vocab is not None and rows.size and int(rows.max()) >= vocab:
                r, c = np.argwhere(np.asarray(rows) >= vocab)[0]
                raise CurateError(
                    f"{self.corpus.path}: token id {int(rows[r, c])} at row {int(chunk[r])} is outside the model's vocabulary (size {vocab})"
                )
            yield chunk, rows

    def _fitter(self, heads: Sequence[HeadRef]) -> EKFACFitter:
        key = tuple(heads)
        if key not in self._fitters:
            self._fitters[key] = EKFACFitter(self.model, list(heads), self.mode, seed=self.seed, dtype=self.dtype)
        return self._fitters[key]

    def fit_covariance(self, heads: Sequence[HeadRef], ids: np.ndarray, on_rows: OnRows | None = None) -> dict:
        """Pass 1 partial sums of `heads` over rows `ids` (a fresh accumulator: the result depends on `ids` only)."""
        acc = self._fitter(heads).covariance_accumulator()
        for chunk, rows in self.batches(ids):
            acc.update(rows, chunk)
            if on_rows:
                on_rows(len(chunk))
        return acc.state_dict()

    def fit_lambda(self, heads: Sequence[HeadRef], bases_state: dict, ids: np.ndarray, on_rows: OnRows | None = None) -> dict:
        """Pass 2 partial sums over rows `ids` in the eigenbases the driver finalized (returned without the bases)."""
        acc = self._fitter(heads).lambda_accumulator(EigenBases.from_state(bases_state))
        for chunk, rows in self.batches(ids):
            acc.update(rows, chunk)
            if on_rows:
                on_rows(len(chunk))
        state = acc.state_dict()
        state.pop("bases", None)  # the driver has them; do not ship them back
        return state

    def load_probe(self, preconditioned: dict[HeadRef, HeadBlocks] | None) -> None:
        """Build the scorer from the preconditioned probe gradients (once per worker; None: a `statistic` scores)."""
        if self.scorer is None and preconditioned is not None:
            self.scorer = HeadInfluenceScorer(self.model, None, preconditioned, self.heads, self.mode, dtype=self.dtype,
                                              token_aggregate=self.token_aggregate)

    def score_rows(self, start: int, stop: int, on_rows: OnRows | None = None) -> ScoreTable:
        """Scores of rows [start, stop) (batches of `batch_rows` from `start`)."""
        if self.scorer is None and self.statistic is None:
            raise CurateError("worker has no probe gradients (load_probe was not called)")
        ids, losses, scores, norms = [], [], [], []
        for chunk, rows in self.batches(np.arange(start, stop, dtype=np.int64)):
            if self.statistic is not None:
                loss, s = self.statistic(self.model, np.asarray(rows))
            else:
                assert self.scorer is not None
                loss, s, norm = self.scorer.score_batch_with_norms(rows)
                norms.append(norm)
            ids.append(chunk)
            losses.append(loss)
            scores.append(s)
            if on_rows:
                on_rows(len(chunk))
        row_id = np.concatenate(ids)
        meta = {**self.shard_meta, "rows": [int(start), int(stop)]}
        step = row_id // int(self.corpus.batch_size)
        if self.statistic is not None:
            return ScoreTable(row_id, step, np.concatenate(losses), np.zeros((len(row_id), 0)), [], meta, np.concatenate(scores))
        return ScoreTable(row_id, step, np.concatenate(losses), np.concatenate(scores), self.heads, meta, None, np.concatenate(norms))


# --------------------------------------------------------------------------- executors


class Executor(Protocol[T]):
    """Runs the per-row work of the three phases; results come back in the order of `chunks` / `shards`."""

    def fit_covariance(self, heads: list[HeadRef], chunks: list[np.ndarray]) -> list[dict]: ...

    def fit_lambda(self, heads: list[HeadRef], bases_state: dict, chunks: list[np.ndarray]) -> list[dict]: ...

    def score_shards(self, preconditioned: dict[HeadRef, HeadBlocks] | None, shards: list[tuple[int, int]]) -> list[T]: ...


class InProcessExecutor:
    """Runs every chunk and shard in this process, one after the other; `progress(phase, done, total)`."""

    def __init__(self, worker: ScoringWorker, progress: Progress | None = None) -> None:
        self.worker = worker
        self.progress = progress

    def _counter(self, phase: str, total: int) -> OnRows:
        done = 0

        def on_rows(n: int) -> None:
            nonlocal done
            done += n
            if self.progress:
                self.progress(phase, done, total)

        return on_rows

    def fit_covariance(self, heads: list[HeadRef], chunks: list[np.ndarray]) -> list[dict]:
        on_rows = self._counter("fit covariances", sum(len(c) for c in chunks))
        return [self.worker.fit_covariance(heads, c, on_rows) for c in chunks]

    def fit_lambda(self, heads: list[HeadRef], bases_state: dict, chunks: list[np.ndarray]) -> list[dict]:
        on_rows = self._counter("fit eigenvalues", sum(len(c) for c in chunks))
        return [self.worker.fit_lambda(heads, bases_state, c, on_rows) for c in chunks]

    def score_shards(self, preconditioned: dict[HeadRef, HeadBlocks] | None, shards: list[tuple[int, int]]) -> list[ScoreTable]:
        self.worker.scorer = None
        self.worker.load_probe(preconditioned)
        on_rows = self._counter("score", sum(b - a for a, b in shards))
        return [self.worker.score_rows(a, b, on_rows) for a, b in shards]


# --------------------------------------------------------------------------- the driver


@dataclass(frozen=True)
class FactorFit:
    """What the EK-FAC factors are fitted on and with: fit rows, their cache key, damping, chunking."""

    fit_ids: np.ndarray
    data_key: str  # `influence.fit_data_key`: corpus, fit rows, label seed
    damping: float = DEFAULT_DAMPING
    damping_floor: float = DEFAULT_DAMPING_FLOOR
    chunk_rows: int | None = None  # fit rows per partial sum (None: one)


@dataclass
class ScoringDriver(Generic[T]):
    """fit -> precondition -> score for `heads` of `model`, the per-row work done by `executor`."""

    executor: Executor[T]
    model: nn.Module
    heads: list[HeadRef]
    mode: str
    fit: FactorFit
    cache_dir: Path | None = None  # the factor cache (None: no cache)
    model_fp: str | None = None  # the model's fingerprint (computed when a cache needs it)
    curvature: str = "ekfac"  # one of CURVATURES
    fitted: bool = field(default=False, init=False)  # whether the last fit_factors fitted any head
    seconds_fit: float = field(default=0.0, init=False)

    def fit_factors(self) -> EKFACFactors:
        """The factors of every head: the cached ones loaded, the missing ones fitted (both passes) and saved."""
        t0 = time.perf_counter()
        fit = self.fit
        if self.cache_dir is not None:
            if self.model_fp is None:
                self.model_fp = model_fingerprint(self.model)
            cached, missing = load_factors(self.cache_dir, self.heads, self.mode, self.model_fp, fit.damping, fit.damping_floor, fit.data_key)
        else:
            cached, missing = EKFACFactors(self.mode, {}, fit.damping, fit.damping_floor), list(self.heads)
        self.fitted = bool(missing)
        if not missing:
            self.seconds_fit = time.perf_counter() - t0
            return cached
        chunks = split_rows(fit.fit_ids, fit.chunk_rows)
        cov_states = self.executor.fit_covariance(missing, chunks)
        cov = CovarianceAccumulator.from_state(cov_states[0])
        for state in cov_states[1:]:
            cov.merge(CovarianceAccumulator.from_state(state))
        bases_state = cov.finalize().state_dict()
        lam_states = self.executor.fit_lambda(missing, bases_state, chunks)
        lam = LambdaAccumulator.from_state({**lam_states[0], "bases": bases_state})
        for state in lam_states[1:]:
            lam.merge(LambdaAccumulator.from_state({**state, "bases": bases_state}))
        fresh = lam.finalize(fit.damping, fit.damping_floor)
        if self.cache_dir is not None:
            assert self.model_fp is not None
            save_factors(self.cache_dir, fresh, self.model_fp, fit.data_key)
        self.seconds_fit = time.perf_counter() - t0
        return cached.merged_with(fresh).subset(self.heads)

    def fit_curvature(self) -> "EKFACFactors | IdentityCurvature":
        """The curvature the probe gradients are preconditioned with: the EK-FAC factors (`fit_factors`), or the
        identity (nothing fitted, nothing cached)."""
        if self.curvature not in CURVATURES:
            raise CurateError(f"curvature {self.curvature!r}: expected one of {', '.join(CURVATURES)}")
        if self.curvature == "identity":
            self.fitted, self.seconds_fit = False, 0.0
            return IdentityCurvature(self.mode)
        return self.fit_factors()

    def precondition(self, factors: "EKFACFactors | IdentityCurvature", probe: BoundProbe, shared: bool = False) -> dict[HeadRef, HeadBlocks]:
        """H^-1 grad f_probe of every head, computed once."""
        grads = probe_gradients(self.model, probe, self.heads, self.mode, shared=shared)
        return factors.precondition(grads)

    def score(self, preconditioned: dict[HeadRef, HeadBlocks] | None, shards: list[tuple[int, int]]) -> list[T]:
        """Score the shards: against the preconditioned probe gradients, or (None) with the workers' statistic."""
        return self.executor.score_shards(preconditioned, shards)


# --------------------------------------------------------------------------- in process, end to end


def fit_factors(
    model: nn.Module,
    corpus,
    fit_ids: np.ndarray,
    heads: Sequence[HeadRef],
    mode: str,
    batch_rows: int = 8,
    seed: int = 0,
    damping: float = DEFAULT_DAMPING,
    floor: float = DEFAULT_DAMPING_FLOOR,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
    chunk_rows: int | None = None,
) -> EKFACFactors:
    """EK-FAC factors of `heads` fitted in this process on corpus rows `fit_ids` (cached heads loaded, the rest
    fitted and saved)."""
    heads = HeadGeometry.of(model).check(heads)
    worker = ScoringWorker(model, corpus, heads, mode, seed, batch_rows)
    fit = FactorFit(np.asarray(fit_ids, dtype=np.int64), fit_data_key(corpus, fit_ids, seed), damping, floor, chunk_rows)
    return ScoringDriver(InProcessExecutor(worker, progress), model, heads, mode, fit, cache_dir).fit_factors()


def score_corpus(
    model: nn.Module,
    corpus,
    row_range: tuple[int, int] | None = None,
    circuit: "str | object" = "induction",
    heads: Sequence[HeadRef] | None = None,
    mode: str = "qk",
    batch_rows: int = 8,
    fit_rows: int | None = None,
    progress: Progress | None = None,
    device: "str | torch.device" = "cpu",
    *,
    seed: int = 0,
    probes: torch.Tensor | None = None,
    damping: float = DEFAULT_DAMPING,
    damping_floor: float = DEFAULT_DAMPING_FLOOR,
    factor_cache: Path | None = None,
    threads: int | None = None,
    shard_rows: int | None = None,
    curvature: str = "ekfac",
    statistic: RowStatistic | None = None,
    token_aggregate: str = "sum",
) -> ScoreTable:
    """Fit EK-FAC on the window (or `fit_rows` rows sampled from it with `seed`), precondition the circuit's
    probe gradients once per head, and score every row of `row_range` (default: whole corpus), in this process.

    `curvature="identity"`: no fit, the raw probe gradients (the gradient-dot baseline). `statistic`: no fit and
    no probe, every row scored by it (a table without head columns). `token_aggregate`: how a row's per-position
    contributions form its score (`attribution.token_aggregation`: sum or positive).

    The model is moved to `device`. Heads default to every head of layers >= 1 (induction) or all heads.
    `shard_rows` (a multiple of `batch_rows`): fit rows per partial sum and rows per scored shard, as the Ray
    pipeline's shards (then the factors are bit-identical to its); None: one of each.
    """
    if threads:
        torch.set_num_threads(int(threads))
    check_mode(mode)
    circ = get_circuit(circuit) if isinstance(circuit, str) else circuit
    model.to(torch.device(device))
    geo = HeadGeometry.of(model)
    if heads is None:
        heads = geo.all_heads(min_layer=first_candidate_layer(circ.metric, geo.num_layers))
    heads = geo.check(heads)
    start, stop = (0, corpus.num_rows) if row_range is None else (int(row_range[0]), int(row_range[1]))
    if not (0 <= start < stop <= corpus.num_rows):
        raise CurateError(f"row range [{start}, {stop}) is empty or outside the corpus (0..{corpus.num_rows})")
    if corpus.row_len - 1 > int(getattr(model.config, "max_position_embeddings", corpus.row_len)):
        raise CurateError(
            f"{corpus.path}: rows of {corpus.row_len} tokens exceed the model's context ({model.config.max_position_embeddings} + 1)"
        )
    if batch_rows < 1:
        raise CurateError(f"rows per batch must be at least 1 (got {batch_rows})")
    if fit_rows is not None and fit_rows < 1:
        raise CurateError(f"the EK-FAC fit needs at least 1 row (got {fit_rows})")
    if shard_rows is not None and (shard_rows < 1 or shard_rows % batch_rows):
        raise CurateError(f"rows per shard ({shard_rows}) must be a positive multiple of the rows per batch ({batch_rows})")
    fit_ids = fit_row_ids((start, stop), fit_rows, seed)

    worker = ScoringWorker(model, corpus, heads, mode, seed, batch_rows, statistic=statistic, token_aggregate=token_aggregate)
    fit = FactorFit(fit_ids, fit_data_key(corpus, fit_ids, seed), damping, damping_floor, shard_rows)
    driver = ScoringDriver(InProcessExecutor(worker, progress), model, heads, mode, fit, factor_cache, curvature=curvature)
    if probes is None:
        probes = corpus_probes(model.config, corpus, seed=seed)
    preconditioned = None
    if statistic is None:
        factors = driver.fit_curvature()
        probe_fn, shared = circuit_probe(circ, probes)
        preconditioned = driver.precondition(factors, probe_fn, shared)
    t1 = time.perf_counter()
    tables = driver.score(preconditioned, row_shards((start, stop), shard_rows))
    t_score = time.perf_counter() - t1
    meta = {
        "circuit": circ.name,
        "mode": mode,
        "heads": [str(h) for h in heads],
        "row_range": [start, stop],
        "fit_rows": int(len(fit_ids)),
        "seed": int(seed),
        "damping": float(damping),
        "damping_floor": float(damping_floor),
        "probes": list(probes.shape),
        "curvature": curvature if statistic is None else None,
        **({"token_aggregate": token_aggregate} if token_aggregate != "sum" else {}),
        "batch_size": int(corpus.batch_size),
        "seconds_fit": round(driver.seconds_fit, 3),
        "seconds_score": round(t_score, 3),
    }
    table = ScoreTable.concat(tables)
    if statistic is not None:
        return ScoreTable(table.row_id, table.step, table.loss, table.head_scores, [], meta, table.score)
    return ScoreTable(table.row_id, table.step, table.loss, table.head_scores, list(heads), meta, None, table.grad_norms)


__all__ = [
    "CURVATURES",
    "Executor",
    "FactorFit",
    "InProcessExecutor",
    "RowStatistic",
    "ScoringDriver",
    "ScoringWorker",
    "fit_factors",
    "row_loss",
    "row_shards",
    "score_corpus",
    "split_rows",
    "work_dtype",
]
