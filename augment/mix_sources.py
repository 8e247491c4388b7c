"""Where a mix's added rows come from: window rows (the top rows duplicated, or seeded random rows for the
control), structural neighbours of the top rows from a pool (its structure index), or synthetic rows (a
`curate synth` corpus given as the pool, or generated from the top rows' motifs into the mix folder)."""
from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from curate.attribution.scores_folder import ScoresFolder, Window
from curate.augment.checksums import file_input, rows_input, rows_sha256
from curate.augment.index import INDEX_SUBDIR, IndexParams, build_index, load_index
from curate.augment.mix_spec import SEED_ADD, SEED_ORDER, MixSpec
from curate.augment.motifs import mine_motifs, vocab_classes
from curate.augment.synth import corpus_tokenizer, write_synthetic_corpus
from curate.corpus import Corpus, open_corpus, same_corpus
from curate.errors import CurateError

SYNTH_DIR = "synthetic"  # generated rows, inside the mix folder


@dataclass
class Added:
    """The rows to add, in insertion order: from `corpus` (named `plan_corpus` in plan.json and provenance)."""

    corpus: Corpus
    plan_corpus: str
    rows: np.ndarray  # int64 row ids in `corpus`
    reason: str
    scores: np.ndarray  # float64 per row (NaN where the row has no score)
    inputs: dict = field(default_factory=dict)  # extra manifest inputs
    info: dict = field(default_factory=dict)  # extra manifest fields


def added_rows(
    spec: MixSpec, scores: ScoresFolder, base: Corpus, base_name: str, window: Window, ranked: np.ndarray,
    values: np.ndarray, n_add: int, tmp: Path,
) -> Added | None:
    """The `n_add` rows the mix adds (None when it adds none), from the source the spec names."""
    if n_add == 0:
        return None
    if spec.control == "random":
        rel = np.random.default_rng([spec.seed, SEED_ADD]).choice(window.rows, size=n_add, replace=False)
        return window_rows(base, window, rel, values, "random", base_name)
    if spec.source == "top":
        rel = ranked[:n_add][np.random.default_rng([spec.seed, SEED_ORDER]).permutation(n_add)]
        return window_rows(base, window, rel, values, "duplicate", base_name)
    if spec.source == "neighbors":
        return neighbor_rows(spec, scores, base, base_name, window, ranked, n_add)
    return synthetic_rows(spec, base, base_name, window, ranked, values, n_add, tmp)


def window_rows(base: Corpus, window: Window, rel: np.ndarray, values: np.ndarray, reason: str, base_name: str) -> Added:
    """Window rows (window-relative `rel`) added again, with their scores."""
    rel = np.asarray(rel, dtype=np.int64)
    return Added(base, base_name, rel + window.first_row, reason, values[rel])


