"""`curate score`: head-restricted influence of every row of an attribution window, sharded over Ray actors.

Two stages (this module resolves; `pipelines.score_run` runs):
- `resolve_job(request)`: everything that can fail on bad input, before anything is written to `--out`:
  the corpus and model (building the default corpus and reference run when asked for the defaults), the
  checkpoint (first saved one at/after the circuit formed), the window, the vocabulary check, the heads
  (localized or given), the probe, the EK-FAC fit rows, and the job fingerprint the manifest checks.
- `run_job(job)`: for `--method mda` (the default; the baselines: `pipelines.score_methods`) fits EK-FAC distributed (actors accumulate partial sums of fit-row shards, the driver
  merges them in shard order and caches the factors), preconditions the probe gradients once, scores the
  window's row shards on the actor pool (each actor writes its shard atomically to `<out>/shards/`, the
  driver records it in `<out>/manifest.json`), merges the top-k rows by streaming, and writes
  `<out>/summary.json` last. A rerun skips the shards the manifest lists, so a killed run resumes and
  ends byte-identical to an uninterrupted one.

Output folder: a scores folder (`attribution.scores_folder`: `shards/rows-<start>-<stop>.parquet`,
`top_positive.parquet` / `top_negative.parquet`, `factors/` (EK-FAC cache), `summary.json`) plus the job's
`manifest.json`.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from curate.amounts import parse_amount
from curate.attribution.circuits import Circuit, Localization, get_circuit
from curate.attribution.damping import DAMPING_RULE, DEFAULT_DAMPING_FLOOR
from curate.attribution.fingerprint import model_fingerprint
from curate.attribution.heads import HeadRef
from curate.attribution.influence import fit_data_key, fit_row_ids
from curate.attribution.probes import corpus_probes
from curate.corpus import Corpus, check_token_ids, open_corpus
from curate.default_corpus import ensure_default_corpus
from curate.errors import CurateError
from curate.options import flag
from curate.outputs import SCORES, check_output_folder
from curate.paths import resolve_stored
from curate.pipelines.manifest import MANIFEST_FILE, Manifest, fingerprint_hash
from curate.pipelines.ray_pool import check_ray_address
from curate.pipelines.score_methods import score_method
from curate.pipelines.score_request import ScoreRequest, auto_batch_rows, check_request, parse_window
from curate.pipelines.score_trajectory import checkpoint_folder, checkpoint_weights, resolve_steps
from curate.training.checkpoints import STATE_FILE, load_trainer_state
from curate.training.curves import SUMMARY_JSON
from curate.training.models import CHECKPOINTS_DIR, RUN_FILE, checkpoint_step, list_checkpoints, load_model, resolve_checkpoint_dir
from curate.training.plan import training_rows
from curate.training.reference import ensure_reference_run
from curate.workspace import resolve_workspace, scores_dir

JOB_VERSION = 1
SHOW_TOP = 10  # rows printed (and kept decoded in summary.json) per tail
TEXT_CHARS = 80

Log = Callable[[str], None]


# --------------------------------------------------------------------------- the request


@dataclass
class ScoreJob:
    """A resolved, validated job: what `run_job` executes."""

    request: ScoreRequest
    circuit: Circuit
    corpus: Corpus
    corpus_spec: str  # the corpus as given (absolute): a folder keeps its corpus.json (tokenizer, sidecar)
    model: nn.Module
    checkpoint: str  # where the model came from (path, or hub name@revision)
    checkpoint_step: int | None
    localization: Localization
    heads: list[HeadRef]
    window: tuple[int, int]  # steps [start, end)
    rows: tuple[int, int]  # row ids [start, stop)
    top_k: int
    out: Path
    probes: torch.Tensor
    fit_ids: np.ndarray
    data_key: str
    model_fp: str
    fingerprint: dict
    notes: list[str] = field(default_factory=list)
    trajectory: list["ScoreJob"] = field(default_factory=list)
    """`--checkpoints`: one job per checkpoint (`pipelines.score_trajectory`); empty for a one-checkpoint job."""
    ensemble: list["ScoreJob"] = field(default_factory=list)
    """`--ensemble`: one job per member run (`pipelines.score_ensemble`); empty for a one-model job."""
    weights: list[float] | None = None
    """`--aggregate lr-sum`: each checkpoint's learning rate (`score_trajectory.checkpoint_weights`); else None."""

    @property
    def result_hash(self) -> str:
        """What summary.json records as `fingerprint_hash` (and what experiments reuse a folder by): the manifest's
        fingerprint, plus the aggregation for trajectory scores."""

        if self.trajectory:
            weights = {} if self.weights is None else {"weights": self.weights}
            return fingerprint_hash({**self.fingerprint, "aggregate": self.request.aggregate, **weights})
        return fingerprint_hash(self.fingerprint)

    @property
    def num_rows(self) -> int:
        return self.rows[1] - self.rows[0]

    def shards(self) -> list[tuple[int, int]]:
        """The window's row shards: `shard_rows` each from the window start (the last may be shorter)."""
        step = self.request.shard_rows
        a, b = self.rows
        return [(s, min(s + step, b)) for s in range(a, b, step)]


