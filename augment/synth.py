"""Synthetic rows from mined motifs (the paper's augmentation pipeline, without an LLM).

Synthetic row i reproduces motif i mod K (motifs best first): every content token of the motif row is
renamed to a fresh token of the same shape (one fresh token per distinct source token, avoiding the
tokens the source row uses), the template tokens stay, so each repeated span recurs at its position
and distance with new identifiers and values. The text is then re-tokenized with the corpus tokenizer
(canonical tokens) and cut to the corpus row length; a shortfall is filled, after an end-of-text token,
with another fresh instance of the same motif. Row i depends only on (seed, i) and the motifs.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from curate.attribution.scores_folder import open_scored_corpus, open_scores, read_window
from curate.augment.mix_spec import DEFAULT_TOP
from curate.augment.checksums import file_input, rows_input, rows_sha256, write_manifest
from curate.augment.motifs import Motif, VocabClasses, distance_histogram, mine_motifs, motif_summary, repeat_spans, vocab_classes
from curate.atomic import atomic_dir, write_json
from curate.outputs import SYNTHETIC, check_output_folder
from curate.corpus import METADATA_FILE, Corpus, CorpusMeta
from curate.errors import CurateError
from curate.megatron import MegatronWriter, token_dtype_for_vocab
from curate.parquet_io import write_table_parquet
from curate.tokenize import TextTokenizer, load_tokenizer

DATA_PREFIX = "synthetic"
SIDECAR_FILE = "rows.parquet"
MOTIFS_FILE = "motifs.json"
TOKENIZER_FILE = "tokenizer.json"
CHUNK_ROWS = 512
MAX_FILL_ROUNDS = 64


def renamed_tokens(motif: Motif, vc: VocabClasses, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """The motif's tokens with each distinct content token replaced by a fresh token of its class; (tokens, renamed positions)."""
    tokens = motif.tokens
    pos = np.flatnonzero(motif.content)
    out = tokens.copy()
    if len(pos) == 0:
        return out, 0
    uniq, inv = np.unique(tokens[pos], return_inverse=True)
    fresh = np.empty(len(uniq), dtype=np.int64)
    classes = vc.klass[uniq]
    for c in np.unique(classes).tolist():
        sel = np.flatnonzero(classes == c)
        pool = vc.pools[c]
        candidates = pool[~np.isin(pool, tokens)]  # nothing the source row already uses
        if len(candidates) < len(sel):
            candidates = pool[~np.isin(pool, uniq[sel])]  # at least never the token itself
        if len(candidates) == 0:
            candidates = pool
        fresh[sel] = rng.choice(candidates, size=len(sel), replace=len(candidates) < len(sel))
    out[pos] = fresh[inv]
    return out, int(len(pos))


@dataclass
class SynthBatch:
    """A block of synthetic rows and their provenance."""

    rows: np.ndarray  # (n, row_len) int64
    motif_index: np.ndarray  # int64: index into the motif list
    fresh_share: np.ndarray  # float32: share of the first instance's tokens that were renamed
    fills: np.ndarray  # int32: extra instances appended to reach the row length


