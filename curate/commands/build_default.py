"""`curate corpus build-default`: build the embedded mini-Pile corpus into the workspace."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import typer

from curate.commands.corpus import corpus_app
from curate.commands.options import command
from curate.options import opt, workspace_opt
from curate.workspace import resolve_workspace


@dataclass
class BuildDefaultOptions:
    """`curate corpus build-default`."""

    workspace: Path | None = workspace_opt()
    seed: int = opt(0, "--seed", help="Seed of the generator, the tokenizer sample and the row order.")
    force: bool = opt(False, "--force", help="Rebuild even if the corpus exists.")
    quiet: bool = opt(False, "--quiet", "-q", help="No progress lines.")


def build_default_command(o: BuildDefaultOptions) -> None:
    """Build the default corpus (generated locally, no download) into WORKSPACE/default/corpus."""
    from curate.default_corpus import build_default_corpus  # the generator and BPE trainer: ~0.8 s to import (measured)

    out = build_default_corpus(resolve_workspace(o.workspace), seed=o.seed, force=o.force, progress=not o.quiet)
    typer.echo(str(out))


def register(app: typer.Typer) -> None:
    """Add `build-default` to `curate corpus` (the corpus command group lives in curate.commands.corpus)."""
    command(corpus_app, "build-default", BuildDefaultOptions, build_default_command,
            example="curate corpus build-default --workspace curate-workspace")
