"""Text in, training corpus out: read documents, tokenize, pack into rows, shuffle, write a corpus folder.

The folder holds `corpus.bin`/`corpus.idx` (Megatron, rows of seq_len + 1 tokens in training
order), `rows.parquet` (per-row provenance: the documents in the row and the main document's
label fields such as `domain`), `tokenizer.json` and `corpus.json` (`CorpusMeta`), written by the one
corpus-folder writer (`curate.corpus_folder`) inside `atomic_dir`: a failure leaves no folder behind.
"""
from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa

from curate.atomic import atomic_dir
from curate.outputs import CORPUS, TOKENIZER, check_output_folder
from curate.corpus import PYTHIA_BATCH_SIZE, CorpusMeta
from curate.corpus_folder import CorpusFolderWriter
from curate.errors import CurateError
from curate.megatron import token_dtype_for_vocab
from curate.tokenize import TextTokenizer, load_tokenizer, pack_rows, save_tokenizer_folder, shuffle_rows, train_tokenizer

DATA_PREFIX = "corpus"
SIDECAR_FILE = "rows.parquet"
SIDECAR_COLUMNS = ("row_id", "step", "packed_row", "doc_id", "first_doc", "last_doc", "num_docs")
ENCODE_CHUNK_DOCS = 2000
WRITE_CHUNK_ROWS = 8192

ProgressFn = Callable[[str, int, int], None]


@dataclass
class Documents:
    """Texts and per-document label fields (each list as long as `texts`; None where absent)."""

    texts: list[str]
    fields: dict[str, list]
    source: str
    skipped: int = 0  # files of a folder that were skipped as binary or not UTF-8


@dataclass
class IngestResult:
    """What `ingest_documents` wrote."""

    out_dir: Path
    meta: CorpusMeta
    num_rows: int
    num_documents: int
    num_tokens: int
    dropped_tail_tokens: int
    skipped_files: int = 0  # files of a raw text folder skipped as binary or not UTF-8


# -- reading documents --------------------------------------------------------------------------

def _flatten(obj: dict, prefix: str = "") -> Iterator[tuple[str, object]]:
    """Nested JSON objects as dotted keys; lists and other non-scalars as JSON strings."""
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _flatten(value, name + ".")
        elif value is None or isinstance(value, (str, int, float, bool)):
            yield name, value
        else:
            yield name, json.dumps(value, sort_keys=True)


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def read_jsonl(path: str | Path, text_field: str = "text") -> Documents:
    """One JSON object per line with a string `text` field; other fields (flattened) become labels."""
    path = Path(path)
    texts: list[str] = []
    fields: dict[str, list] = {}
    try:
        with _open_text(path) as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise CurateError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
                if not isinstance(obj, dict):
                    raise CurateError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
                text = obj.pop(text_field, None)
                if not isinstance(text, str):
                    raise CurateError(f"{path}:{lineno}: no {text_field!r} string field")
                k = len(texts)
                texts.append(text)
                for name, value in _flatten(obj):
                    if name not in fields:
                        fields[name] = [None] * k
                    fields[name].append(value)
                for values in fields.values():
                    if len(values) == k:
                        values.append(None)
    except UnicodeDecodeError as e:
        raise CurateError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except (OSError, EOFError) as e:
        raise CurateError(f"{path}: cannot read ({e})") from None
    return Documents(texts, fields, str(path))


TEXT_SAMPLE_BYTES = 8192  # a NUL byte in a file's first bytes marks it binary


def decode_text_file(path: Path) -> str | None:
    """A raw text file's text: `.gz` decompressed, UTF-8 (a leading byte-order mark dropped); None when it is binary
    (a NUL byte in its first `TEXT_SAMPLE_BYTES`) or not UTF-8."""
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        if isinstance(e, OSError) and not isinstance(e, gzip.BadGzipFile):
            raise CurateError(f"{path}: cannot read ({e})") from None
        return None
    if b"\x00" in data[:TEXT_SAMPLE_BYTES]:
        return None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None


def text_label(relative: str) -> str:
    """The `domain` label of a file in a raw text folder: its top-level subfolder, or for a file at the top
    level its extension (`.gz` looked through; "none" without one)."""
    parts = relative.split("/")
    if len(parts) > 1:
        return parts[0]
    name = parts[0][:-3] if parts[0].endswith(".gz") else parts[0]
    suffix = Path(name).suffix.lower().lstrip(".")
    return suffix or "none"


