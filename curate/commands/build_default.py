"""`curate corpus build-default`: build the embedded mini-Pile corpus into the workspace."""
from __future__ import annotations

from typing import Annotated

import typer

from curate.commands.options import WorkspaceOpt
from curate.workspace import resolve_workspace


def build_default_command(
    workspace: WorkspaceOpt = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the generator, the tokenizer sample and the row order.")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if the corpus exists.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress lines.")] = False,
) -> None:
    """Build the default corpus (generated locally, no download) into WORKSPACE/default/corpus."""
    from curate.default_corpus import build_default_corpus

    out = build_default_corpus(resolve_workspace(workspace), seed=seed, force=force, progress=not quiet)
    typer.echo(str(out))


def register(app: typer.Typer) -> None:
    """Add `build-default` to `curate corpus` (the corpus command group lives in curate.commands.corpus)."""
    from curate.commands.corpus import corpus_app

    corpus_app.command("build-default")(build_default_command)
