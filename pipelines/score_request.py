"""The `curate score` request: its options (flags and help in the field metadata) and their cheap checks.

Kept free of torch and the model code so that the command line can be built from it quickly."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from curate.amounts import check_amount
from curate.attribution.damping import DEFAULT_DAMPING
from curate.attribution.token_aggregation import TOKEN_AGGREGATES
from curate.errors import CurateError
from curate.options import check_positive, flag, named, opt, workspace_opt
from curate.pipelines.methods import get_method, method_names, methods_help

DEFAULT_TOP = "10%"
BATCH_TOKENS = 8192
"""Tokens per forward/backward that the default batch aims at (see `auto_batch_rows`)."""
MAX_BATCH_ROWS = 64
DEFAULT_SHARD_ROWS = 1024
DEFAULT_FIT_ROWS = 8192
TRANSITION_CHECKPOINTS = 4
"""`--checkpoints transition`'s default N: the saved checkpoints up to the first after formation (`pipelines.score_trajectory`)."""
AGGREGATES = ("sum", "segment", "lr-sum")
"""How trajectory scores (`--checkpoints`) combine the checkpoints (`pipelines.score_trajectory`)."""


@dataclass
class ScoreRequest:
    """What the user asked for: the `curate score` options (flags and help in the field metadata)."""

    circuit: str = opt("induction", "--circuit", help="Circuit to attribute: induction or previous-token.")
    method: str = opt("mda", "--method", help=f"Score: {methods_help()}.")
    corpus: str | None = opt(None, "--corpus", help="Training corpus (default: the embedded default corpus, or the run's).")
    model: str | None = opt(None, "--model", deprecated=("--checkpoint",), help="HF folder, training run folder, or a Pythia name with --revision (default: the reference run).")
    revision: str | None = opt(None, "--revision", help="Checkpoint stepK of a run folder or hub model (default for a run: the first one after the head formed).")
    heads: str = opt("auto", "--heads", help="auto (localize) or L.H,L.H.")
    mode: str | None = opt(None, "--mode", help="Head subspace: qk or qkvo (default: the circuit's: qkvo for induction, qk for previous-token).", show_default=False)  # None: the circuit's default_mode
    window: str | None = opt(None, "--window", help="Training steps START:END to score (default: 0 to the checkpoint's step).")
    top: str = opt(DEFAULT_TOP, "--tail-rows", deprecated=("--top",), help="Rows kept in each tail (top and bottom): a share of the window (10%) or a count.")
    out: Path | None = opt(None, "--out", help="Output folder (default: <workspace>/default/scores/<circuit>, or <circuit>-<method> for another --method).")
    workers: int | None = opt(None, "--workers", help="Ray actors (default: one per CPU, or per GPU with --device cuda).")
    ray_address: str | None = opt(None, "--ray-address", help="Join this Ray cluster (HOST:PORT, ray://HOST:PORT or auto) instead of a local Ray.")
    device: str = opt("cpu", "--device", help="cpu or cuda.")
    batch_rows: int | None = opt(None, "--batch-rows", help="Rows per forward/backward (default: the power of two nearest below 8,192 tokens, at most 64: 64 rows of 65 tokens, 2 rows of 2,049).", show_default=False)
    shard_rows: int = opt(DEFAULT_SHARD_ROWS, "--shard-rows", help="Rows per shard (a multiple of --batch-rows).")
    fit_rows: int | None = opt(DEFAULT_FIT_ROWS, "--fit-rows", help="Rows sampled (with --seed) from the window for the EK-FAC fit.")  # None: every row of the window
    damping: float = opt(DEFAULT_DAMPING, "--damping", help="EK-FAC damping factor: each eigenvalue is divided as max(Lambda + F * mean(Lambda), 1e-5) (mda only; a different F is a different job, with its own factors and scores).")
    seed: int = opt(0, "--seed", help="Seed of the fit-row sample, the sampled labels and the probes.")
    checkpoints: str | None = opt(None, "--checkpoints", help="Trajectory scores: auto (up to 4 of the run's checkpoints across the window, ending at the first after formation), transition[:N] (the N consecutive saved checkpoints ending at the first after formation, default 4: dense around the transition) or stepK,stepK,...; each checkpoint gets its own EK-FAC fit (default: one checkpoint; `curate experiment` scores with auto + sum, the variant its development study chose).", show_default=False)
    aggregate: str = opt("sum", "--aggregate", help="How --checkpoints combine: sum (over the checkpoints, TracIn-CP style), lr-sum (the sum with each checkpoint weighted by the learning rate of the update that produced it, TracIn; needs a curate training run folder, whose schedule it reads) or segment (each row at the first checkpoint after the step that consumed it).")
    token_aggregate: str = opt("sum", "--token-aggregate", help="How a row's per-position contributions to a head form its score: sum (the plain influence) or positive (only the positions that build the head: the positive terms of sum_t -<P, g_t x_t^T>); mda and gradient-dot only.")
    force: bool = opt(False, "--force", help="Discard results already in --out (even of another job) and start over.")
    workspace: Path | None = workspace_opt()
    progress: bool = True
    ensemble: str | None = opt(None, "--ensemble", help="Ensemble scores: RUN,RUN,... (training run folders on the same corpus and row order, e.g. other seeds) or K (the reference run and reference runs of seeds 1..K-1, trained if missing); each member is scored like --model RUN into <out>/members/, then each member's scores are divided by their standard deviation over the window and averaged (without --window: the members' common window).", show_default=False)

    def validate(self) -> None:
        """Cheap checks of the options alone (no file is opened); an error names the flag."""
        check_request(self)