def read_text_dir(path: str | Path) -> Documents:
    """Every non-hidden file under a folder, recursively, sorted by relative path, is one document: any
    extension, `.gz` decompressed, read as UTF-8; binary and non-UTF-8 files are skipped (counted in
    `skipped`). Labels: `domain` (`text_label`: the top-level subfolder) and `source` (the relative path)."""
    path = Path(path)
    files = sorted(
        (f for f in path.rglob("*") if f.is_file() and not any(part.startswith(".") for part in f.relative_to(path).parts)),
        key=lambda f: f.relative_to(path).as_posix(),
    )
    texts, names, skipped = [], [], 0
    for f in files:
        text = decode_text_file(f)
        if text is None:
            skipped += 1
            continue
        texts.append(text)
        names.append(f.relative_to(path).as_posix())
    if not texts and skipped:
        raise CurateError(f"{path}: no text files (all {skipped} files are binary or not UTF-8)")
    return Documents(texts, {"domain": [text_label(n) for n in names], "source": names}, str(path), skipped)


def read_documents(path: str | Path) -> Documents:
    """JSONL (`.jsonl`, `.json`, `.jsonl.gz`), a folder of raw text files (`read_text_dir`), or one plain text file."""
    p = Path(path)
    if not p.exists():
        raise CurateError(f"{p}: no such file or folder")
    if p.is_dir():
        docs = read_text_dir(p)
    elif p.name.endswith((".jsonl", ".json", ".jsonl.gz", ".json.gz", ".ndjson")):
        docs = read_jsonl(p)
    else:
        try:
            docs = Documents([p.read_bytes().decode("utf-8")], {"source": [p.name]}, str(p))
        except UnicodeDecodeError as e:
            raise CurateError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not docs.texts:
        raise CurateError(f"{p}: no documents (empty input)")
    if not any(docs.texts):
        raise CurateError(f"{p}: all {len(docs.texts)} documents are empty")
    return docs


# -- packing provenance ---------------------------------------------------------------------------

