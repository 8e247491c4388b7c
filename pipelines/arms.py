"""The arms of the causal validation: what each arm changes in the attribution window (a `build-mix` spec), the
training spec of every (arm, seed) run, and running them (in-process, or on Ray actors with one torch thread
each), skipping every run whose folder already holds a finished run of the same spec.

Test hook (read by the DRIVER from its environment and passed to the Ray workers, like `pipelines.actors`'s):
`CURATE_FAULT_ARM_HOLD=<folder>`: a Ray arm worker holds each run just before the batch of step `steps // 2`
(its checkpoints up to there saved), writes `<folder>/<run>.held` (JSON: out_dir, node) and waits until
`<folder>/<run>.go` or `<folder>/all.go` exists; a run resumed after `all.go` is not held again. It lets a test
remove a node while a run is known to be unfinished on it.

Every arm retrains from the window's first checkpoint, with the baseline's settings (learning-rate schedule
included) and the baseline's row order; only the plan differs (rows dropped or inserted inside the window).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import ray
import torch

from curate.augment.mix import MixSpec
from curate.errors import CurateError
from curate.pipelines.methods import PRIMARY, method_arms, method_names
from curate.pipelines.ray_pool import ActorPool, Task, ray_session
from curate.training.curves import SUMMARY_JSON
from curate.training.models import RUN_FILE
from curate.training.plan import TrainingPlan, load_plan
from curate.training.spec import TrainSpec, spec_hash
from curate.training.trainer import train

Log = Callable[[str], None]

ARM_HOLD_ENV = "CURATE_FAULT_ARM_HOLD"
ARM_HOLD_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class ArmDef:
    """One arm: which rows it removes / adds, and whether its mix depends on the seed."""
    name: str
    description: str
    remove: bool = False
    augment: bool = False
    source: str = "top"
    control: bool = False
    seeded_mix: bool = True  # the mix makes a random choice (rows, insertion order, synthetic content)
    method: str = PRIMARY  # the scoring method whose top rows the arm takes (`pipelines.methods`)

    @property
    def targeted(self) -> bool:
        """Takes the top rows of a method's scores (not the baseline, not a random control)."""
        return (self.remove or self.augment) and not self.control

    @property
    def control_arm(self) -> str | None:
        """The random control of the same size a targeted arm is tested against."""
        if not self.targeted:
            return None
        return "remove-random" if self.remove else "augment-random"

    @property
    def expected(self) -> str | None:
        """The way a targeted arm should move formation: "later" (removing) or "sooner" (adding)."""
        if not self.targeted:
            return None
        return "later" if self.remove else "sooner"

    def mix_spec(self, k: str, augment: str, seed: int, top: int, pool: str | None = None) -> MixSpec | None:
        """The `build-mix` spec of this arm (None for the baseline)."""
        if not (self.remove or self.augment):
            return None
        return MixSpec(
            remove=k if self.remove else None,
            augment=augment if self.augment else None,
            source="top" if self.control else self.source,
            pool=pool if self.source == "neighbors" and not self.control else None,
            control="random" if self.control else None,
            seed=seed if self.seeded_mix else 0,
            top=top,
        )


MDA_ARMS: tuple[ArmDef, ...] = (
    ArmDef("baseline", "the window unchanged"),
    ArmDef("remove-top", "the top-k rows of the window removed", remove=True, seeded_mix=False),
    ArmDef("remove-random", "k random rows of the window removed (control)", remove=True, control=True),
    ArmDef("augment-top", "the top rows duplicated, spread over the window", augment=True),
    ArmDef("augment-random", "random window rows duplicated, spread over the window (control)", augment=True, control=True),
    ArmDef("augment-neighbors", "structural neighbours of the top rows (FAISS, from rows no arm trains on) added",
           augment=True, source="neighbors"),
    ArmDef("augment-synthetic", "synthetic rows built from the top rows' motifs added", augment=True, source="synthetic"),
)
ALL_ARMS = tuple(a.name for a in MDA_ARMS)
"""The arms of MDA's scores and the controls (the default arm list)."""
SCALE_ARMS = ("baseline", "augment-top", "augment-random", "augment-synthetic")


def arm_defs() -> dict[str, ArmDef]:
    """Every arm by name, in canonical order: MDA's arms and controls, then a remove-top and an augment-top arm
    per other method of the registry (`pipelines.methods`)."""
    out = {a.name: a for a in MDA_ARMS}
    for m in method_names():
        if m == PRIMARY:
            continue
        remove, augment = method_arms(m)
        out[remove] = ArmDef(remove, f"the top-k rows by {m} removed", remove=True, seeded_mix=False, method=m)
        out[augment] = ArmDef(augment, f"the top rows by {m} duplicated, spread over the window", augment=True, method=m)
    return out