# --------------------------------------------------------------------------- model and corpus


def _run_dir_of(spec: str | None) -> Path | None:
    """`spec` as a training run folder (has run.json or checkpoints/), else None."""
    if spec is None:
        return None
    p = Path(spec).expanduser()
    if p.is_dir() and ((p / RUN_FILE).is_file() or (p / CHECKPOINTS_DIR).is_dir()):
        return p
    return None


def emergence_checkpoint(run_dir: Path, circuit: Circuit) -> tuple[int, Path, int]:
    """(checkpoint step, its folder, emergence step): the first saved checkpoint at/after the circuit formed."""
    path = run_dir / SUMMARY_JSON
    if not path.is_file():
        raise CurateError(f"{run_dir}: no {SUMMARY_JSON} (not a finished training run); give a revision stepK")
    try:
        summary = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise CurateError(f"{path}: not valid JSON") from None
    info = (summary.get("emergence") or {}).get(circuit.metric)
    if not info:
        raise CurateError(f"{path}: records no {circuit.metric} curve; give a revision stepK")
    step = info.get("emergence_step")
    if step is None:
        raise CurateError(
            f"{run_dir}: the {circuit.name} head never formed (best {circuit.metric} score {float(info.get('max', 0)):.3f} "
            f"< threshold {info.get('threshold')}); nothing to attribute (give a revision stepK to score anyway)"
        )
    checkpoints = list_checkpoints(run_dir)
    after = [s for s in checkpoints if s >= int(step)]
    if not after:
        raise CurateError(f"{run_dir}: no saved checkpoint at or after step {step}, where the {circuit.name} head formed")
    return after[0], checkpoints[after[0]], int(step)


def _checkpoint_step(folder: Path | None, revision: str | None) -> int | None:
    """The training step a checkpoint is at: its folder name stepK, its trainer state, or a stepK revision."""
    if folder is not None:
        step = checkpoint_step(folder)
        if step is not None:
            return step
        if (folder / STATE_FILE).is_file():
            return int(load_trainer_state(folder)["step"])
    if revision:
        m = re.fullmatch(r"step(\d+)", revision)
        if m:
            return int(m.group(1))
    return None


def _run_corpus(run_dir: Path) -> tuple[str, int | None]:
    """(corpus path, batch size) a run folder trained on, from its run.json."""
    path = run_dir / RUN_FILE
    if not path.is_file():
        raise CurateError(f"{run_dir}: no {RUN_FILE} to tell which corpus it trained on; give the corpus")
    raw = json.loads(path.read_text())
    spec = raw.get("spec", {})
    if spec.get("plan") is not None:
        raise CurateError(f"{run_dir}: was trained under a plan (its row order is not the corpus's); give the corpus and the window")
    corpus = spec.get("corpus") or raw.get("base_corpus")
    if not corpus:
        raise CurateError(f"{path}: names no corpus; give the corpus")
    absolute = raw.get("absolute", {}).get("corpus") if spec.get("corpus") else None
    return resolve_stored(str(corpus), run_dir, absolute), raw.get("batch_size")