def row_documents(doc_tokens: np.ndarray, row_len: int, num_rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per packed row: (first doc, last doc, main doc = most tokens, ties to the earlier one).

    `doc_tokens` are the documents' token counts before packing; each is followed by one
    end-of-text token, as `pack_rows` does. Vectorized: O(rows + documents).
    """
    lengths = np.asarray(doc_tokens, dtype=np.int64) + 1
    ends = np.cumsum(lengths)
    starts = ends - lengths
    row_start = np.arange(num_rows, dtype=np.int64) * row_len
    first = np.searchsorted(ends, row_start, side="right")
    last = np.searchsorted(ends, row_start + row_len - 1, side="right")
    counts = last - first + 1
    pair_row = np.repeat(np.arange(num_rows, dtype=np.int64), counts)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pair_doc = first[pair_row] + (np.arange(len(pair_row), dtype=np.int64) - offsets[pair_row])
    overlap = np.minimum(ends[pair_doc], row_start[pair_row] + row_len) - np.maximum(starts[pair_doc], row_start[pair_row])
    best = np.maximum.reduceat(overlap, offsets) if num_rows else overlap[:0]
    hits = np.flatnonzero(overlap == best[pair_row])
    _, first_hit = np.unique(pair_row[hits], return_index=True)
    main = pair_doc[hits[first_hit]]
    return first, last, main


def _label_array(name: str, values: list) -> pa.Array:
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return pa.array([None if v is None else str(v) for v in values], type=pa.string())


# -- the corpus folder ----------------------------------------------------------------------------

def ingest_documents(
    texts: Sequence[str],
    fields: dict[str, list] | None,
    tokenizer: TextTokenizer | str | Path,
    seq_len: int,
    out_dir: str | Path,
    seed: int = 0,
    batch_size: int = PYTHIA_BATCH_SIZE,
    source: str | None = None,
    progress: ProgressFn | None = None,
    inputs: Sequence[str | Path] = (),
    heldout_rows: int = 0,
    extra_meta: dict | None = None,
) -> IngestResult:
    """Tokenize, pack into rows of seq_len + 1 tokens, shuffle with `seed`, write a corpus folder atomically.
    `heldout_rows`: the last rows (after the shuffle: a random sample) are held out (`heldout_start` in corpus.json):
    training never reads them, and evaluates its held-out loss and ICL score on them. `extra_meta`: more corpus.json
    fields (the default corpus's build record)."""
    out_dir = Path(out_dir)
    fields = dict(fields or {})
    if seq_len < 1:
        raise CurateError(f"the sequence length must be at least 1, got {seq_len}")
    if batch_size < 1:
        raise CurateError(f"the batch size must be at least 1, got {batch_size}")
    if not texts:
        raise CurateError(f"{source or 'input'}: no documents (empty input)")
    for name, values in fields.items():
        if len(values) != len(texts):
            raise CurateError(f"{source or 'input'}: field {name!r} has {len(values)} values for {len(texts)} documents")
    check_output_folder(out_dir, CORPUS, inputs)
    tok = tokenizer if isinstance(tokenizer, TextTokenizer) else load_tokenizer(tokenizer)
    row_len = seq_len + 1

    docs: list[list[int]] = []
    for a in range(0, len(texts), ENCODE_CHUNK_DOCS):
        docs.extend(tok.encode_batch(texts[a : a + ENCODE_CHUNK_DOCS]))
        if progress:
            progress("tokenize", min(len(texts), a + ENCODE_CHUNK_DOCS), len(texts))
    doc_tokens = np.array([len(d) for d in docs], dtype=np.int64)
    total = int(doc_tokens.sum() + len(docs))
    if total < row_len:
        raise CurateError(
            f"{source or 'input'}: {total} tokens in {len(docs)} documents (with separators) do not fill one row of "
            f"{row_len} tokens (sequence length {seq_len} + 1)"
        )
    packed, _ = pack_rows(docs, row_len, tok.eot_id)
    del docs
    num_rows = packed.shape[0]
    if not 0 <= heldout_rows < num_rows:
        raise CurateError(f"{source or 'input'}: {heldout_rows} held-out rows leave no training row ({num_rows} rows in all)")
    order = shuffle_rows(num_rows, seed)
    first, last, main = row_documents(doc_tokens, row_len, num_rows)
    dtype = token_dtype_for_vocab(tok.vocab_size)

    with atomic_dir(out_dir) as tmp:
        with CorpusFolderWriter(tmp, DATA_PREFIX, dtype) as writer:
            for a in range(0, num_rows, WRITE_CHUNK_ROWS):
                writer.add_rows(packed[order[a : a + WRITE_CHUNK_ROWS]])
                if progress:
                    progress("write", min(num_rows, a + WRITE_CHUNK_ROWS), num_rows)
        row_ids = np.arange(num_rows, dtype=np.int64)
        main_sorted = main[order]
        sidecar: dict[str, object] = {
            "row_id": row_ids,
            "step": row_ids // batch_size,
            "packed_row": order.astype(np.int64),
            "doc_id": main_sorted,
            "first_doc": first[order],
            "last_doc": last[order],
            "num_docs": (last - first + 1)[order],
        }
        for name, values in fields.items():
            column = name if name not in SIDECAR_COLUMNS else f"doc.{name}"
            sidecar[column] = _label_array(name, [values[int(d)] for d in main_sorted])
        writer.write_sidecar(SIDECAR_FILE, sidecar, metadata={"batch_size": batch_size})
        meta = writer.write_meta(
            batch_size=batch_size,
            vocab_size=tok.vocab_size,
            tokenizer=writer.write_tokenizer(tok.spec, tok),
            sidecar=SIDECAR_FILE,
            eot_id=tok.eot_id,
            extra={
                "seq_len": int(seq_len),
                "seed": int(seed),
                "documents": len(texts),
                "tokens": num_rows * row_len,
                "dropped_tail_tokens": total - num_rows * row_len,
                "source": source,
                "tokenizer_source": tok.spec,
                **({"heldout_start": num_rows - heldout_rows} if heldout_rows else {}),
                **(extra_meta or {}),
            },
        )
    return IngestResult(out_dir, meta, num_rows, len(texts), num_rows * row_len, total - num_rows * row_len)


def ingest_path(
    input_path: str | Path,
    tokenizer: str | Path | None,
    seq_len: int,
    out_dir: str | Path,
    seed: int = 0,
    batch_size: int = PYTHIA_BATCH_SIZE,
    progress: ProgressFn | None = None,
    vocab_size: int | None = None,
    heldout_rows: int = 0,
) -> IngestResult:
    """`curate corpus ingest`: read JSONL / a text folder, then `ingest_documents`; with `vocab_size` instead of a
    tokenizer, a byte-level BPE of that size is trained on the input first (`train_tokenizer`) and saved in the corpus."""
    if (tokenizer is None) == (vocab_size is None):
        raise CurateError("give a tokenizer or a vocabulary size to train one, not both" if tokenizer is not None
                          else "no tokenizer: give one, or a vocabulary size to train one on the input")
    tok = load_tokenizer(tokenizer) if tokenizer is not None else None
    check_output_folder(out_dir, CORPUS, [input_path, tokenizer])
    docs = read_documents(input_path)
    if tok is None:
        assert vocab_size is not None
        if progress:
            progress("train tokenizer", 0, 1)
        tok = train_tokenizer(docs.texts, vocab_size, spec=f"bpe-{vocab_size} trained on {input_path}")
    result = ingest_documents(docs.texts, docs.fields, tok, seq_len, out_dir, seed, batch_size, docs.source, progress,
                              inputs=[input_path, tokenizer], heldout_rows=heldout_rows)
    result.skipped_files = docs.skipped
    return result


def train_tokenizer_path(input_path: str | Path, vocab_size: int, out_dir: str | Path) -> tuple[TextTokenizer, Documents]:
    """`curate tokenizer train`: a byte-level BPE trained on JSONL / a raw text folder / one text file, written
    as a tokenizer folder (`save_tokenizer_folder`); returns it and the documents it was trained on."""
    check_output_folder(out_dir, TOKENIZER, [input_path])
    docs = read_documents(input_path)
    tok = train_tokenizer(docs.texts, vocab_size, spec=f"bpe-{vocab_size}")
    save_tokenizer_folder(tok, out_dir)
    return tok, docs
