"""The embedded default corpus: the mini-Pile mixture, a small byte-level BPE trained on it, packed
into Pythia-format rows (shuffled), with held-out rows at the end. Built locally, no download.

`build_default_corpus(workspace)` writes `default_corpus_dir(workspace)` once; it records its build
parameters in corpus.json (`extra.build`) and does nothing when they match, unless `force`.
"""
from __future__ import annotations

import json
import string
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from curate.atomic import atomic_dir
from curate.outputs import CORPUS, check_output_folder
from curate.corpus import METADATA_FILE
from curate.errors import CurateError
from curate.ingest import ingest_documents
from curate.locks import hold
from curate.minipile import MixtureConfig, copy_pieces, generate_documents
from curate.tokenize import TextTokenizer
from curate.tokenize import train_tokenizer as train_bpe
from curate.workspace import default_corpus_dir

GENERATOR_VERSION = 1  # bump when the generator's output for a given seed changes

# The corpus is sized for the reference run (`training.recipes`, which reads these): every row is trained on once.
DEFAULT_CONTEXT = 64  # tokens of context of the default model; corpus rows hold one more (the label shift)
DEFAULT_BATCH_SIZE = 32  # rows per step of the reference run
REFERENCE_STEPS = 4000  # length of the reference run


@dataclass(frozen=True)
class DefaultCorpusSpec:
    """Everything that decides the bytes of the default corpus (besides the seed)."""

    mixture: MixtureConfig = field(default_factory=MixtureConfig)
    vocab_size: int = 256  # BPE vocabulary including <|endoftext|>
    seq_len: int = DEFAULT_CONTEXT  # context; rows hold seq_len + 1 tokens
    batch_size: int = DEFAULT_BATCH_SIZE
    train_rows: int = DEFAULT_BATCH_SIZE * REFERENCE_STEPS  # rows the reference run consumes (steps x batch size)
    heldout_rows: int = 512  # at least this many rows after the training rows
    tokenizer_docs: int = 4000  # documents the tokenizer is trained on (the first ones)

    def to_json(self, seed: int) -> dict:
        return {
            "generator_version": GENERATOR_VERSION,
            "seed": int(seed),
            "mixture": self.mixture.to_json(),
            "vocab_size": self.vocab_size,
            "seq_len": self.seq_len,
            "batch_size": self.batch_size,
            "train_rows": self.train_rows,
            "heldout_rows": self.heldout_rows,
            "tokenizer_docs": self.tokenizer_docs,
        }


def default_spec() -> DefaultCorpusSpec:
    """The default corpus's spec, sized for the reference run."""
    return DefaultCorpusSpec()


def tokenizer_alphabet() -> list[str]:
    """Byte-level symbols of printable ASCII plus newline and tab: every symbol the generator emits."""
    from tokenizers import pre_tokenizers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    chars = [c for c in string.printable if c not in "\r\x0b\x0c"]
    return sorted({byte_level.pre_tokenize_str(c)[0][0] for c in chars})


def train_tokenizer(texts: Sequence[str], vocab_size: int) -> TextTokenizer:
    """The default corpus's BPE (`curate.tokenize.train_tokenizer`) over the generator's alphabet."""
    return train_bpe(texts, vocab_size, tokenizer_alphabet(), "minipile-bpe")


PAD_CHAR = "\t"  # never in generated text, so the tokenizer has no merge with it: one token per tab


def _fit_one(text: str, encoding, n_tokens: int) -> str:
    """`text` cut at the character where token n_tokens starts (then re-encoded: BPE may split the last
    word differently), or padded with tabs up to `n_tokens` tokens when it is short."""
    if len(encoding.ids) > n_tokens:
        return text[: encoding.offsets[n_tokens][0]]
    return text + PAD_CHAR * (n_tokens - len(encoding.ids))


def fit_documents(texts: Sequence[str], tok: TextTokenizer, n_tokens: int) -> tuple[list[str], list[list[int]]]:
    """Each text made exactly `n_tokens` tokens long, so that packing gives one document per row.

    Long texts are cut (at a character, re-encoded until the count is exact); texts that come out
    short are padded with tabs (`PAD_CHAR`, one token each). The generator makes documents longer
    than a row, so padding is rare: a padded end is a positional target that slows the formation
    of induction heads. Returns the fitted texts and their token ids.

    Works through `FIT_CHUNK_DOCS` documents at a time (each document is fitted on its own, so the
    result does not depend on the chunking): the tokenizer's encodings of a whole corpus at once
    took gigabytes."""
    out: list[str] = []
    ids: list[list[int]] = []
    for a in range(0, len(texts), FIT_CHUNK_DOCS):
        chunk_texts, chunk_ids = _fit_chunk(texts[a : a + FIT_CHUNK_DOCS], tok, n_tokens)
        out += chunk_texts
        ids += chunk_ids
    return out, ids


FIT_CHUNK_DOCS = 2048