def _run_epochs(run_dir: Path) -> int:
    """The epochs a run folder trained for (`curate train --epochs`; 1 when it records none)."""
    path = run_dir / RUN_FILE
    if not path.is_file():
        return 1
    return int(json.loads(path.read_text()).get("spec", {}).get("epochs") or 1)


def _first_epoch_window(start: int, end: int, batch: int, corpus: Corpus, epochs: int, notes: list[str]) -> int:
    """The window's end for a run trained for several epochs: the rows of steps [start, end) are the corpus's rows
    [start*B, end*B) only inside the first pass (`training.plan`: later passes are reshuffled). A window from 0
    that reaches past the first pass has trained on every row: it is scored as the first pass's whole steps (each
    row once, at its first-pass step); a later start is refused."""
    first = training_rows(corpus) // batch
    if end <= first:
        return end
    if start != 0:
        raise CurateError(
            f"the window {start}:{end} reaches past the first epoch (steps 0:{first}) of a run trained for {epochs} "
            f"epochs, whose later epochs are reshuffled: score a window inside 0:{first}, or one from 0 (every row once)"
        )
    notes.append(f"the window 0:{end} spans {end / max(first, 1):.1f} epochs of a run trained for {epochs}: "
                 f"scored as 0:{first}, the first epoch's whole steps (every row trained on, each once, at its first-epoch step)")
    return first


# --------------------------------------------------------------------------- probes and identity


def corpus_identity(corpus: Corpus, rows: tuple[int, int], by_path: bool = False) -> dict:
    """What identifies the corpus content the job reads: its content key (not its path: a copied or moved
    workspace is the same job), shape, file sizes, hash of the window's ends. `by_path`: the resolved path
    instead of the content key, as folders written before content keys recorded it."""
    h = hashlib.blake2b(digest_size=8)
    for r in sorted({rows[0], rows[1] - 1}):
        h.update(np.ascontiguousarray(corpus.rows(r, r + 1)).tobytes())
    where = {"path": str(Path(corpus.path).resolve())} if by_path else {"content": corpus.content_key()}
    return {
        **where,
        "rows": int(corpus.num_rows),
        "row_len": int(corpus.row_len),
        "dtype": str(corpus.dtype),
        "batch_size": int(corpus.batch_size),
        "bytes": sum(Path(f).stat().st_size for f in corpus.files if Path(f).is_file()),
        "window_ends": h.hexdigest(),
    }


# --------------------------------------------------------------------------- resolve


