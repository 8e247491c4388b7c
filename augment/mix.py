"""`build-mix`: the attribution window re-ordered as an intervention (top rows removed, rows added) or its
random control, written so that any trainer sees exactly the planned row order.

Semantics are those of `training.plan` (so `plan.json` resolves to the same stream): the kept window rows
keep their order; each added row has an anchor, a position among the kept rows, and sits right before
the kept row at its anchor. Spread evenly: the j-th of A added rows anchors at floor(j * S * B / A) with
S = kept rows // B whole steps (the plan's `"steps": [start, start + S]`); `--at-step N`: all at
(N - start) * B (the plan's `"step": N`).

Output folder (built in a temporary folder, renamed at the end): `mix.bin`/`mix.idx` (the rows in their
new order), `provenance.parquet` (row_id = new position, step = start + row_id // B, source_corpus,
source_row_id, reason, score, then every label column of the source rows' sidecars, such as `domain` or `source`,
null where a row's source has none; `curate.labels`), `plan.json` (drop/insert on the scored corpus, for `curate train --plan`),
`corpus.json` (so `open_corpus(MIX)` works), `tokenizer.json`, `synthetic/` (generated rows, when used)
and `manifest.json` (inputs with checksums, parameters, counts, output checksums).
"""
from __future__ import annotations

import json
import math
import re
import shutil
import tempfile
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from curate.amounts import parse_amount
from curate.attribution.score_table import top_indices
from curate.attribution.scores_folder import ScoresFolder, Window, open_scored_corpus, open_scores, read_window
from curate.augment.checksums import RowHasher, file_input, rows_input, rows_sha256, write_manifest
from curate.augment.mix_spec import CHUNK_ROWS, CONTROLS, SOURCES, MixSpec  # the spec lives apart: the CLI imports it at start-up
from curate.atomic import atomic_dir, atomic_path, write_json
from curate.outputs import MIX, check_output_folder
from curate.corpus import METADATA_FILE, Corpus, CorpusMeta, open_corpus
from curate.errors import CurateError
from curate.labels import label_columns, read_labels
from curate.paths import portable
from curate.megatron import MegatronWriter, token_dtype_for_vocab
from curate.parquet_io import write_table_parquet

REASONS = ("kept", "duplicate", "neighbor", "synthetic", "random")
DATA_PREFIX = "mix"
PROVENANCE_FILE = "provenance.parquet"
PROVENANCE_COLUMNS = ("row_id", "step", "source_corpus", "source_row_id", "reason", "score")
PLAN_FILE = "plan.json"
SYNTH_DIR = "synthetic"
TOKENIZER_FILE = "tokenizer.json"
INDEX_SUBDIR = "index"  # where `curate index` puts a scores folder's structure index

# seed streams: one per random choice, so changing one option never shifts another choice
_SEED_REMOVE, _SEED_ADD, _SEED_ORDER = 1, 2, 3


def window_scores(scores: ScoresFolder, window: Window) -> np.ndarray:
    """Aggregate score of each window row (window-relative index), NaN where unscored; streamed shard by shard."""
    values = np.full(window.rows, np.nan, dtype=np.float64)
    seen = np.zeros(window.rows, dtype=bool)
    for f in scores.shards:
        import pyarrow.parquet as pq

        table = pq.read_table(f, columns=["row_id", "score"])
        ids = table.column("row_id").to_numpy().astype(np.int64)
        vals = table.column("score").to_numpy(zero_copy_only=False).astype(np.float64)
        outside = (ids < window.first_row) | (ids >= window.stop_row)
        if outside.any():
            raise CurateError(
                f"{f}: row {int(ids[outside][0])} is outside the window's rows [{window.first_row}, {window.stop_row}) "
                f"(steps {window.start_step}-{window.end_step} x {window.batch_size})"
            )
        bad = ~np.isfinite(vals)
        if bad.any():
            raise CurateError(f"{f}: row {int(ids[bad][0])} has a non-finite score ({vals[bad][0]})")
        rel = ids - window.first_row
        uniq, counts = np.unique(rel, return_counts=True)
        if (counts > 1).any() or seen[rel].any():
            dup = uniq[counts > 1][0] if (counts > 1).any() else rel[seen[rel]][0]
            raise CurateError(f"{f}: row {int(dup) + window.first_row} is scored more than once")
        seen[rel] = True
        values[rel] = vals
    return values