def parse_window(text: str) -> tuple[int | None, int | None]:
    """`START:END` in steps (either side may be empty: 0 / the checkpoint's step)."""
    m = re.fullmatch(r"\s*(\d*)\s*:\s*(\d*)\s*", str(text))
    if not m:
        raise CurateError(f"{text!r}: expected START:END in training steps, e.g. 0:1500")
    start = int(m.group(1)) if m.group(1) else None
    end = int(m.group(2)) if m.group(2) else None
    if start is not None and end is not None and end <= start:
        raise CurateError(f"{text}: END must be after START")
    return start, end


def parse_checkpoints(text: str) -> str | tuple[str, int] | list[int]:
    """`auto`; `transition[:N]` -> ("transition", N); or `stepK,stepK,...` (or bare step numbers) -> sorted distinct steps."""
    word = str(text).strip().lower()
    if word == "auto":
        return "auto"
    m = re.fullmatch(r"transition(?::(\d+))?", word)
    if m:
        n = int(m.group(1)) if m.group(1) else TRANSITION_CHECKPOINTS
        if n < 1:
            raise CurateError(f"{text!r}: transition:N needs at least 1 checkpoint")
        return ("transition", n)
    steps: set[int] = set()
    for part in str(text).split(","):
        m = re.fullmatch(r"\s*(?:step)?(\d+)\s*", part)
        if not m:
            raise CurateError(f"{text!r}: expected auto, transition[:N] or a list of checkpoints stepK,stepK (e.g. step500,step1000)")
        steps.add(int(m.group(1)))
    return sorted(steps)


MIN_ENSEMBLE = 2


def parse_ensemble(text: str) -> int | list[str]:
    """`--ensemble`: K (a count, at least 2) or RUN,RUN,... (at least 2 distinct run folders, as given)."""
    t = str(text).strip()
    if re.fullmatch(r"\d+", t):
        if int(t) < MIN_ENSEMBLE:
            raise CurateError(f"{t}: an ensemble needs at least {MIN_ENSEMBLE} members")
        return int(t)
    runs = [part.strip() for part in t.split(",")]
    if any(not r for r in runs) or len(runs) < MIN_ENSEMBLE:
        raise CurateError(f"{text!r}: expected a count K >= {MIN_ENSEMBLE} or at least {MIN_ENSEMBLE} run folders RUN,RUN,...")
    seen: set[Path] = set()
    for r in runs:
        key = Path(r).expanduser().resolve()
        if key in seen:
            raise CurateError(f"{r}: named twice (every member is another run)")
        seen.add(key)
    return runs