def arm_def(name: str) -> ArmDef:
    arms = arm_defs()
    if name not in arms:
        raise CurateError(f"unknown arm {name!r} (known: {', '.join(arms)})")
    return arms[name]


def parse_arms(text: str | None, default: tuple[str, ...] = ALL_ARMS, include_baseline: bool = True) -> list[str]:
    """A comma-separated arm list (in the canonical order, the baseline included unless told not); None = `default`."""
    arms = arm_defs()
    if text is None:
        names = list(default)
    else:
        names = [t.strip() for t in str(text).split(",") if t.strip()]
        if not names:
            raise CurateError(f"{text!r}: name at least one arm (known: {', '.join(ALL_ARMS)})")
        for n in names:
            if n not in arms:
                raise CurateError(f"unknown arm {n!r} (known: {', '.join(arms)})")
    chosen = set(names)
    if include_baseline:
        chosen.add("baseline")
    return [a for a in arms if a in chosen]


def method_arm_names(methods: list[str]) -> list[str]:
    """The remove-top / augment-top arms of the methods in `methods` (MDA's are in `ALL_ARMS`)."""
    return [a for a, d in arm_defs().items() if d.method != PRIMARY and d.method in methods]


def mix_folder(mixes_dir: Path, arm: str, seed: int) -> Path:
    """Where an arm's mix lives: one per seed when the mix depends on the seed, else one shared folder."""
    return mixes_dir / (f"{arm}-seed{seed}" if arm_def(arm).seeded_mix else arm)


def run_folder(arms_dir: Path, arm: str, seed: int) -> Path:
    return arms_dir / arm / f"seed{seed}"


# --------------------------------------------------------------------------- run specs


@dataclass
class ArmRun:
    """One (arm, seed) training run."""
    arm: str
    seed: int
    out_dir: Path
    spec: TrainSpec
    key: str  # identifies the trajectory: runs with equal keys are the same run (trained once)
    same_as: Path | None = None  # the folder of the identical run trained for another (arm, seed)

    @property
    def label(self) -> str:
        return f"{self.arm} seed {self.seed}"


def run_key(spec) -> str:
    """Hash of the trajectory-defining spec (as `training.spec.spec_hash` computes it, plan by content)."""
    plan = load_plan(spec.plan) if spec.plan is not None else TrainingPlan()
    return spec_hash(spec, plan)


def dedupe(runs: list[ArmRun]) -> list[ArmRun]:
    """Mark every run whose key equals an earlier run's (`same_as` = that run's folder); returns the runs to train."""
    first: dict[str, ArmRun] = {}
    unique = []
    for r in runs:
        if r.key in first:
            r.same_as = first[r.key].out_dir
        else:
            first[r.key] = r
            unique.append(r)
    return unique