def resolve_job(req: ScoreRequest, log: Log = lambda s: None) -> ScoreJob:
    """Validate the request and load what the job needs; writes nothing to the output folder."""
    assert req.ensemble is None, "an --ensemble request resolves with pipelines.score_ensemble.resolve_scoring"
    circuit = get_circuit(req.circuit)
    if req.mode is None:
        req = replace(req, mode=circuit.default_mode)
    check_request(req)
    if req.ray_address:
        check_ray_address(req.ray_address)
    ws = resolve_workspace(req.workspace)
    default_out = scores_dir(ws, circuit.name, req.method, trajectory=req.checkpoints is not None)
    out = (Path(req.out) if req.out is not None else default_out).absolute()  # Ray workers run elsewhere
    if out.exists() and not out.is_dir():
        raise CurateError(f"{out}: exists and is not a folder")
    notes: list[str] = []

    # -- corpus and model
    run_dir = _run_dir_of(req.model)
    run_batch: int | None = None
    if req.model is None:
        corpus_path = str(ensure_default_corpus(ws, req.progress, log))
        run_dir = ensure_reference_run(ws, req.progress, log)
    elif req.corpus is not None:
        corpus_path = req.corpus
    elif run_dir is not None:
        corpus_path, run_batch = _run_corpus(run_dir)
    else:
        raise CurateError(f"{req.model}: give the corpus the model was trained on (only a training run folder records its corpus)")
    if run_dir is not None and run_batch is None and (run_dir / "run.json").is_file():
        run_batch = json.loads((run_dir / "run.json").read_text()).get("batch_size")

    formed_checkpoint: int | None = None
    if run_dir is not None and req.revision is None:
        step, folder, formed = emergence_checkpoint(run_dir, circuit)
        formed_checkpoint = step
        notes.append(f"checkpoint step{step}: the first saved checkpoint at/after step {formed}, where the {circuit.name} head formed")
        model = load_model(folder)
        checkpoint = str(folder)
    else:
        model_spec = req.model if req.model is not None else str(run_dir)
        folder = resolve_checkpoint_dir(model_spec, req.revision)
        step = _checkpoint_step(folder, req.revision)
        model = load_model(folder if folder is not None else model_spec, None if folder is not None else req.revision)
        checkpoint = str(folder) if folder is not None else f"{model_spec}@{req.revision or 'main'}"
    model.eval()

    corpus = open_corpus(corpus_path)
    if run_batch:
        corpus.batch_size = int(run_batch)
    batch = corpus.batch_size
    if req.batch_rows is None:
        req = replace(req, batch_rows=auto_batch_rows(corpus.row_len, req.shard_rows))
    context = int(getattr(model.config, "max_position_embeddings", corpus.row_len))
    if corpus.row_len - 1 > context:
        raise CurateError(f"{corpus.path}: rows of {corpus.row_len} tokens exceed the model's context ({context} + 1)")

    # -- window
    start, end = parse_window(req.window) if req.window is not None else (None, None)
    start = 0 if start is None else start
    if end is None:
        if step is None:
            raise CurateError(f"{checkpoint}: cannot tell which training step this model is at; give the window START:END")
        end = step
    if end <= start:
        raise CurateError(f"the window {start}:{end} is empty (the checkpoint is at step {step})")
    epochs = _run_epochs(run_dir) if run_dir is not None and req.corpus is None else 1
    if epochs > 1:
        end = _first_epoch_window(start, end, batch, corpus, epochs, notes)
    if end * batch > corpus.num_rows:
        raise CurateError(
            f"the window {start}:{end} is outside the corpus: {corpus.path} holds {corpus.num_rows} rows = "
            f"{corpus.num_rows // batch} whole steps of {batch}"
        )
    rows = (start * batch, end * batch)
    top_k = parse_amount(req.top, rows[1] - rows[0], "top")
    vocab = int(model.config.vocab_size)
    if not (corpus.meta is not None and corpus.meta.vocab_size and int(corpus.meta.vocab_size) <= vocab):
        check_token_ids(corpus, rows, vocab)  # corpus.json's recorded vocabulary is trusted when it fits

    # -- heads and probe
    probes = corpus_probes(model.config, corpus, seed=req.seed)
    loc = circuit.localize(model, probes, heads=req.heads)
    heads = loc.require()

    # -- identity of the job
    fit_ids = fit_row_ids(rows, req.fit_rows, req.seed)
    data_key = fit_data_key(corpus, fit_ids, req.seed)
    model_fp = model_fingerprint(model)
    fingerprint = {
        "version": JOB_VERSION,
        "model": model_fp,
        "factors": {"data": data_key, "damping": float(req.damping), "damping_floor": DEFAULT_DAMPING_FLOOR, "rule": DAMPING_RULE},
        "probe": {
            "circuit": circuit.name,
            "seed": int(req.seed),
            "shape": list(probes.shape),
            "hash": hashlib.blake2b(probes.numpy().astype(np.int64).tobytes(), digest_size=8).hexdigest(),
        },
        "heads": [str(h) for h in heads],
        "mode": req.mode,
        "window": [start, end],
        "corpus": corpus_identity(corpus, rows),
        "batch_rows": int(req.batch_rows),
        "shard_rows": int(req.shard_rows),
        "device": req.device,
    }
    trajectory: list[ScoreJob] = []
    if req.checkpoints is not None:
        trajectory = _resolve_trajectory(req, run_dir, circuit, corpus_path, heads, (start, end), out, formed_checkpoint, log)
        fingerprint["trajectory"] = {"checkpoints": [j.checkpoint_step for j in trajectory],
                                     "jobs": [j.result_hash for j in trajectory]}
    weights = None
    if trajectory and req.aggregate == "lr-sum":
        weights = checkpoint_weights(run_dir, [int(j.checkpoint_step) for j in trajectory], flag(req, "aggregate") + " lr-sum")  # type: ignore[arg-type]
    if req.token_aggregate != "sum":  # recorded when not the plain sum: the folders written before keep their fingerprint
        fingerprint["token_aggregate"] = req.token_aggregate
    if req.method != "mda":  # an MDA job's fingerprint stays what it was before there were methods
        fingerprint["method"] = req.method
        if not score_method(req.method).fits_factors:
            fingerprint["factors"] = None

    check_output_folder(out, SCORES, [corpus.path, *corpus.files, checkpoint])  # before anything (command.json too) is written
    if not req.force and not trajectory:
        legacy = _legacy_fingerprint(fingerprint, corpus, rows, fit_ids, req.seed)
        if _holds_job(out, legacy):  # a folder written when corpora were identified by path: kept as it was
            fingerprint = legacy
            data_key = legacy["factors"]["data"] if legacy["factors"] is not None else data_key
    if not req.force:
        Manifest.open(out, fingerprint)  # a different job's results there: one line, nothing touched
    corpus_spec = str(Path(corpus_path).expanduser().resolve())
    return ScoreJob(req, circuit, corpus, corpus_spec, model, checkpoint, step, loc, heads, (start, end), rows, top_k, out, probes,
                    fit_ids, data_key, model_fp, fingerprint, notes, trajectory, weights=weights)