def rank_rows(values: np.ndarray) -> np.ndarray:
    """Indices of the scored entries, highest score first, ties by lower index."""
    scored = np.flatnonzero(~np.isnan(values))
    return scored[top_indices(values[scored], scored)]


# ---- where added rows come from -------------------------------------------------------------------
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


def _same_corpus(a: Corpus, b: Corpus) -> bool:
    return Path(a.path).resolve() == Path(b.path).resolve()


def _window_rows(base: Corpus, window: Window, rel: np.ndarray, values: np.ndarray, reason: str, base_name: str) -> Added:
    rel = np.asarray(rel, dtype=np.int64)
    return Added(base, base_name, rel + window.first_row, reason, values[rel])


def _neighbor_rows(
    spec: MixSpec, scores: ScoresFolder, base: Corpus, base_name: str, window: Window, ranked: np.ndarray, need: int
) -> Added:
    """`need` structural neighbours of the top rows from the pool (its structure index), window rows excluded."""
    from curate.augment.index import IndexParams, build_index, load_index

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
        same = _same_corpus(pool_corpus, base)
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
    rng = np.random.default_rng([spec.seed, _SEED_ORDER])
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


def _synthetic_rows(
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
    from curate.augment.motifs import mine_motifs, vocab_classes
    from curate.augment.synth import corpus_tokenizer, write_synthetic_corpus

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


# ---- placement ------------------------------------------------------------------------------------
def placement(added: int, kept: int, window: Window, at_step: int | None) -> tuple[np.ndarray, dict]:
    """Anchors (positions among the kept rows) of the added rows, and the plan's `step`/`steps` field."""
    b = window.batch_size
    if at_step is not None:
        if not window.start_step <= at_step < window.end_step:
            raise CurateError(f"at step {at_step}: outside the window (steps {window.start_step} to {window.end_step - 1})")
        rel = (at_step - window.start_step) * b
        if rel > kept:
            raise CurateError(
                f"at step {at_step}: after the removal only {kept} window rows remain, which end before step {at_step}"
            )
        return np.full(added, rel, dtype=np.int64), {"step": int(at_step)}
    steps = kept // b
    if steps < 1:
        raise CurateError(f"after the removal only {kept} window rows remain, less than one step of {b}: nothing to spread over")
    anchors = (np.arange(added, dtype=np.int64) * steps * b) // added
    return anchors, {"steps": [window.start_step, window.start_step + steps]}


def copy_runs(dst: np.ndarray, dst_rows: np.ndarray, src: np.ndarray, src_rows: np.ndarray) -> None:
    """dst[dst_rows[i]] = src[src_rows[i]], one slice copy per run that is consecutive on both sides."""
    if len(dst_rows) == 0:
        return
    breaks = np.flatnonzero((np.diff(src_rows) != 1) | (np.diff(dst_rows) != 1)) + 1
    starts = np.concatenate([[0], breaks]).tolist()
    ends = np.concatenate([breaks, [len(dst_rows)]]).tolist()
    for s, e in zip(starts, ends):
        d, r = int(dst_rows[s]), int(src_rows[s])
        dst[d : d + e - s] = src[r : r + e - s]


def merge_positions(anchors: np.ndarray, kept: int) -> tuple[np.ndarray, np.ndarray]:
    """Output positions of the kept rows and of the added rows (each added row right before the kept row at its anchor)."""
    ins_pos = anchors + np.arange(len(anchors), dtype=np.int64)
    base_pos = np.arange(kept, dtype=np.int64) + np.searchsorted(anchors, np.arange(kept, dtype=np.int64), side="right")
    return base_pos, ins_pos


# ---- the build ------------------------------------------------------------------------------------
class BackgroundHashing:
    """Feeds row blocks to `RowHasher`s, each on its own background thread (hashlib releases the GIL while
    hashing), in submission order, at most `depth` blocks behind the writer per hasher."""

    def __init__(self, depth: int = 4) -> None:
        self.depth = depth
        self.workers: dict[int, tuple[ThreadPoolExecutor, deque[Future]]] = {}

    def __enter__(self) -> "BackgroundHashing":
        return self

    def submit(self, hasher: RowHasher, rows: np.ndarray) -> None:
        if id(hasher) not in self.workers:
            self.workers[id(hasher)] = (ThreadPoolExecutor(max_workers=1, thread_name_prefix="curate-hash"), deque())
        pool, pending = self.workers[id(hasher)]
        pending.append(pool.submit(hasher.update, rows))
        while len(pending) > self.depth:
            pending.popleft().result()

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                for _, pending in self.workers.values():
                    while pending:
                        pending.popleft().result()
        finally:
            for pool, _ in self.workers.values():
                pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class MixResult:
    out: Path
    counts: dict
    manifest: dict


def default_slug(spec: MixSpec) -> str:
    """A folder name that says what the mix is, e.g. `remove10pct-augment2pct-top-seed0`."""
    def amount(v: str) -> str:
        return re.sub(r"[^0-9A-Za-z.]+", "", v.replace("%", "pct"))

    parts = []
    if spec.control:
        parts.append(f"control-{spec.control}")
    if spec.remove:
        parts.append(f"remove{amount(spec.remove)}")
    if spec.augment:
        parts.append(f"augment{amount(spec.augment)}")
        if not spec.control:
            parts.append(spec.source)
        if spec.at_step is not None:
            parts.append(f"at{spec.at_step}")
    parts.append(f"seed{spec.seed}")
    return "-".join(parts)


def build_mix(scores_path: str | Path, out: str | Path, spec: MixSpec) -> MixResult:
    """Build a mix folder (atomically); every bad input is one CurateError line and leaves no folder."""
    spec.validate()
    scores = open_scores(scores_path)
    window = read_window(scores)
    base, base_name = open_scored_corpus(scores, window.batch_size)
    if window.stop_row > base.num_rows:
        raise CurateError(
            f"{scores.path}: window steps {window.start_step}-{window.end_step} need rows up to {window.stop_row}, "
            f"but {base.path} has {base.num_rows}"
        )
    total = window.rows
    n_remove = parse_amount(spec.remove, total, "remove") if spec.remove is not None else 0
    n_add = parse_amount(spec.augment, total, "augment") if spec.augment is not None else 0
    out = Path(out)
    check_output_folder(out, MIX, [scores.path, base.path, *base.files, spec.pool])
    if spec.pool is not None and spec.control is None and not Path(spec.pool).exists():
        raise CurateError(f"pool {spec.pool}: no such file or folder")
    kept_count = total - n_remove
    if kept_count + n_add == 0:
        raise CurateError(f"remove {spec.remove}: removes every window row and nothing is added; the mix would be empty")
    anchors, plan_place = placement(n_add, kept_count, window, spec.at_step) if n_add else (np.zeros(0, np.int64), {})

    values = window_scores(scores, window)
    ranked = rank_rows(values)
    random_control = spec.control == "random"
    need_ranked = 0 if random_control else max(n_remove, n_add if spec.source == "top" else 0)
    if need_ranked > len(ranked):
        raise CurateError(f"{scores.path}: {len(ranked)} window rows are scored, fewer than the {need_ranked} top rows to select")
    if not random_control and n_add and spec.source != "top" and len(ranked) == 0:
        raise CurateError(f"{scores.path}: no window row is scored")
    if random_control:
        removed = np.random.default_rng([spec.seed, _SEED_REMOVE]).choice(total, size=n_remove, replace=False)
    else:
        removed = ranked[:n_remove]
    removed_mask = np.zeros(total, dtype=bool)
    removed_mask[removed] = True

    with atomic_dir(out) as tmp:
        if n_add == 0:
            added = None
        elif random_control:
            rel = np.random.default_rng([spec.seed, _SEED_ADD]).choice(total, size=n_add, replace=False)
            added = _window_rows(base, window, rel, values, "random", base_name)
        elif spec.source == "top":
            rel = ranked[:n_add][np.random.default_rng([spec.seed, _SEED_ORDER]).permutation(n_add)]
            added = _window_rows(base, window, rel, values, "duplicate", base_name)
        elif spec.source == "neighbors":
            added = _neighbor_rows(spec, scores, base, base_name, window, ranked, n_add)
        else:
            added = _synthetic_rows(spec, base, base_name, window, ranked, values, n_add, tmp)
        counts, window_sha, streamed = _write_rows(tmp, base, window, removed_mask, anchors, added, values, base_name, spec)
        _write_plan(tmp, Path(out), base_name, window, removed, added, plan_place)
        _write_corpus_meta(tmp, base, window, base_name)
        manifest = _manifest(spec, scores, base, base_name, window, window_sha, counts, added, n_remove, n_add, len(ranked))
        manifest = write_manifest(tmp, manifest, known=streamed)
    return MixResult(out, counts, manifest)


def _write_rows(
    tmp: Path,
    base: Corpus,
    window: Window,
    removed_mask: np.ndarray,
    anchors: np.ndarray,
    added: Added | None,
    values: np.ndarray,
    base_name: str,
    spec: MixSpec,
) -> tuple[dict, str, dict]:
    """Stream the window once, writing kept rows and added rows in their merged order; then the provenance.

    Returns the counts, the sha256 of the window's rows and the checksum of mix.bin computed while writing.
    """
    kept_rel = np.flatnonzero(~removed_mask)
    kept = len(kept_rel)
    n_add = len(anchors)
    base_pos, ins_pos = merge_positions(anchors, kept)
    total_out = kept + n_add
    vocab = base.meta.vocab_size if base.meta and base.meta.vocab_size else None
    dtype = token_dtype_for_vocab(vocab) if vocab else base.dtype
    window_hash = RowHasher(base.dtype)
    out_hash = RowHasher(dtype)
    kept_before = np.concatenate([[0], np.cumsum(~removed_mask)]).astype(np.int64)

    def fetch_added(i0: int, i1: int) -> np.ndarray:
        assert added is not None
        return added.corpus.take(added.rows[i0:i1])

    with MegatronWriter(tmp / DATA_PREFIX, dtype) as writer, BackgroundHashing() as hashing:
        def emit(block: np.ndarray) -> None:
            block = np.ascontiguousarray(block, dtype=out_hash.dtype)
            writer.add_rows(block)
            hashing.submit(out_hash, block)

        for a, chunk in base.iter_chunks(window.first_row, window.stop_row, chunk_rows=spec.chunk_rows):
            hashing.submit(window_hash, chunk)
            lo, hi = a - window.first_row, a - window.first_row + len(chunk)
            k0, k1 = int(kept_before[lo]), int(kept_before[hi])
            i0, i1 = int(np.searchsorted(anchors, k0, "left")), int(np.searchsorted(anchors, k1, "left"))
            o0, o1 = k0 + i0, k1 + i1
            if o1 == o0:
                continue
            if i1 == i0 and k1 - k0 == hi - lo:
                emit(chunk)  # nothing removed or added here: the chunk as it is
                continue
            block = np.empty((o1 - o0, base.row_len), dtype=out_hash.dtype)
            copy_runs(block, base_pos[k0:k1] - o0, chunk, kept_rel[k0:k1] - lo)
            if i1 > i0:
                block[ins_pos[i0:i1] - o0] = fetch_added(i0, i1)
            emit(block)
        i0 = int(np.searchsorted(anchors, kept, "left"))
        for s in range(i0, n_add, spec.chunk_rows):
            emit(fetch_added(s, min(n_add, s + spec.chunk_rows)))
    assert writer.rows == total_out == out_hash.rows, (writer.rows, total_out, out_hash.rows)

    # provenance, position by position
    names = [base_name] + ([added.plan_corpus] if added is not None and added.plan_corpus != base_name else [])
    src = np.zeros(total_out, dtype=np.int8)
    src_row = np.empty(total_out, dtype=np.int64)
    reason = np.zeros(total_out, dtype=np.int8)
    score = np.empty(total_out, dtype=np.float64)
    src_row[base_pos] = kept_rel + window.first_row
    score[base_pos] = values[kept_rel]
    if added is not None:
        src[ins_pos] = names.index(added.plan_corpus)
        src_row[ins_pos] = added.rows
        reason[ins_pos] = REASONS.index(added.reason)
        score[ins_pos] = added.scores
    row_id = np.arange(total_out, dtype=np.int64)
    corpora = [base] + ([added.corpus] if added is not None and len(names) > 1 else [])
    write_table_parquet(
        tmp / PROVENANCE_FILE,
        {
            "row_id": row_id,
            "step": window.start_step + row_id // window.batch_size,
            "source_corpus": pa.DictionaryArray.from_arrays(pa.array(src), pa.array(names)),
            "source_row_id": src_row,
            "reason": pa.DictionaryArray.from_arrays(pa.array(reason), pa.array(list(REASONS))),
            "score": score,
            **source_labels(corpora, src, src_row),
        },
        metadata={"batch_size": window.batch_size, "start_step": window.start_step},
    )
    by_reason = {r: int(c) for r, c in zip(REASONS, np.bincount(reason, minlength=len(REASONS))) if c}
    counts = {"window_rows": window.rows, "kept": kept, "removed": int(removed_mask.sum()), "added": n_add,
              "rows": total_out, "whole_steps": total_out // window.batch_size, "by_reason": by_reason}
    data_file = f"{DATA_PREFIX}.bin"
    streamed = {data_file: {"sha256": out_hash.hexdigest(), "bytes": (tmp / data_file).stat().st_size}}
    return counts, window_hash.hexdigest(), streamed


def source_labels(corpora: list[Corpus], src: np.ndarray, src_row: np.ndarray) -> dict[str, pa.Array]:
    """The label columns of each output row's source row: for every label column of any source corpus's sidecar
    (`curate.labels`; the provenance's own column names excepted), the value at `src_row` in corpus `src`, null
    where that corpus has no such column. A column typed differently by two sources becomes text."""
    wanted = [(i, c, label_columns(c, exclude=PROVENANCE_COLUMNS)) for i, c in enumerate(corpora)]
    per = [(i, read_labels(c, cols)) for i, c, cols in wanted if cols]
    names = list(dict.fromkeys(name for _, cols in per for name in cols))
    out: dict[str, pa.Array] = {}
    for name in names:
        pieces, positions = [], []
        for i, cols in per:
            if name not in cols:
                continue
            values = cols[name]
            if pa.types.is_dictionary(values.type):
                values = values.cast(values.type.value_type)
            at = np.flatnonzero(src == i)
            pieces.append(values.take(pa.array(src_row[at])))
            positions.append(at)
        types = {p.type for p in pieces}
        if len(types) > 1:
            pieces = [p.cast(pa.string()) for p in pieces]
        filled = np.concatenate(positions) if positions else np.zeros(0, dtype=np.int64)
        missing = np.setdiff1d(np.arange(len(src)), filled)
        pieces.append(pa.nulls(len(missing), type=pieces[0].type))
        order = np.empty(len(src), dtype=np.int64)
        order[np.concatenate([filled, missing])] = np.arange(len(src))
        out[name] = pa.concat_arrays(pieces).take(pa.array(order))
    return out


def _write_plan(tmp: Path, out: Path, base_name: str, window: Window, removed_rel: np.ndarray, added: Added | None, place: dict) -> dict:
    """plan.json: the scored corpus with the removed rows dropped and the added rows inserted (training.plan format);
    corpus paths relative to the mix folder (`out`, a sibling of `tmp`) where they share a workspace."""
    from curate.training.plan import plan_from_json

    def name(path: str) -> str:
        return portable(path, out) if Path(path).is_absolute() else path

    plan: dict = {"version": 1, "corpus": name(base_name)}
    if len(removed_rel):
        plan["drop"] = sorted(int(r) + window.first_row for r in removed_rel)
    if added is not None:
        plan["insert"] = [{**place, "corpus": name(added.plan_corpus), "rows": [int(r) for r in added.rows]}]
    plan["note"] = f"build-mix window steps {window.start_step}-{window.end_step}"
    plan_from_json(json.loads(json.dumps(plan)), tmp, str(tmp / PLAN_FILE))  # what the trainer will parse
    with atomic_path(tmp / PLAN_FILE) as p:
        p.write_text(json.dumps(plan, sort_keys=True) + "\n")
    return plan


def _write_corpus_meta(tmp: Path, base: Corpus, window: Window, base_name: str) -> None:
    """corpus.json (batch size, vocabulary, tokenizer copied in, provenance as sidecar) so `open_corpus(MIX)` works."""
    spec = base.tokenizer_spec()
    tokenizer_field = spec
    if spec and Path(spec).is_file():
        shutil.copyfile(spec, tmp / TOKENIZER_FILE)
        tokenizer_field = TOKENIZER_FILE
    meta = CorpusMeta(
        data=f"{DATA_PREFIX}.idx",
        batch_size=window.batch_size,
        vocab_size=base.meta.vocab_size if base.meta else None,
        tokenizer=tokenizer_field,
        sidecar=PROVENANCE_FILE,
        eot_id=base.meta.eot_id if base.meta else None,
        extra={"kind": "mix", "base_corpus": base_name, "window": [window.start_step, window.end_step],
               "start_step": window.start_step, "plan": PLAN_FILE},
    )
    write_json(tmp / METADATA_FILE, meta.to_json())


def _manifest(
    spec: MixSpec, scores: ScoresFolder, base: Corpus, base_name: str, window: Window, window_sha: str, counts: dict,
    added: Added | None, n_remove: int, n_add: int, scored: int,
) -> dict:
    inputs: dict = {"scores_summary": file_input(scores.summary_path)}
    for f in scores.shards:
        inputs[f"scores_shard:{f.name}"] = file_input(f)
    inputs["window_rows"] = rows_input(base, window_sha, row_range=(window.first_row, window.stop_row), path=base_name)
    tok = base.tokenizer_spec()
    if tok and Path(tok).is_file():
        inputs["tokenizer"] = file_input(tok)
    if added is not None:
        inputs.update(added.inputs)
    params = {k: v for k, v in asdict(spec).items() if k != "chunk_rows"}
    body = {
        "kind": "mix",
        "created_by": "curate build-mix",
        "scores": str(scores.path.resolve()),
        "circuit": scores.summary.get("circuit"),
        "heads": scores.summary.get("heads"),
        "parameters": params,
        "seed": spec.seed,
        "resolved": {"remove_rows": n_remove, "augment_rows": n_add, "scored_rows": scored,
                     "selection": "random" if spec.control == "random" else ("top" if not n_add else spec.source)},
        "window": {"start_step": window.start_step, "end_step": window.end_step, "batch_size": window.batch_size,
                   "rows": [window.first_row, window.stop_row]},
        "counts": counts,
        "inputs": inputs,
    }
    if added is not None and added.info:
        body["added"] = added.info
    return body