def is_finished(out_dir: Path, key: str) -> bool:
    """A finished run of this spec is in `out_dir` (complete summary, same spec hash)."""
    try:
        summary = json.loads((out_dir / SUMMARY_JSON).read_text())
        run = json.loads((out_dir / RUN_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return summary.get("complete") is True and run.get("spec_hash") == key


def check_run_folder(run: ArmRun) -> None:
    """A folder that holds a run of another spec is an error (never overwritten silently)."""
    path = run.out_dir / RUN_FILE
    if path.is_file():
        try:
            saved = json.loads(path.read_text()).get("spec_hash")
        except json.JSONDecodeError:
            saved = None
        if saved != run.key:
            raise CurateError(f"{run.out_dir}: holds a run of other settings (spec {saved}, this arm {run.key}); "
                              f"rerun the arm {run.arm} or use another output folder")


# --------------------------------------------------------------------------- running


class ArmWorker:
    """A Ray actor that trains arm runs, one torch thread, one at a time."""
    def __init__(self) -> None:
        torch.set_num_threads(1)

    def train(self, spec_json: dict, out_dir: str, hold: str | None = None) -> dict:
        spec = TrainSpec.from_json(spec_json)
        on_batch = _holder(Path(hold), Path(out_dir), spec.steps // 2, ray.get_runtime_context().get_node_id()) if hold else None
        result = train(spec, Path(out_dir), progress=False, resume=True, on_batch=on_batch)
        return {"out_dir": out_dir, "wall_s": (result.summary.get("timing") or {}).get("wall_s"),
                "node": ray.get_runtime_context().get_node_id()}


def _holder(folder: Path, out_dir: Path, at_step: int, node: str) -> Callable[..., None]:
    """The `CURATE_FAULT_ARM_HOLD` batch hook (module docstring): hold before step `at_step` until released."""
    name = "-".join(out_dir.parts[-2:])
    release_all = folder / "all.go"

    def hold(step: int, *_batch) -> None:
        if step != at_step or release_all.exists():
            return
        (folder / f"{name}.held").write_text(json.dumps({"out_dir": str(out_dir), "node": node}))
        deadline = time.monotonic() + ARM_HOLD_TIMEOUT_S
        while not (release_all.exists() or (folder / f"{name}.go").exists()):
            if time.monotonic() > deadline:
                raise CurateError(f"${ARM_HOLD_ENV}: {name} held for {ARM_HOLD_TIMEOUT_S:.0f} s, never released")
            time.sleep(0.05)

    return hold


def train_runs(runs: list[ArmRun], workers: int, log: Log, progress: bool = False, device: str = "cpu") -> dict:
    """Train every run not finished yet: in-process when one worker, else on Ray actors. Returns counts."""
    todo = [r for r in dedupe(runs) if not is_finished(r.out_dir, r.key)]
    for r in todo:
        check_run_folder(r)
    skipped = len([r for r in runs if r.same_as is None]) - len(todo)
    if skipped:
        log(f"arms: {skipped} run(s) already finished, skipped")
    if not todo:
        return {"trained": 0, "skipped": skipped, "workers": 0, "retried": []}
    workers = max(1, min(workers, len(todo)))
    if workers == 1:
        for i, r in enumerate(todo):
            log(f"arms: training {r.label} ({i + 1}/{len(todo)}) -> {r.out_dir}")
            train(r.spec, r.out_dir, progress=progress, resume=True)  # type: ignore[arg-type]
        return {"trained": len(todo), "skipped": skipped, "workers": 1, "retried": []}
    retried = _train_on_ray(todo, workers, log, device)
    return {"trained": len(todo), "skipped": skipped, "workers": workers, "retried": retried}


def _train_on_ray(todo: list[ArmRun], workers: int, log: Log, device: str) -> list[str]:
    """Train the runs on Ray actors; a run whose actor died (its node lost, its process killed) is trained again
    on a fresh actor, resuming from its last checkpoint (at most `ray_pool.DEFAULT_MAX_ATTEMPTS` tries).
    Returns the labels of the runs that were retried."""
    with ray_session(None, num_cpus=workers) as session:
        gpus = 1.0 if device == "cuda" else 0.0
        if gpus and session.gpus < 1:
            raise CurateError("device cuda: the Ray session has no GPU")
        remote_cls = ray.remote(ArmWorker).options(num_cpus=1, num_gpus=gpus, max_restarts=0, scheduling_strategy="SPREAD")
        size = min(workers, session.gpus) if gpus else workers
        log(f"arms: {len(todo)} run(s) on {size} Ray worker(s)")
        retried: list[str] = []

        def lost(retry) -> None:
            r = todo[retry.key]
            if is_finished(r.out_dir, r.key):  # it had written its last files: the rerun finds it finished
                log(f"arms: the worker of {r.label} died ({retry.error}) after the run had finished; kept")
                return
            retried.append(r.label)
            log(f"arms: the worker training {r.label} died ({retry.error}); training it again from its last checkpoint "
                f"(attempt {retry.attempt + 1})")

        pool = ActorPool(lambda: remote_cls.remote(), max(1, size), on_retry=lost)
        done = {"n": 0}

        def finished(task: Task, result: dict) -> None:
            done["n"] += 1
            r = todo[task.key]
            wall = result.get("wall_s")
            node = f" on node {str(result['node'])[:8]}" if not session.started_here and result.get("node") else ""  # a joined Ray: which node
            log(f"arms: finished {r.label} ({done['n']}/{len(todo)})" + (f" in {wall:.0f} s" if wall else "") + node)

        try:
            hold = os.environ.get(ARM_HOLD_ENV) or None  # test hook (module docstring)
            pool.run("train", [Task(i, (r.spec.to_json(), str(r.out_dir), hold)) for i, r in enumerate(todo)], finished, phase="arms")  # type: ignore[attr-defined]
        finally:
            pool.shutdown()
        return retried


def discard(arms_dir: Path, mixes_dir: Path, arm: str) -> None:
    """`--rerun ARM`: remove the arm's runs and mixes so they are built and trained again."""
    shutil.rmtree(arms_dir / arm, ignore_errors=True)
    if mixes_dir.is_dir():
        for p in mixes_dir.iterdir():
            if p.name == arm or p.name.startswith(f"{arm}-seed"):
                shutil.rmtree(p, ignore_errors=True)

