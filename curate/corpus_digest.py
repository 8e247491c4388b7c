"""A corpus's content identity: the digest a scores folder records of the corpus it scored, so that its readers
refuse another corpus found at the recorded path (a re-ingest to the same folder) or given in its place.

Cheap at any size: every data file (and a Megatron `.idx`) of up to `WHOLE_MAX_BYTES` is hashed whole; a larger
one by its size and `SAMPLES` chunks of `SAMPLE_BYTES` spread evenly from its first byte to its last (16 MiB read,
a fraction of a second even for a 100 GB `.bin`). The shape (rows, row length, token type) comes first. Another
corpus of the same shape differs in the sampled bytes unless it differs only between the samples of a file larger
than 64 MiB (one edited document in the middle of a huge corpus): a re-ingest with any other documents, order or
seed shifts the rows everywhere. Paths and times are not part of it: a copied or moved corpus keeps its identity."""
from __future__ import annotations

import hashlib
from pathlib import Path

from curate.corpus import Corpus

WHOLE_MAX_BYTES = 64 << 20
SAMPLES = 256
SAMPLE_BYTES = 64 << 10
PREFIX = "blake2b-sampled-v1:"


def _hash_file(h: "hashlib._Hash", path: Path) -> None:
    size = path.stat().st_size
    h.update(f"|{size}|".encode())
    with path.open("rb") as fh:
        if size <= WHOLE_MAX_BYTES:
            while block := fh.read(1 << 20):
                h.update(block)
            return
        for i in range(SAMPLES):
            fh.seek(i * (size - SAMPLE_BYTES) // (SAMPLES - 1))
            h.update(fh.read(SAMPLE_BYTES))


def content_digest(corpus: Corpus) -> str:
    """The corpus's content identity (see the module docstring), e.g. `blake2b-sampled-v1:3f0c...`."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{corpus.num_rows}:{corpus.row_len}:{corpus.dtype.str}".encode())
    files = [Path(f) for f in corpus.files]
    index = Path(corpus.path)
    if index.is_file() and index not in files:  # a Megatron .idx: row boundaries and token type
        files.insert(0, index)
    for f in files:
        _hash_file(h, f)
    return PREFIX + h.hexdigest()
