"""`curate tokenizer train`: a byte-level BPE trained on one's own text (JSONL or a folder of raw text files)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import typer

from curate.commands.corpus import OUT_ONLY_WORKSPACE_HELP, check_vocab, skipped_note
from curate.commands.options import HELP_OPTIONS, command, save_config
from curate.ingest import train_tokenizer_path
from curate.locks import hold
from curate.options import arg, flag, opt, workspace_opt

tokenizer_app = typer.Typer(
    name="tokenizer",
    help="Train tokenizers on your own text.",
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings=HELP_OPTIONS,
)


@dataclass
class TokenizerTrainOptions:
    """`curate tokenizer train`."""

    input_path: Path = arg(help="JSONL ({\"text\": ...} per line, .gz ok), a folder of raw text files (recursive; any extension, .gz decompressed, UTF-8; binary files skipped) or one text file.", metavar="INPUT")
    vocab: int = opt(..., "--vocab", help="Vocabulary size, <|endoftext|> and the 256 byte symbols included (at least 257).", show_default=False)
    out: Path = opt(..., "--out", help="Output folder: tokenizer.json and tokenizer_config.json (created; replaced if it is a tokenizer folder).", show_default=False)
    workspace: Path | None = workspace_opt(OUT_ONLY_WORKSPACE_HELP)

    def validate(self) -> None:
        check_vocab(self, "vocab")


def train_command(o: TokenizerTrainOptions) -> None:
    """A deterministic byte-level BPE (the same input and --vocab give the same tokenizer.json), with the
    default corpus's special token <|endoftext|> as id 0 (also the pad token in tokenizer_config.json)."""
    with hold(o.out, what="tokenizer folder"):
        tok, docs = train_tokenizer_path(o.input_path, o.vocab, o.out)
        save_config(o.out, "tokenizer-train", o)
    chars = sum(len(t) for t in docs.texts)
    short = (f"; fewer than {flag(o, 'vocab')} {o.vocab:,}: no other pair of tokens occurs twice in the text"
             if tok.vocab_size < o.vocab else "")
    print(f"wrote {o.out}: byte-level BPE of {tok.vocab_size:,} tokens trained on {len(docs.texts):,} documents "
          f"({chars:,} characters{skipped_note(docs.skipped)}{short})")


def register(app: typer.Typer) -> None:
    command(tokenizer_app, "tokenizer-train", TokenizerTrainOptions, train_command, cli_name="train",
            example="curate tokenizer train texts.jsonl --vocab 4096 --out my-tokenizer")
    app.add_typer(tokenizer_app, name="tokenizer")
