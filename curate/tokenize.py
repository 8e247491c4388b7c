"""Tokenizers and row packing shared by ingest and the embedded default corpus."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from curate.hub import hub_offline, offline_message
from curate.atomic import atomic_dir, write_json
from curate.errors import CurateError

EOT_TOKEN = "<|endoftext|>"


class TextTokenizer:
    """A thin wrapper over a `tokenizers.Tokenizer` with the end-of-text id it packs with."""

    def __init__(self, tok, spec: str) -> None:
        self.tok = tok
        self.spec = spec
        eot = tok.token_to_id(EOT_TOKEN)
        if eot is None:
            raise CurateError(f"{spec}: tokenizer has no {EOT_TOKEN} token to separate documents")
        self.eot_id: int = int(eot)

    @property
    def vocab_size(self) -> int:
        return int(self.tok.get_vocab_size(with_added_tokens=True))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=False)


MIN_VOCAB = 257  # a byte-level BPE over all 256 bytes, plus the end-of-text token


def byte_alphabet() -> list[str]:
    """The 256 byte-level symbols: a tokenizer trained over them encodes any text."""
    return sorted(pre_tokenizers.ByteLevel.alphabet())


def train_tokenizer(texts: Sequence[str], vocab_size: int, alphabet: Sequence[str] | None = None,
                    spec: str = "bpe") -> TextTokenizer:
    """A deterministic byte-level BPE with `<|endoftext|>` (id 0): the same texts and vocabulary size give the
    same tokenizer.json. `alphabet`: the byte-level symbols it starts from (default: all 256 bytes)."""
    alphabet = list(byte_alphabet() if alphabet is None else alphabet)
    if vocab_size < len(alphabet) + 1:
        raise CurateError(f"tokenizer vocabulary {vocab_size} is below the alphabet size {len(alphabet) + 1}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOT_TOKEN],
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer)
    return TextTokenizer(tok, spec)


def hf_tokenizer_config(context: int | None = None) -> dict:
    """`tokenizer_config.json` beside a copied `tokenizer.json`: `AutoTokenizer` then loads the file as it is, with
    the end-of-text token (in the vocabulary) as pad/eos/bos, instead of a GPT-NeoX tokenizer that appends
    `<|padding|>` past the model's embeddings. With a model's `context` (its folder's tokenizer): `model_max_length`
    = the context, so truncation cuts a text to what the model reads, and left padding, so every row of a padded
    batch generates from its own last token."""
    config: dict = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": EOT_TOKEN, "bos_token": EOT_TOKEN,
                    "pad_token": EOT_TOKEN, "clean_up_tokenization_spaces": False}
    if context is not None:
        config.update(model_max_length=int(context), padding_side="left")
    return config


def end_of_text_id(tokenizer_file: str | Path) -> int | None:
    """The id of `<|endoftext|>` in a `tokenizer.json` file (None when it has none)."""
    eot = Tokenizer.from_file(str(tokenizer_file)).token_to_id(EOT_TOKEN)
    return None if eot is None else int(eot)


TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"


def save_tokenizer_folder(tok: TextTokenizer, out_dir: str | Path) -> Path:
    """A tokenizer folder, written atomically: `tokenizer.json` and `tokenizer_config.json` (`hf_tokenizer_config`:
    the end-of-text token as pad, in the vocabulary, as checkpoints have it), loadable by `load_tokenizer` and
    transformers' `AutoTokenizer`."""
    with atomic_dir(out_dir) as tmp:
        tok.tok.save(str(tmp / TOKENIZER_FILE))
        write_json(tmp / TOKENIZER_CONFIG_FILE, hf_tokenizer_config())
    return Path(out_dir)


def load_tokenizer(spec: str | Path) -> TextTokenizer:
    """A `tokenizer.json` path, a folder holding one, or a transformers name (local cache only at run time)."""
    p = Path(spec)
    if p.is_dir() and (p / "tokenizer.json").is_file():
        p = p / "tokenizer.json"
    if p.suffix == ".json" or p.is_file():
        if not p.is_file():
            raise CurateError(f"{p}: tokenizer file not found")
        try:
            return TextTokenizer(Tokenizer.from_file(str(p)), str(p))
        except Exception as e:  # tokenizers raises plain Exception subclasses
            raise CurateError(f"{p}: not a tokenizers JSON file ({str(e).splitlines()[0][:120]})") from None
    offline = hub_offline()
    try:
        from transformers import AutoTokenizer  # here, not at the top: importing transformers takes ~3.5 s

        hf = AutoTokenizer.from_pretrained(str(spec), local_files_only=offline)  # offline: the cache only, no retries
    except Exception as e:
        if offline:
            raise CurateError(f"tokenizer {offline_message(str(spec))}") from None
        raise CurateError(f"tokenizer {spec!r}: not a file and not loadable by transformers ({type(e).__name__})") from None
    if not getattr(hf, "is_fast", False):
        raise CurateError(f"tokenizer {spec!r}: only fast (tokenizers-backed) tokenizers are supported")
    return TextTokenizer(hf.backend_tokenizer, str(spec))


def pack_rows(docs: Sequence[Sequence[int]], row_len: int, eot_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate documents, each followed by `eot_id`, and cut the stream into rows of `row_len`.

    Returns (rows, owners), both (n, row_len) int64: the tokens and the index of the document each
    token came from. The tail that does not fill a whole row is dropped.
    """
    if row_len < 2:
        raise CurateError(f"row length {row_len} is too short")
    lengths = np.array([len(d) + 1 for d in docs], dtype=np.int64)
    total = int(lengths.sum())
    stream = np.empty(total, dtype=np.int64)
    doc_of_token = np.repeat(np.arange(len(docs), dtype=np.int64), lengths)
    pos = 0
    for d in docs:
        n = len(d)
        stream[pos : pos + n] = d
        stream[pos + n] = eot_id
        pos += n + 1
    n_rows = total // row_len
    rows = stream[: n_rows * row_len].reshape(n_rows, row_len)
    owners = doc_of_token[: n_rows * row_len].reshape(n_rows, row_len)
    return rows, owners


def main_document(owners: np.ndarray) -> np.ndarray:
    """Per row, the document that supplies the most tokens (ties: the earlier one)."""
    n, L = owners.shape
    out = np.empty(n, dtype=np.int64)
    for i in range(n):
        ids, counts = np.unique(owners[i], return_counts=True)
        out[i] = ids[int(np.argmax(counts))]
    return out


def shuffle_rows(n_rows: int, seed: int) -> np.ndarray:
    """The training order of packed rows (Pythia's rows are shuffled): a seeded permutation."""
    return np.random.default_rng(seed).permutation(n_rows)