def neighbor_rows(
    spec: MixSpec, scores: ScoresFolder, base: Corpus, base_name: str, window: Window, ranked: np.ndarray, need: int
) -> Added:
    """`need` structural neighbours of the top rows from the pool (its structure index), window rows excluded."""
    pool = Path(spec.pool) if spec.pool is not None else None
    default_index = scores.path / INDEX_SUBDIR
    inputs: dict = {}
    with tempfile.TemporaryDirectory(prefix="curate-pool-index-") as scratch:
        if pool is not None and (pool / "index.json").is_file():
            index = load_index(pool)
            pool_name = str(index.info["corpus"])
        elif pool is None and (default_index / "index.json").is_file():
            index = load_index(default_index)
            pool_name = str(index.info["corpus"])
        else:
            target = open_corpus(pool) if pool is not None else base
            pool_name = str(pool.resolve()) if pool is not None else base_name
            build_index(target, Path(scratch) / "index", params=IndexParams(seed=spec.seed))
            index = load_index(Path(scratch) / "index")
        if not Path(index.folder).resolve().is_relative_to(Path(scratch).resolve()):
            inputs["pool_index"] = file_input(index.folder / "index.faiss")
        pool_corpus = index.corpus()
        if pool_corpus.row_len != base.row_len:
            raise CurateError(f"pool {pool_corpus.path}: rows of {pool_corpus.row_len} tokens, the scored corpus has {base.row_len}")
        same = same_corpus(pool_corpus, base)
        pool_name = base_name if same else pool_name
        q = ranked[: min(spec.top, len(ranked))] + window.first_row
        query_rows = base.take(q)
        indexed = int(index.info.get("num_rows", pool_corpus.num_rows))
        k = min(indexed, max(8, math.ceil(2 * need / max(len(q), 1))))
        while True:
            _, ids = index.neighbors_of_rows(query_rows, k=k)
            flat = ids.T.ravel()  # neighbour rank 1 of every query, then rank 2, ...
            ok = flat >= 0
            if same:
                ok &= (flat < window.first_row) | (flat >= window.stop_row)
            flat = flat[ok]
            uniq, first = np.unique(flat, return_index=True)
            chosen = uniq[np.argsort(first, kind="stable")]
            if len(chosen) >= need or k >= indexed:
                break
            k = min(indexed, 2 * k)
    if len(chosen) < need:
        where = "outside the window " if same else ""
        raise CurateError(
            f"pool {pool_corpus.path}: only {len(chosen)} distinct neighbour rows {where}found for the top rows; {need} rows are to be added"
        )
    rows = chosen[:need].astype(np.int64)
    rng = np.random.default_rng([spec.seed, SEED_ORDER])
    rows = rows[rng.permutation(need)]
    inputs["pool_rows"] = rows_input(pool_corpus, rows_sha256(pool_corpus, ids=rows), ids=rows, path=pool_name)
    return Added(
        pool_corpus,
        pool_name,
        rows,
        "neighbor",
        np.full(need, np.nan),
        inputs,
        {"query_rows": int(len(q)), "neighbors_per_query": int(k), "pool_is_scored_corpus": same},
    )


def synthetic_rows(
    spec: MixSpec, base: Corpus, base_name: str, window: Window, ranked: np.ndarray, values: np.ndarray, need: int, tmp: Path
) -> Added:
    """`need` synthetic rows: from `--pool` (rows 0..need-1 of a `curate synth` corpus) or generated into tmp/synthetic."""
    if spec.pool is not None:
        pool = open_corpus(spec.pool)
        if pool.row_len != base.row_len:
            raise CurateError(f"pool {spec.pool}: rows of {pool.row_len} tokens, the scored corpus has {base.row_len}")
        if pool.num_rows < need:
            raise CurateError(f"pool {spec.pool}: {pool.num_rows} synthetic rows, {need} are to be added")
        rows = np.arange(need, dtype=np.int64)
        name = str(Path(spec.pool).resolve())
        inputs = {"pool_rows": rows_input(pool, rows_sha256(pool, row_range=(0, need)), row_range=(0, need), path=name)}
        return Added(pool, name, rows, "synthetic", np.full(need, np.nan), inputs)
    tokenizer = corpus_tokenizer(base)
    top = ranked[: min(spec.top, len(ranked))]
    motif_ids = top + window.first_row
    vc = vocab_classes(tokenizer)
    motifs = mine_motifs(base.take(motif_ids), motif_ids, values[top], tokenizer, vc)
    folder = tmp / SYNTH_DIR
    folder.mkdir()
    summary = write_synthetic_corpus(folder, motifs, need, tokenizer, base.row_len, window.batch_size, spec.seed, base_name, vc)
    synth = open_corpus(folder)
    inputs = {"motif_rows": rows_input(base, rows_sha256(base, ids=motif_ids), ids=motif_ids, path=base_name)}
    info = {"synthetic": {k: summary[k] for k in ("mined", "generated")}}
    return Added(synth, SYNTH_DIR, np.arange(need, dtype=np.int64), "synthetic", np.full(need, np.nan), inputs, info)
