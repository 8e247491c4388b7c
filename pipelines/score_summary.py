"""What a scores folder's `summary.json` holds (`ScoreSummary`), and the pieces of it read from the job: the heads'
metrics at the checkpoint and the top rows described (score, domain, the first characters of their text)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np
import pyarrow as pa

from curate.corpus import Corpus
from curate.errors import CurateError
from curate.labels import read_row_labels
from curate.pipelines.score_job import SHOW_TOP, TEXT_CHARS, ScoreJob
from curate.tokenize import load_tokenizer


@dataclass
class ScoreSummary:
    """`summary.json` of a scores folder (written last: the folder is complete). One record for a one-checkpoint
    job and for trajectory scores (which add `trajectory` and sum the per-checkpoint counts and times)."""

    method: str
    corpus: str  # relative to the folder where it can be (`paths.portable`)
    corpus_absolute: str
    corpus_digest: str  # the scored corpus's content identity (`curate.corpus_digest`): readers refuse another corpus
    out: str
    circuit: str
    heads: list[str]
    head_metrics: dict
    localization: dict
    mode: str
    window: list[int]  # steps [start, end)
    row_range: list[int]
    batch_size: int
    rows: int
    rows_scored: int
    checkpoint: str  # relative to the scores folder when local (`paths.portable_if_local`)
    checkpoint_absolute: str
    checkpoint_step: int | None
    model_fingerprint: str
    factors: str
    fit_rows: int
    seed: int
    top_k: int
    top_positive: list[dict]
    top_negative: list[dict]
    top_files: dict
    shards_dir: str
    shards: int
    shards_scored: int
    shards_skipped: int
    workers: int
    ray_address: str | None
    device: str
    seconds: float
    seconds_fit: float
    seconds_score: float
    rows_per_s: float | None
    cpu_seconds_score: float  # CPU time the actors spent on the shards scored this run
    retries: list[dict]
    retried_shards: int  # shards re-run after their actor died
    nodes: dict  # Ray node id -> shards it scored this run (each shard's node is in the manifest)
    notes: list[str]
    fingerprint_hash: str
    trajectory: dict | None = None  # trajectory scores: checkpoints, aggregate, the per-checkpoint folders
    ensemble: dict | None = None  # ensemble scores: the members (run, folder, heads, score sd), how they were combined
    token_aggregate: str | None = None  # `--token-aggregate` other than the plain sum (None: sum)

    def to_json(self) -> dict:
        out = asdict(self)
        for name in ("trajectory", "ensemble", "token_aggregate"):  # left out when unset: folders keep the summary they had
            if out[name] is None:
                del out[name]
        return out

    @classmethod
    def from_json(cls, raw: dict) -> "ScoreSummary":
        return cls(**{f.name: raw[f.name] for f in fields(cls) if f.name in raw})


def head_metrics(job: ScoreJob) -> dict:
    """Induction and previous-token scores of the job's heads at its checkpoint (from the localization)."""
    hs = job.localization.head_scores
    if hs is None:
        return {}
    return {str(h): {"induction": float(hs.induction[h.layer, h.head]), "previous_token": float(hs.previous_token[h.layer, h.head])}
            for h in job.heads}


def _domains(corpus: Corpus, row_ids: list[int]) -> dict[int, str]:
    """Row id -> `domain` from the corpus sidecar, when it has that column (an unreadable sidecar only costs the column)."""
    try:
        labels = read_row_labels(corpus, row_ids, ["domain"])
    except CurateError:
        return {}
    return {r: (str(v["domain"]) if v["domain"] is not None else "") for r, v in labels.items()}


def describe_rows(corpus: Corpus, table: pa.Table) -> list[dict]:
    """row_id, step, score, loss, domain and the first characters of the decoded text of each row."""
    ids = [int(r) for r in table.column("row_id").to_pylist()]
    if not ids:
        return []
    domains = _domains(corpus, ids)
    texts: dict[int, str] = {}
    spec = corpus.tokenizer_spec()
    if spec:
        try:
            tok = load_tokenizer(spec)
            rows = corpus.take(np.asarray(ids, dtype=np.int64))
            for r, tokens in zip(ids, rows):
                text = tok.decode(tokens.tolist())
                texts[r] = text.replace("\n", "\\n").replace("\t", " ")[:TEXT_CHARS]
        except CurateError:
            texts = {}
    scores = table.column("score").to_pylist()
    steps = table.column("step").to_pylist()
    losses = table.column("loss").to_pylist()
    return [
        {"row_id": r, "step": int(s), "score": float(v), "loss": None if l is None or l != l else float(l),  # NaN: not run
         "domain": domains.get(r), "text": texts.get(r)}
        for r, s, v, l in zip(ids, steps, scores, losses)
    ]


def top_described(job: ScoreJob, best: pa.Table, worst: pa.Table) -> tuple[list[dict], list[dict]]:
    """The first `SHOW_TOP` rows of each tail, described."""
    return describe_rows(job.corpus, best.slice(0, SHOW_TOP)), describe_rows(job.corpus, worst.slice(0, SHOW_TOP))