def _fit_chunk(texts: Sequence[str], tok: TextTokenizer, n_tokens: int) -> tuple[list[str], list[list[int]]]:
    out = list(texts)
    ids: list[list[int]] = [[] for _ in out]
    todo = list(range(len(out)))
    for _ in range(6):
        encodings = tok.tok.encode_batch([out[i] for i in todo], add_special_tokens=False)
        bad = []
        for i, e in zip(todo, encodings):
            if len(e.ids) == n_tokens:
                ids[i] = list(e.ids)
            else:
                out[i] = _fit_one(out[i], e, n_tokens)
                bad.append(i)
        if not bad:
            return out, ids
        todo = bad
    raise CurateError(f"default corpus: {len(todo)} documents could not be fitted to {n_tokens} tokens")


class KnownTokenizer(TextTokenizer):
    """A tokenizer that answers from the encodings it was given (the fitted documents) first."""

    def __init__(self, base: TextTokenizer, texts: Sequence[str], ids: Sequence[list[int]]) -> None:
        super().__init__(base.tok, base.spec)
        self.known = dict(zip(texts, ids))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        missing = [t for t in texts if t not in self.known]
        fresh = dict(zip(missing, super().encode_batch(missing))) if missing else {}
        return [self.known[t] if t in self.known else fresh[t] for t in texts]


def _log(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


def build_default_corpus(
    workspace: Path,
    seed: int = 0,
    force: bool = False,
    progress: bool = True,
    spec: DefaultCorpusSpec | None = None,
) -> Path:
    """Build (or reuse) the default corpus folder of `workspace`, holding its lock (one writer); returns its path."""
    with hold(default_corpus_dir(Path(workspace)), what="default corpus"):
        return _build_default_corpus(workspace, seed, force, progress, spec)


def _build_default_corpus(workspace: Path, seed: int, force: bool, progress: bool, spec: DefaultCorpusSpec | None) -> Path:

    spec = spec or default_spec()
    out = default_corpus_dir(Path(workspace))
    wanted = spec.to_json(seed)
    check_output_folder(out, CORPUS)  # --force replaces a corpus, never another folder
    if out.exists() and not force:
        meta_path = out / METADATA_FILE
        if not meta_path.is_file():
            raise CurateError(f"{out}: exists but is not a corpus folder (no {METADATA_FILE}); force a rebuild to replace it")
        try:
            recorded = json.loads(meta_path.read_text()).get("build")
        except json.JSONDecodeError:
            recorded = None
        if recorded == wanted:
            _log(progress, f"default corpus up to date: {out}")
            return out
        was = f"seed {recorded.get('seed')}" if isinstance(recorded, dict) else "unknown parameters"
        raise CurateError(f"{out}: built with other parameters ({was}); force a rebuild to replace it (seed {seed})")

    t0 = time.perf_counter()
    row_len = spec.seq_len + 1
    n_docs = spec.train_rows + spec.heldout_rows  # one document per row
    sample = list(generate_documents(spec.tokenizer_docs, seed, spec.mixture))
    tok = train_tokenizer([d.text for d in sample], spec.vocab_size)
    pieces = copy_pieces([tok.decode([i]) for i in range(tok.vocab_size) if i != tok.eot_id])
    _log(progress, f"tokenizer trained ({tok.vocab_size} tokens, {time.perf_counter() - t0:.1f}s); generating {n_docs} documents")
    docs = list(generate_documents(n_docs, seed, spec.mixture, pieces=pieces))
    _log(progress, f"generated ({time.perf_counter() - t0:.1f}s); fitting each document to one row")
    fitted, ids = fit_documents([d.text for d in docs], tok, spec.seq_len)
    # An empty first document puts one end-of-text token in front of every document: each row is
    # [<|endoftext|>, document] (the token acts as BOS). A row never ends on an end-of-text label at
    # a fixed position, a positional target that keeps a small model from forming induction heads.
    texts = [""] + fitted
    fields = {
        "domain": [None] + [d.domain for d in docs],
        "copy_spans": [None] + [d.copy_spans for d in docs],
        "doc_index": [None] + list(range(n_docs)),  # the generator's document index (seed, index) -> text
    }
    tok = KnownTokenizer(tok, [""] + fitted, [[]] + ids)
    del docs, sample, ids, fitted

    def report(stage: str, done: int, total: int) -> None:
        if progress and done == total:
            _log(progress, f"{stage}: {total} ({time.perf_counter() - t0:.1f}s)")

    build = {"build": wanted, "heldout_start": spec.train_rows, "heldout_rows": spec.heldout_rows,
             "domains": "prose latex xml code json table repeat"}
    with atomic_dir(out) as tmp:
        result = ingest_documents(texts, fields, tok, spec.seq_len, tmp, seed=seed, batch_size=spec.batch_size,
                                  source="minipile", progress=report, extra_meta=build)
        if result.num_rows != n_docs or result.dropped_tail_tokens != 1:
            raise CurateError(f"default corpus: packing gave {result.num_rows} rows for {n_docs} documents fitted to one row each")
    _log(progress, f"default corpus: {result.num_rows} rows of {row_len} tokens in {time.perf_counter() - t0:.1f}s -> {out}")
    return out


def ensure_default_corpus(workspace: Path, progress: bool = True, log: Callable[[str], None] | None = None) -> Path:
    """The workspace's default corpus folder, built first when missing (an existing one is used as it is)."""
    folder = default_corpus_dir(Path(workspace))
    if not (folder / METADATA_FILE).is_file():
        if log is not None:
            log(f"building the default corpus in {folder} ...")
        build_default_corpus(Path(workspace), progress=progress)
    return folder
