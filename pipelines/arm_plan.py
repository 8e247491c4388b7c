"""How long the arms train and which rows they may read (never held-out rows), the neighbour pool, every arm's
mix (`build-mix`, with the exact command) and every (arm, seed) training spec."""
from __future__ import annotations

import json
import math
import shlex
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from curate.amounts import parse_amount
from curate.augment.index import IndexParams, build_index
from curate.augment.mix import build_mix
from curate.corpus import open_corpus, training_rows
from curate.errors import CurateError
from curate.attribution.scores_folder import Window
from curate.pipelines.arms import ArmRun, arm_defs, mix_folder, run_folder, run_key
from curate.pipelines.experiment_setting import Setting, abs_path, run_numerics
from curate.pipelines.methods import PRIMARY
from curate.training.presets import weights_training_fields
from curate.training.spec import TrainSpec, stored_spec

Log = Callable[[str], None]

POOL_MIN_ROWS = 20_000  # the neighbour pool: the first rows after every arm's training rows, at least this many
POOL_PER_ADDED = 10  # ... or 10 per added row, whichever is more (and never into the held-out rows)


# --------------------------------------------------------------------------- arm length and pools


def default_arm_steps(window_start: int, window_end: int, eval_every: int, run_steps: int | None) -> int:
    """How long an arm trains unless told: to the window's end plus the window's length rounded up to whole
    evaluation intervals (room for a delay up to the window's length), at most the scored run's length. The
    experiment's arms and the train command `build-mix` prints both use it (the default: 1,700 + 1,700 = 3,400)."""
    every = max(1, eval_every)
    steps = window_end + math.ceil((window_end - window_start) / every) * every
    return min(steps, run_steps) if run_steps else steps


@dataclass
class ArmPlan:
    steps: int
    n_remove: int
    n_add: int
    pool: tuple[int, int] | None  # rows no arm trains on (neighbour pool)
    row_limit: int  # the first row of the corpus no arm may read (its held-out rows, or the end)
    notes: list[str] = field(default_factory=list)


def plan_arms(s: Setting, window: Window, run_json: dict) -> ArmPlan:
    """How long the arms train, and the row budget: no arm may read held-out rows."""
    b = s.baseline
    window_rows = (window.end_step - window.start_step) * b.batch_size
    uses_remove = any(a.startswith("remove-") for a in s.arms)
    n_remove = parse_amount(s.opts.k, window_rows, "rows removed")
    n_add = parse_amount(s.opts.augment, window_rows, "rows added")
    limit = row_limit(b.corpus, run_json)
    extra = n_remove if uses_remove else 0
    cap = (limit - extra) // b.batch_size
    notes: list[str] = []
    if s.opts.steps is not None:
        steps = s.opts.steps
        if steps > cap:
            raise CurateError(f"steps {steps}: the arms would read past row {limit} of {b.corpus} (held-out rows or the "
                              f"end); at most {cap} steps")
    else:
        steps = default_arm_steps(window.start_step, window.end_step, s.eval_every, int(run_json["spec"]["steps"]) if run_json else None)
        if steps > cap:
            notes.append(f"arms stop at step {cap} (the corpus's rows before the held-out rows run out)")
            steps = cap
    if steps < window.end_step:
        raise CurateError(f"steps {steps}: the arms must train at least to the window's end (step {window.end_step})")
    first_free = steps * b.batch_size + extra
    pool_rows = min(limit - first_free, max(POOL_MIN_ROWS, POOL_PER_ADDED * n_add))
    pool = (first_free, first_free + pool_rows) if pool_rows >= n_add else None
    if "augment-neighbors" in s.arms and pool is None:
        raise CurateError(f"augment-neighbors: only {max(0, limit - first_free)} rows of {b.corpus} lie outside every arm's "
                          f"training rows, fewer than the {n_add} to add; train the arms fewer steps or leave this arm out")
    return ArmPlan(steps, n_remove, n_add, pool, limit, notes)


def row_limit(corpus_path: str, run_json: dict) -> int:
    """The first row of the corpus no arm may read: its held-out rows (`heldout_start`), or, when the scored run held
    out a separate corpus, the corpus's own training rows; else the run's trailing `heldout_rows` (default 64)."""
    corpus = open_corpus(corpus_path)
    heldout = run_json.get("spec", {}).get("heldout") if run_json else None
    start = corpus.meta.extra.get("heldout_start") if corpus.meta is not None and not heldout else None
    if start is not None:
        return int(start)
    if heldout:
        return training_rows(corpus)  # a separate held-out corpus: every row but the corpus's own held-out rows, if any
    return corpus.num_rows - int(run_json.get("spec", {}).get("heldout_rows", 64) if run_json else 64)


def ensure_pool_index(s: Setting, plan: ArmPlan, log: Log) -> Path | None:
    """The FAISS index of the neighbour pool (rows no arm trains on), built once into EXP/pool-index."""
    if "augment-neighbors" not in s.arms or plan.pool is None:
        return None
    folder = s.out / "pool-index"
    meta = folder / "index.json"
    if meta.is_file():
        info = json.loads(meta.read_text())
        if int(info.get("row_start", -1)) == plan.pool[0] and int(info.get("num_rows", -1)) == plan.pool[1] - plan.pool[0]:
            return folder
    log(f"neighbours: indexing rows [{plan.pool[0]}, {plan.pool[1]}) of the corpus (no arm trains on them)")
    build_index(s.baseline.corpus, folder, params=IndexParams(seed=0), rows=plan.pool)
    return folder


# --------------------------------------------------------------------------- arms


