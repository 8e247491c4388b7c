"""`curate build-mix`, `curate synth`, `curate verify`: intervention mixes of the attribution window,
synthetic motif rows, and the checksum check of either."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from curate.errors import CurateError
from curate.commands.options import WorkspaceOpt
from curate.workspace import resolve_workspace


def register(app: typer.Typer) -> None:
    @app.command("build-mix")
    def build_mix_cmd(
        scores: Annotated[Path, typer.Argument(help="Scores folder (summary.json + shards/*.parquet).", show_default=False)],
        remove: Annotated[Optional[str], typer.Option("--remove", help="Drop the top rows of the window: 10%, 0.1 or a row count.")] = None,
        augment: Annotated[Optional[str], typer.Option("--augment", help="Add rows: 2%, 0.02 or a row count (of the window).")] = None,
        source: Annotated[str, typer.Option("--source", help="Added rows: top (duplicates of the top rows), neighbors (structural neighbours from --pool) or synthetic (motif rows).")] = "top",
        pool: Annotated[Optional[str], typer.Option("--pool", help="neighbors: a corpus or structure index folder (default: SCORES/index, else the scored corpus); synthetic: a `curate synth` corpus (default: generate).")] = None,
        at_step: Annotated[Optional[int], typer.Option("--at-step", help="Insert all added rows at this step (default: spread evenly over the window).")] = None,
        control: Annotated[Optional[str], typer.Option("--control", help="random: same sizes with random window rows (the control arm).")] = None,
        top: Annotated[int, typer.Option("--top", help="Top rows mined for motifs (synthetic) or queried for neighbours.")] = 2000,
        seed: Annotated[int, typer.Option("--seed", help="Seed of every random choice.")] = 0,
        out: Annotated[Optional[Path], typer.Option("--out", help="Mix folder (default: WORKSPACE/mixes/CIRCUIT-<options>).")] = None,
        workspace: WorkspaceOpt = None,
    ) -> None:
        """Write the window's rows in a new order (top rows removed and/or rows added) as .bin/.idx + provenance + plan."""
        from curate.augment.explain import open_scores
        from curate.augment.mix import MixSpec, build_mix, default_slug

        spec = MixSpec(remove=remove, augment=augment, source=source, pool=pool, at_step=at_step, control=control, seed=seed, top=top)
        spec.validate()
        if out is None:
            circuit = open_scores(scores).summary.get("circuit") or "scores"
            out = resolve_workspace(workspace) / "mixes" / f"{circuit}-{default_slug(spec)}"
        result = build_mix(scores, out, spec)
        c = result.counts
        reasons = ", ".join(f"{k} {v:,}" for k, v in c["by_reason"].items())
        typer.echo(
            f"mix of {c['window_rows']:,} window rows: removed {c['removed']:,}, added {c['added']:,} -> {c['rows']:,} rows "
            f"({reasons}) -> {result.out}"
        )
        typer.echo(f"train on it: curate train --plan {result.out / 'plan.json'}   check it: curate verify {result.out}")

    @app.command("synth")
    def synth_cmd(
        scores: Annotated[Path, typer.Option("--from", help="Scores folder whose top rows give the motifs.", show_default=False)],
        rows: Annotated[int, typer.Option("--rows", help="Synthetic rows to write.", show_default=False)],
        out: Annotated[Path, typer.Option("--out", help="Output corpus folder.", show_default=False)],
        top: Annotated[int, typer.Option("--top", help="Top rows to mine motifs from.")] = 2000,
        seed: Annotated[int, typer.Option("--seed", help="Seed of the fresh content.")] = 0,
        workspace: WorkspaceOpt = None,
    ) -> None:
        """Mine the top rows' structural motifs and write new rows that repeat them with fresh content (a corpus folder)."""
        from curate.augment.synth import synthesize_from_scores

        summary = synthesize_from_scores(scores, out, rows=rows, top=top, seed=seed)
        mined, gen = summary["mined"], summary["generated"]
        labels = ", ".join(f"{k} {v}" for k, v in mined["labels"].items())
        typer.echo(f"mined {mined['motifs']} motifs ({labels}); {mined['spans']} long repeats, mean length {mined['mean_span_length']:.1f}")
        typer.echo(
            f"wrote {gen['rows']:,} rows ({gen['rows_with_spans']:,} with long repeats, {gen['spans']:,} repeats, "
            f"mean fresh share {gen['mean_fresh_share']:.2f}) -> {out}"
        )

    @app.command("verify")
    def verify_cmd(
        folder: Annotated[Path, typer.Argument(help="A mix (build-mix) or synthetic corpus (synth) folder.", show_default=False)],
        outputs_only: Annotated[bool, typer.Option("--outputs-only", help="Check the folder's own files only, not its inputs.")] = False,
        workspace: WorkspaceOpt = None,
    ) -> None:
        """Recheck every checksum in the folder's manifest.json (outputs, and inputs unless --outputs-only)."""
        from curate.augment.checksums import verify_folder

        problems, checks = verify_folder(folder, check_inputs=not outputs_only)
        if problems:
            for line in problems[:-1]:
                print(f"error: {line}", file=sys.stderr)
            raise CurateError(problems[-1])  # the CLI prints it as the last `error:` line and exits 2
        typer.echo(f"ok: {checks} checksums match ({folder})")