def synthesize(
    motifs: list[Motif],
    n_rows: int,
    tokenizer: TextTokenizer,
    row_len: int,
    seed: int,
    vc: VocabClasses | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> Iterator[SynthBatch]:
    """Generate `n_rows` synthetic rows of `row_len` tokens, streamed in blocks."""
    if not motifs:
        raise CurateError("no motifs to generate from")
    if n_rows < 1:
        raise CurateError(f"synthetic rows: need at least 1, got {n_rows}")
    vc = vc or vocab_classes(tokenizer)
    eot = int(tokenizer.eot_id)
    for a in range(0, n_rows, chunk_rows):
        b = min(n_rows, a + chunk_rows)
        idx = np.arange(a, b, dtype=np.int64) % len(motifs)
        rngs = [np.random.default_rng([seed, i]) for i in range(a, b)]
        first = [renamed_tokens(motifs[int(m)], vc, r) for m, r in zip(idx, rngs)]
        texts = tokenizer.tok.decode_batch([t.tolist() for t, _ in first], skip_special_tokens=False)
        encoded = tokenizer.encode_batch(texts)
        rows = np.empty((b - a, row_len), dtype=np.int64)
        fills = np.zeros(b - a, dtype=np.int32)
        for j, ids in enumerate(encoded):
            while len(ids) < row_len:
                if fills[j] >= MAX_FILL_ROUNDS:
                    raise CurateError(f"motif row {motifs[int(idx[j])].row_id} re-tokenizes to too few tokens to fill a row of {row_len}")
                more, _ = renamed_tokens(motifs[int(idx[j])], vc, rngs[j])
                ids = ids + [eot] + tokenizer.encode_batch([tokenizer.decode(more)])[0]
                fills[j] += 1
            rows[j] = ids[:row_len]
        fresh = np.array([k / max(len(t), 1) for t, k in first], dtype=np.float32)
        yield SynthBatch(rows, idx, fresh, fills)


def write_synthetic_corpus(
    folder: Path,
    motifs: list[Motif],
    n_rows: int,
    tokenizer: TextTokenizer,
    row_len: int,
    batch_size: int,
    seed: int,
    source_corpus: str,
    vc: VocabClasses | None = None,
    extra_meta: dict | None = None,
) -> dict:
    """Write a corpus folder of synthetic rows into `folder` (the caller makes it atomic); returns the summary."""
    vc = vc or vocab_classes(tokenizer)
    dtype = token_dtype_for_vocab(tokenizer.vocab_size)
    motif_of = np.empty(n_rows, dtype=np.int64)
    fresh = np.empty(n_rows, dtype=np.float32)
    fills = np.empty(n_rows, dtype=np.int32)
    spans_found = np.empty(n_rows, dtype=np.int32)
    gen_spans = []
    done = 0
    with MegatronWriter(folder / DATA_PREFIX, dtype) as writer:
        for batch in synthesize(motifs, n_rows, tokenizer, row_len, seed, vc):
            writer.add_rows(batch.rows)
            n = len(batch.rows)
            motif_of[done : done + n] = batch.motif_index
            fresh[done : done + n] = batch.fresh_share
            fills[done : done + n] = batch.fills
            for j, row in enumerate(batch.rows):
                sp = repeat_spans(row)
                spans_found[done + j] = len(sp)
                gen_spans.extend(sp)
            done += n
    row_ids = np.arange(n_rows, dtype=np.int64)
    write_table_parquet(
        folder / SIDECAR_FILE,
        {
            "row_id": row_ids,
            "step": row_ids // batch_size,
            "motif_row_id": np.array([motifs[int(m)].row_id for m in motif_of], dtype=np.int64),
            "motif_rank": np.array([motifs[int(m)].rank for m in motif_of], dtype=np.int64),
            "motif_label": [motifs[int(m)].label for m in motif_of],
            "motif_score": np.array([motifs[int(m)].score for m in motif_of], dtype=np.float64),
            "fresh_share": fresh,
            "fills": fills,
            "spans": spans_found,
        },
        metadata={"batch_size": batch_size, "seed": seed, "source_corpus": source_corpus},
    )
    mined = motif_summary(motifs)
    generated = {
        "rows": n_rows,
        "rows_with_spans": int((spans_found > 0).sum()),
        "spans": len(gen_spans),
        "mean_span_length": float(np.mean([s.length for s in gen_spans])) if gen_spans else 0.0,
        "distance_hist": distance_histogram(gen_spans),
        "mean_fresh_share": float(fresh.mean()),
        "filled_rows": int((fills > 0).sum()),
    }
    summary = {"source_corpus": source_corpus, "seed": seed, "mined": mined, "generated": generated,
               "motifs": [m.summary() for m in motifs]}
    write_json(folder / MOTIFS_FILE, summary)
    tok_path = Path(tokenizer.spec)
    tokenizer_field: str | None = tokenizer.spec
    if tok_path.is_file():
        shutil.copyfile(tok_path, folder / TOKENIZER_FILE)
        tokenizer_field = TOKENIZER_FILE
    meta = CorpusMeta(
        data=f"{DATA_PREFIX}.idx",
        batch_size=int(batch_size),
        vocab_size=tokenizer.vocab_size,
        tokenizer=tokenizer_field,
        sidecar=SIDECAR_FILE,
        eot_id=int(tokenizer.eot_id),
        extra={"kind": "synthetic", "seed": int(seed), "motif_source": source_corpus, **(extra_meta or {})},
    )
    write_json(folder / METADATA_FILE, meta.to_json())
    return summary



def corpus_tokenizer(corpus: Corpus) -> TextTokenizer:
    """The tokenizer recorded for a corpus; synthetic rows cannot be made without one."""
    spec = corpus.tokenizer_spec()
    if not spec:
        raise CurateError(f"{corpus.path}: no tokenizer recorded for this corpus (corpus.json 'tokenizer'); synthetic rows need one")
    return load_tokenizer(spec)


def synthesize_from_scores(scores_path: str | Path, out: str | Path, rows: int, top: int = DEFAULT_TOP, seed: int = 0) -> dict:
    """`curate synth`: mine the motifs of the top rows of a scores folder and write `rows` synthetic rows to `out`."""
    if rows < 1:
        raise CurateError(f"rows {rows}: must be at least 1")
    if top < 1:
        raise CurateError(f"top {top}: must be at least 1")
    scores = open_scores(scores_path)
    window = read_window(scores)
    base, base_name = open_scored_corpus(scores, window.batch_size)
    out = Path(out)
    check_output_folder(out, SYNTHETIC, [scores.path, base.path, *base.files])
    tokenizer = corpus_tokenizer(base)
    best = scores.top_rows(min(top, scores.num_rows))
    ids = best.row_ids
    if len(ids) and (ids.min() < 0 or ids.max() >= base.num_rows):
        raise CurateError(f"{scores.path}: scored row {int(ids.max())} is outside {base.path} ({base.num_rows} rows)")
    vc = vocab_classes(tokenizer)
    motifs = mine_motifs(base.take(ids), ids, best.values, tokenizer, vc)
    with atomic_dir(out) as tmp:
        summary = write_synthetic_corpus(tmp, motifs, rows, tokenizer, base.row_len, window.batch_size, seed, base_name, vc)
        inputs: dict = {"scores_summary": file_input(scores.summary_path)}
        for f in scores.shards:
            inputs[f"scores_shard:{f.name}"] = file_input(f)
        inputs["motif_rows"] = rows_input(base, rows_sha256(base, ids=ids), ids=ids, path=base_name)
        if Path(tokenizer.spec).is_file():
            inputs["tokenizer"] = file_input(tokenizer.spec)
        write_manifest(tmp, {
            "kind": "synthetic",
            "created_by": "curate synth",
            "scores": str(scores.path.resolve()),
            "circuit": scores.summary.get("circuit"),
            "parameters": {"rows": rows, "top": top, "seed": seed},
            "seed": seed,
            "counts": {"rows": rows, "motifs": len(motifs)},
            "mined": summary["mined"],
            "generated": summary["generated"],
            "inputs": inputs,
        })
    return summary
