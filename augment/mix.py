"""`build-mix`: the attribution window re-ordered as an intervention (top rows removed, rows added) or its
random control, written so that any trainer sees exactly the planned row order.

Semantics are those of `training.plan` (so `plan.json` resolves to the same stream): the kept window rows
keep their order; each added row has an anchor, a position among the kept rows, and sits right before
the kept row at its anchor. Spread evenly: the j-th of A added rows anchors at floor(j * S * B / A) with
S = kept rows // B whole steps (the plan's `"steps": [start, start + S]`); `--at-step N`: all at
(N - start) * B (the plan's `"step": N`).

Output folder (built in a temporary folder, renamed at the end): `mix.bin`/`mix.idx` (the rows in their
new order), `provenance.parquet` (row_id = new position, step = start + row_id // B, source_corpus,
source_row_id, reason, score, then every label column of the source rows' sidecars, such as `domain` or `source`,
null where a row's source has none; `curate.labels`), `plan.json` (drop/insert on the scored corpus, for `curate train --plan`),
`corpus.json` (so `open_corpus(MIX)` works), `tokenizer.json`, `synthetic/` (generated rows, when used)
and `manifest.json` (inputs with checksums, parameters, counts, output checksums).

The pieces: `mix_spec` (the options), `mix_selection` (scores, ranking, removed rows), `mix_sources` (added
rows), `mix_placement` (where they go), `mix_writer` (the folder); this module runs them and writes the manifest.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from curate.amounts import parse_amount
from curate.attribution.scores_folder import ScoresFolder, Window, open_scored_corpus, open_scores, read_window
from curate.augment.checksums import file_input, rows_input, write_manifest
from curate.augment.mix_placement import placement
from curate.augment.mix_selection import rank_rows, removed_rows, window_scores
from curate.augment.mix_sources import Added, added_rows
from curate.augment.mix_spec import MixSpec, default_slug
from curate.augment.mix_writer import write_mix_corpus, write_plan
from curate.atomic import atomic_dir
from curate.corpus import Corpus, training_rows
from curate.errors import CurateError
from curate.outputs import MIX, check_output_folder

__all__ = ["MixResult", "MixSpec", "build_mix", "default_slug", "rank_rows", "window_scores"]


@dataclass
class MixResult:
    out: Path
    counts: dict
    manifest: dict


def build_mix(scores_path: str | Path, out: str | Path, spec: MixSpec,
              before_manifest: Callable[[Path], None] | None = None) -> MixResult:
    """Build a mix folder (atomically); every bad input is one CurateError line and leaves no folder.

    `before_manifest(folder)` may add files to the (temporary) folder before the manifest is written, so that
    the manifest lists and checksums them too (the command's `command.json`)."""
    spec.validate()
    scores = open_scores(scores_path)
    window = read_window(scores)
    base, base_name = open_scored_corpus(scores, window.batch_size)
    if window.stop_row > base.num_rows:
        raise CurateError(
            f"{scores.path}: window steps {window.start_step}-{window.end_step} need rows up to {window.stop_row}, "
            f"but {base.path} has {base.num_rows}"
        )
    if window.stop_row > training_rows(base):
        raise CurateError(
            f"{scores.path}: window steps {window.start_step}-{window.end_step} reach row {window.stop_row - 1}, "
            f"a held-out row of {base.path} (held out from row {training_rows(base)}); a mix never holds held-out rows"
        )
    total = window.rows
    n_remove = parse_amount(spec.remove, total, "remove") if spec.remove is not None else 0
    n_add = parse_amount(spec.augment, total, "augment") if spec.augment is not None else 0
    out = Path(out)
    check_output_folder(out, MIX, [scores.path, base.path, *base.files, spec.pool])
    if spec.pool is not None and spec.control is None and not Path(spec.pool).exists():
        raise CurateError(f"pool {spec.pool}: no such file or folder")
    kept_count = total - n_remove
    if kept_count + n_add == 0:
        raise CurateError(f"remove {spec.remove}: removes every window row and nothing is added; the mix would be empty")
    anchors, plan_place = placement(n_add, kept_count, window, spec.at_step) if n_add else (np.zeros(0, np.int64), {})

    values = window_scores(scores, window)
    ranked = rank_rows(values)
    random_control = spec.control == "random"
    need_ranked = 0 if random_control else max(n_remove, n_add if spec.source == "top" else 0)
    if need_ranked > len(ranked):
        raise CurateError(f"{scores.path}: {len(ranked)} window rows are scored, fewer than the {need_ranked} top rows to select")
    if not random_control and n_add and spec.source != "top" and len(ranked) == 0:
        raise CurateError(f"{scores.path}: no window row is scored")
    removed = removed_rows(spec, ranked, total, n_remove)
    removed_mask = np.zeros(total, dtype=bool)
    removed_mask[removed] = True

    with atomic_dir(out) as tmp:
        added = added_rows(spec, scores, base, base_name, window, ranked, values, n_add, tmp)
        counts, window_sha, streamed = write_mix_corpus(tmp, base, window, removed_mask, anchors, added, values, base_name,
                                                        spec.chunk_rows)
        write_plan(tmp, Path(out), base_name, window, removed, added, plan_place)
        if before_manifest is not None:
            before_manifest(tmp)
        manifest = _manifest(spec, scores, base, base_name, window, window_sha, counts, added, n_remove, n_add, len(ranked))
        manifest = write_manifest(tmp, manifest, known=streamed)
    return MixResult(out, counts, manifest)


def _manifest(
    spec: MixSpec, scores: ScoresFolder, base: Corpus, base_name: str, window: Window, window_sha: str, counts: dict,
    added: Added | None, n_remove: int, n_add: int, scored: int,
) -> dict:
    inputs: dict = {"scores_summary": file_input(scores.summary_path)}
    for f in scores.shards:
        inputs[f"scores_shard:{f.name}"] = file_input(f)
    inputs["window_rows"] = rows_input(base, window_sha, row_range=(window.first_row, window.stop_row), path=base_name)
    tok = base.tokenizer_spec()
    if tok and Path(tok).is_file():
        inputs["tokenizer"] = file_input(tok)
    if added is not None:
        inputs.update(added.inputs)
    params = {k: v for k, v in asdict(spec).items() if k != "chunk_rows"}
    body = {
        "kind": "mix",
        "created_by": "curate build-mix",
        "scores": str(scores.path.resolve()),
        "circuit": scores.summary.get("circuit"),
        "heads": scores.summary.get("heads"),
        "parameters": params,
        "seed": spec.seed,
        "resolved": {"remove_rows": n_remove, "augment_rows": n_add, "scored_rows": scored,
                     "selection": "random" if spec.control == "random" else ("top" if not n_add else spec.source)},
        "window": {"start_step": window.start_step, "end_step": window.end_step, "batch_size": window.batch_size,
                   "rows": [window.first_row, window.stop_row]},
        "counts": counts,
        "inputs": inputs,
    }
    if added is not None and added.info:
        body["added"] = added.info
    return body