def check_ensemble(req: ScoreRequest) -> None:
    """`--ensemble` against the other options (no file opened)."""
    with named(req, "ensemble"):
        members = parse_ensemble(req.ensemble)  # type: ignore[arg-type]
    if req.model is not None:
        raise CurateError(f"{flag(req, 'ensemble')} names the models: drop {flag(req, 'model')}")
    if isinstance(members, int) and req.corpus is not None:
        raise CurateError(f"{flag(req, 'ensemble')} {members} trains reference runs on the default corpus: drop "
                          f"{flag(req, 'corpus')}, or give the run folders RUN,RUN,...")


def check_request(req: ScoreRequest) -> None:
    """Cheap checks of the options alone (no file is opened); an error names the flag."""
    from curate.attribution.heads import check_mode  # inside: this module stays free of torch (the CLI's start-up)

    if req.method not in method_names():
        raise CurateError(f"{flag(req, 'method')} {req.method!r}: expected one of {', '.join(method_names())}")
    if req.mode is not None:
        check_mode(req.mode)
    if req.aggregate not in AGGREGATES:
        raise CurateError(f"{flag(req, 'aggregate')} {req.aggregate!r}: expected one of {', '.join(AGGREGATES)}")
    if req.token_aggregate not in TOKEN_AGGREGATES:
        raise CurateError(f"{flag(req, 'token_aggregate')} {req.token_aggregate!r}: expected one of {', '.join(TOKEN_AGGREGATES)}")
    if req.token_aggregate != "sum" and get_method(req.method).curvature is None:
        raise CurateError(f"{flag(req, 'token_aggregate')} {req.token_aggregate}: {req.method} is a row statistic, with no per-position "
                          f"gradient contributions (gradient methods only: mda, gradient-dot)")
    if req.checkpoints is not None:
        with named(req, "checkpoints"):
            parse_checkpoints(req.checkpoints)
        if not get_method(req.method).runs_model:
            raise CurateError(f"{flag(req, 'checkpoints')}: {req.method} does not run the model, one score serves every checkpoint")
    if req.corpus is not None and req.model is None and req.ensemble is None:
        raise CurateError(f"{flag(req, 'corpus')} needs {flag(req, 'model')} (the reference run was trained on the default corpus)")
    if req.ensemble is not None:
        check_ensemble(req)
    check_amount(req.top, flag(req, "top"))
    if req.window is not None:
        with named(req, "window"):
            parse_window(req.window)
    check_positive(req, "batch_rows", "shard_rows")
    if req.batch_rows is not None and req.shard_rows % req.batch_rows:
        raise CurateError(f"{flag(req, 'shard_rows')} {req.shard_rows} must be a multiple of {flag(req, 'batch_rows')} {req.batch_rows}")
    check_positive(req, "fit_rows", "workers")
    if not (isinstance(req.damping, (int, float)) and math.isfinite(req.damping) and req.damping > 0):
        raise CurateError(f"{flag(req, 'damping')} {req.damping}: expected a positive number (e.g. 0.1)")
    if req.device not in ("cpu", "cuda"):
        raise CurateError(f"{flag(req, 'device')} {req.device!r}: expected cpu or cuda")
    import torch  # inside: this module stays free of torch (the CLI's start-up)

    if req.device == "cuda" and not torch.cuda.is_available():
        raise CurateError(f"{flag(req, 'device')} cuda: no CUDA device is available to torch here")


def auto_batch_rows(row_len: int, shard_rows: int = DEFAULT_SHARD_ROWS) -> int:
    """The default rows per forward/backward for rows of `row_len` tokens: the largest power of two with at
    most `BATCH_TOKENS` tokens (at least 1, at most `MAX_BATCH_ROWS`), that divides `shard_rows`.

    Measured (bench/score_batch.py, bench/RESULTS.md): on the default model, 64 rows of 65 tokens score within
    a few percent of the fastest batch while 8 rows were 0.8x; at Pythia's 2,049-token rows the per-row
    matrices are already large and the batch is held down by memory (the logits alone are rows x 2,048 x 50,304
    floats)."""
    rows = 1
    while rows * 2 * row_len <= BATCH_TOKENS and rows * 2 <= MAX_BATCH_ROWS and shard_rows % (rows * 2) == 0:
        rows *= 2
    return rows