def _resolve_trajectory(req: ScoreRequest, run_dir: Path | None, circuit: Circuit, corpus_path: str, heads: list[HeadRef],
                        window: tuple[int, int], out: Path, formed_checkpoint: int | None, log: Log) -> list[ScoreJob]:
    """One ordinary scoring job per checkpoint of `--checkpoints`: the same corpus, window, heads, mode, probe and
    fit rows, the model at that checkpoint, the folder `<out>/checkpoints/stepK` (`pipelines.score_trajectory`)."""
    assert req.checkpoints is not None
    if run_dir is not None and formed_checkpoint is None:
        try:
            formed_checkpoint = emergence_checkpoint(run_dir, circuit)[0]
        except CurateError:
            formed_checkpoint = None  # never formed (or no summary): auto takes the window's checkpoints alone
    steps = resolve_steps(req.checkpoints, run_dir, formed_checkpoint, window[0], window[1], flag(req, "checkpoints"))
    model_spec = str(run_dir) if run_dir is not None else req.model
    jobs = []
    for step in steps:
        sub = replace(req, checkpoints=None, model=model_spec, revision=f"step{step}", corpus=corpus_path,
                      heads=",".join(str(h) for h in heads), window=f"{window[0]}:{window[1]}", out=checkpoint_folder(out, step))
        job = resolve_job(sub, log)
        if job.checkpoint_step != step:
            raise CurateError(f"{job.checkpoint}: is not checkpoint step{step}")
        jobs.append(job)
    return jobs


def _legacy_fingerprint(fingerprint: dict, corpus: Corpus, rows: tuple[int, int], fit_ids: np.ndarray, seed: int) -> dict:
    """The fingerprint as folders written before content keys recorded it (the corpus by its resolved path)."""
    factors = fingerprint["factors"]
    return {**fingerprint, "corpus": corpus_identity(corpus, rows, by_path=True),
            "factors": None if factors is None else {**factors, "data": fit_data_key(corpus, fit_ids, seed, by_path=True)}}


def _holds_job(out: Path, fingerprint: dict) -> bool:
    """The manifest in `out` was written for exactly this fingerprint."""
    try:
        raw = json.loads((out / MANIFEST_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return raw.get("fingerprint") == json.loads(json.dumps(fingerprint, default=str))
