"""`curate circuits CHECKPOINT`: induction and previous-token scores of every head, with localized heads flagged."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from curate.commands.feedback import heartbeat
from curate.commands.options import command
from curate.errors import CurateError
from curate.options import arg, flag, opt, workspace_opt
from curate.tokenize import load_tokenizer


def checkpoint_tokenizer(checkpoint: Path | None) -> tuple[int | None, int | None]:
    """(vocabulary size, end-of-text id) of the `tokenizer.json` a checkpoint folder ships, or (None, None)."""
    tokenizer_file = checkpoint / "tokenizer.json" if checkpoint is not None else None
    if tokenizer_file is None or not tokenizer_file.is_file():
        return None, None
    tok = load_tokenizer(tokenizer_file)
    return tok.vocab_size, tok.eot_id


def circuits_report(checkpoint: str, probes: int, seed: int, half_len: int | None, revision: str | None) -> tuple[dict, object]:
    """Load the checkpoint, score every head and localize each registered circuit: (report dict, HeadScores)."""
    # torch, the attribution modules and the model loader take seconds to import: only where a model is scored
    import torch

    from curate.attribution.circuits import CIRCUITS
    from curate.attribution.heads import HeadRef
    from curate.attribution.metrics import head_scores
    from curate.attribution.probes import probe_spec
    from curate.training.models import load_model, resolve_checkpoint_dir

    folder = resolve_checkpoint_dir(checkpoint, revision)
    if revision is not None and folder is not None and folder.resolve() == Path(checkpoint).expanduser().resolve():
        raise CurateError(f"{checkpoint}: a model folder without revisions (no {revision}/ in it); drop --revision {revision}")
    model = load_model(checkpoint, revision=revision)
    tok_vocab, eot = checkpoint_tokenizer(folder)
    spec = probe_spec(model.config, vocab_size=tok_vocab, eot_id=eot, n=probes, half_len=half_len, seed=seed)
    tokens = spec.draw()
    with torch.no_grad():
        scores = head_scores(model, tokens)
    localized = {name: c.localize(model, tokens, scores=scores) for name, c in CIRCUITS.items()}
    rows = []
    for layer in range(scores.num_layers):
        for h in range(scores.num_heads):
            head = HeadRef(layer, h)
            flags = [name for name, loc in localized.items() if head in loc.heads]
            flags += [f"{name}?" for name, loc in localized.items() if head in loc.rejected]
            rows.append({
                "head": str(head),
                "layer": layer,
                "index": h,
                "induction": float(scores.induction[layer, h]),
                "previous_token": float(scores.previous_token[layer, h]),
                "flags": flags,
            })
    report = {
        "checkpoint": checkpoint,
        "revision": revision,
        "probes": spec.to_json(),
        "heads": rows,
        "localized": {name: loc.to_json() for name, loc in localized.items()},
    }
    return report, scores


def print_table(report: dict) -> None:
    """The per-head table and the localization notes, with rich."""
    console = Console()
    probes = report["probes"]
    table = Table(title=escape(f"Head scores: {report['checkpoint']} ({probes['n']} probes [r, r], L={probes['half_len']}, seed {probes['seed']})"))
    for col in ("layer", "head", "induction", "prev-token", "localized"):
        table.add_column(col, justify="right" if col != "localized" else "left")
    for row in report["heads"]:
        flagged = bool([f for f in row["flags"] if not f.endswith("?")])
        style = "bold green" if flagged else ("yellow" if row["flags"] else None)
        table.add_row(str(row["layer"]), str(row["index"]), f"{row['induction']:.3f}", f"{row['previous_token']:.3f}",
                      ", ".join(row["flags"]), style=style)
    console.print(table)
    for name, loc in report["localized"].items():
        heads = ", ".join(loc["heads"]) or "none"
        console.print(f"{name} (threshold {loc['threshold']:g}): {heads}")
        for note in loc["notes"]:
            console.print(escape(f"  note: {note}"))
    if any(loc["rejected"] for loc in report["localized"].values()):
        console.print("flag 'NAME?' = over the threshold but not localized (see notes)")


@dataclass
class CircuitsOptions:
    """`curate circuits`."""

    checkpoint: str | None = arg(None, help="Shorthand for --model MODEL.", metavar="MODEL")
    model: str | None = opt(None, "--model", help="Model checkpoint: an HF model folder, a run folder (+ --revision stepK) or a hub name.", show_default=False)
    probes: int = opt(32, "--probes", help="Number of random repeated-token probes [r, r].")
    seed: int = opt(0, "--seed", help="Seed of the probe tokens.")
    half_len: int | None = opt(None, "--half-len", help="Length L of r (probes are 2L tokens; default: min(32, context / 2)).", show_default=False)
    revision: str | None = opt(None, "--revision", help="Checkpoint revision, e.g. step1000 (run folders and hub names).")
    as_json: bool = opt(False, "--json", help="Print the report as JSON instead of a table.")
    workspace: Path | None = workspace_opt()


    def validate(self) -> None:
        if (self.model is None) == (self.checkpoint is None):
            raise CurateError(f"give the model as {flag(self, 'model')} MODEL (or MODEL alone)"
                              + (", not both" if self.model is not None else ""))

    @property
    def model_path(self) -> str:
        """The model to score: --model, or the positional shorthand."""
        return str(self.model if self.model is not None else self.checkpoint)


def circuits_command(o: CircuitsOptions) -> None:
    """Score every head's induction and previous-token attention and flag the localized heads."""
    with heartbeat("circuits: loading the model and scoring every head", quiet=o.as_json):
        report, _ = circuits_report(o.model_path, o.probes, o.seed, o.half_len, o.revision)
    if o.as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        print_table(report)


def register(app: typer.Typer) -> None:
    command(app, "circuits", CircuitsOptions, circuits_command,
            example="curate circuits --model curate-workspace/default/runs/reference --revision step2000")