def seed_varies(s: Setting, window: Window) -> str:
    if s.baseline.mode == "external":
        return (f"every arm starts from {s.baseline.model} at step{window.start_step} with a fresh optimizer; training has no "
                "other randomness (no dropout), so a seed only changes the mixes' random choices (random rows, insertion "
                "order, synthetic content); seed-independent arms are trained once")
    if window.start_step == 0:
        return ("seed s re-draws the model's initial weights (init seed = the baseline's seed + s; seed 0 is the scored "
                "run's own initialisation) and the mixes' random choices (random rows, insertion order, synthetic content); "
                "the row order is the same for every seed")
    return (f"every arm starts from the baseline's checkpoint step{window.start_step} (weights, optimizer, RNG); training has no "
            "other randomness (no dropout), so a seed only changes the mixes' random choices (random rows, insertion order, "
            "synthetic content); seed-independent arms (baseline, remove-top) are trained once")


def arm_specs(s: Setting, window: Window, plan: ArmPlan, run_json: dict, mixes: dict[tuple[str, int], Path | None]):
    """The run of every (arm, seed): its TrainSpec (`arm_train_specs`) and its key (the mixes must be built)."""
    return [ArmRun(arm, seed, run_folder(s.out / "arms", arm, seed), spec, run_key(spec))
            for arm, seed, spec in arm_train_specs(s, window, plan, run_json, mixes)]


def arm_train_specs(s: Setting, window: Window, plan: ArmPlan, run_json: dict,
                    mixes: dict[tuple[str, int], Path | None]) -> list[tuple[str, int, TrainSpec]]:
    """(arm, seed, TrainSpec) of every (arm, seed), with absolute paths (Ray workers may run elsewhere); the mixes'
    plan.json files need not exist yet."""
    runs = []
    for arm in s.arms:
        for seed in s.seeds:
            mix = mixes.get((arm, seed))
            plan_path = str((mix / "plan.json").resolve()) if mix is not None else None
            if s.baseline.mode == "external":
                o = s.opts
                init_from, revision = s.baseline.checkpoint(f"step{window.start_step}")
                assert s.baseline.model is not None
                given = {name: getattr(o, name) for name in ("lr", "warmup_steps", "schedule_steps") if getattr(o, name) is not None}
                spec = TrainSpec(
                    **{**weights_training_fields(s.baseline.model), **given},
                    corpus=s.baseline.corpus, init_from=init_from, revision=revision, start_step=window.start_step, plan=plan_path,
                    steps=plan.steps, batch_size=s.baseline.batch_size, eval_every=s.arm_eval_every,
                    checkpoints=o.arm_checkpoints, threads=1, device=o.device,
                    induction_threshold=s.threshold, prev_token_threshold=s.threshold, **run_numerics(o),
                )
            else:
                base = stored_spec(run_json, Path(s.baseline.run_dir))  # type: ignore[arg-type]
                changes = dict(
                    corpus=s.baseline.corpus, heldout=abs_path(base.heldout) if base.heldout else None, plan=plan_path,
                    steps=plan.steps, schedule_steps=int(run_json["schedule_steps"]), start_step=None,
                    batch_size=s.baseline.batch_size, checkpoints=s.opts.arm_checkpoints, threads=1, device=s.opts.device,
                    **run_numerics(s.opts),
                    eval_every=s.arm_eval_every,
                    architecture=None,  # the run's resolved model config (or its checkpoint) carries the shape flags
                )
                if window.start_step == 0:
                    changes.update(init_from=None, revision=None, init_state=False, model_config=run_json["model_config"],
                                   seed=base.seed + seed)
                else:
                    changes.update(init_from=abs_path(s.baseline.run_dir), revision=f"step{window.start_step}", init_state=True,  # type: ignore[arg-type]
                                   model_config=None, seed=base.seed)
                spec = replace(base, **changes)
            runs.append((arm, seed, spec))
    return runs


def build_mixes(s: Setting, scores: "Path | dict[str, Path]", plan: ArmPlan, pool_index: Path | None, log: Log) -> tuple[dict, list[dict]]:
    """Every arm's mix (built once; the folder appears atomically) from the scores of the arm's method (`scores`: one
    folder, or a folder per method); (mix folder per (arm, seed), build-mix commands)."""
    mixes: dict[tuple[str, int], Path | None] = {}
    commands: list[dict] = []
    built: set[Path] = set()
    by_method = scores if isinstance(scores, dict) else {PRIMARY: scores}
    arms = arm_defs()
    for arm in s.arms:
        for seed in s.seeds:
            spec = arms[arm].mix_spec(s.opts.k, s.opts.augment, seed, s.opts.motif_rows,
                                      str(pool_index) if pool_index is not None else None)
            if spec is None:
                mixes[(arm, seed)] = None
                continue
            folder = mix_folder(s.out / "mixes", arm, seed)
            mixes[(arm, seed)] = folder
            if folder in built:
                continue
            built.add(folder)
            source = by_method[arms[arm].method]
            if not (folder / "plan.json").is_file():
                log(f"mix: {folder.name}")
                build_mix(source, folder, spec)
            commands.append({"arm": arm, "seed": spec.seed, "mix": str(folder.resolve()),
                             "command": mix_command(source, folder, spec)})
    return mixes, commands


def mix_command(scores: Path, folder: Path, spec) -> str:
    args = ["curate", "build-mix", str(scores.resolve())]
    if spec.remove:
        args += ["--remove", spec.remove]
    if spec.augment:
        args += ["--augment", spec.augment]
        if spec.control is None:
            args += ["--source", spec.source]
    if spec.control:
        args += ["--control", spec.control]
    if spec.pool:
        args += ["--pool", str(Path(spec.pool).resolve())]
    args += ["--motif-rows", str(spec.top), "--seed", str(spec.seed), "--out", str(folder.resolve())]
    return shlex.join(args)
