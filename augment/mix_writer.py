"""Writing a mix: the corpus folder (`mix.bin/.idx` streamed in the merged order through the one corpus-folder
writer, `provenance.parquet` with the source rows' labels, `tokenizer.json`, `corpus.json`) and `plan.json`
(the same stream as drops and insertions on the scored corpus, for `curate train --plan`)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa

from curate.attribution.scores_folder import Window
from curate.augment.checksums import BackgroundHashing, RowHasher
from curate.augment.mix_placement import copy_runs, merge_positions
from curate.augment.mix_sources import Added
from curate.atomic import atomic_path
from curate.corpus import Corpus
from curate.corpus_folder import CorpusFolderWriter
from curate.labels import label_columns, read_labels
from curate.megatron import token_dtype_for_vocab
from curate.paths import portable
from curate.training.plan import plan_from_json

REASONS = ("kept", "duplicate", "neighbor", "synthetic", "random")
DATA_PREFIX = "mix"
PROVENANCE_FILE = "provenance.parquet"
PROVENANCE_COLUMNS = ("row_id", "step", "source_corpus", "source_row_id", "reason", "score")
PLAN_FILE = "plan.json"


def write_mix_corpus(
    tmp: Path,
    base: Corpus,
    window: Window,
    removed_mask: np.ndarray,
    anchors: np.ndarray,
    added: Added | None,
    values: np.ndarray,
    base_name: str,
    chunk_rows: int,
) -> tuple[dict, str, dict]:
    """Stream the window once, writing kept rows and added rows in their merged order; then the provenance,
    the tokenizer and corpus.json (so `open_corpus(MIX)` works).

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

    with CorpusFolderWriter(tmp, DATA_PREFIX, dtype) as writer, BackgroundHashing() as hashing:
        def emit(block: np.ndarray) -> None:
            block = np.ascontiguousarray(block, dtype=out_hash.dtype)
            writer.add_rows(block)
            hashing.submit(out_hash, block)

        for a, chunk in base.iter_chunks(window.first_row, window.stop_row, chunk_rows=chunk_rows):
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
        for s in range(i0, n_add, chunk_rows):
            emit(fetch_added(s, min(n_add, s + chunk_rows)))
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
    writer.write_sidecar(
        PROVENANCE_FILE,
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
    writer.write_meta(
        batch_size=window.batch_size,
        vocab_size=base.meta.vocab_size if base.meta else None,
        tokenizer=writer.write_tokenizer(base.tokenizer_spec()),
        sidecar=PROVENANCE_FILE,
        eot_id=base.meta.eot_id if base.meta else None,
        extra={"kind": "mix", "base_corpus": base_name, "window": [window.start_step, window.end_step],
               "start_step": window.start_step, "plan": PLAN_FILE},
    )
    by_reason = {r: int(c) for r, c in zip(REASONS, np.bincount(reason, minlength=len(REASONS))) if c}
    counts = {"window_rows": window.rows, "kept": kept, "removed": int(removed_mask.sum()), "added": n_add,
              "rows": total_out, "whole_steps": total_out // window.batch_size, "by_reason": by_reason}
    streamed = {writer.bin_file: {"sha256": out_hash.hexdigest(), "bytes": (tmp / writer.bin_file).stat().st_size}}
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


def write_plan(tmp: Path, out: Path, base_name: str, window: Window, removed_rel: np.ndarray, added: Added | None, place: dict) -> dict:
    """plan.json: the scored corpus with the removed rows dropped and the added rows inserted (training.plan format);
    corpus paths relative to the mix folder (`out`, a sibling of `tmp`) where they share a workspace."""
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
