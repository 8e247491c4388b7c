"""The `curate evaluate` options: the experiment's baseline, window and scoring flags (the retrains copy the
experiment's arms), plus the subsets, the outcome's horizon, the methods and extra scores folders to evaluate.

Kept free of torch and the model code so that the command line can be built from it quickly."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from curate.amounts import check_amount
from curate.errors import CurateError
from curate.options import check_positive, opt, option_error
from curate.pipelines.experiment_options import ExperimentOptions, check_options
from curate.pipelines.methods import method_names

DEFAULT_METHODS = ",".join(method_names())  # every registered scoring method
DEFAULT_BOOTSTRAP = 2000


SPLITS = ("dev", "report")
SPLIT_FIRST_SEED = {"dev": 10_000, "report": 20_000}
"""Subset i of a split is drawn with seed SPLIT_FIRST_SEED[split] + i: the two splits never share a subset, so the
subsets a variant is chosen on are never the ones it is reported on."""
MAX_SUBSETS = 10_000  # the width of each split's seed range

DESIGNS = ("replace", "compact")
"""How a subset's retrain leaves its dropped rows out (`pipelines.lds_design`): replace = each dropped row's stream
position holds a filler row the retrains never train otherwise (every other row keeps its step); compact = the
dropped rows are removed and every later row moves up (the experiment's remove-random mix, the first design)."""


@dataclass
class EvaluateOptions(ExperimentOptions):
    """`curate evaluate`'s flags; the experiment's arm and seed flags are fixed here (not on the command line)."""

    subsets: int = opt(24, "--subsets", help=f"Random subsets of the window, one retrain each (at most {MAX_SUBSETS}; a larger count later adds retrains, the first ones are kept).")
    drop: str = opt("10%", "--drop", help="Rows each subset drops: a share of the window (10%), a fraction (0.1) or a count.")
    split: str = opt("dev", "--split", help="dev (choose variants on these subsets) or report (report on these): disjoint seed ranges, never the same subset.")
    design: str = opt(DESIGNS[0], "--design", help="replace: each dropped row's position holds a filler row the retrains never train otherwise (rows after their last, before the held-out rows), every other row keeps its step; compact: the dropped rows are removed and the later rows move up.")
    horizon: int | None = opt(None, "--horizon", help="The area outcome integrates the targeted heads' score from the window's start to this step (default: the retrains' last step).", show_default=False)
    lds_methods: str = opt(DEFAULT_METHODS, "--methods", help="Scoring methods whose scores of the window are evaluated (each scored like the experiment's; finished scores are reused).")
    extra_scores: str | None = opt(None, "--scores", help="More scores folders of the same window to evaluate on the same retrains, NAME=FOLDER[,NAME=FOLDER] (a variant costs its scoring only).", show_default=False)
    bootstrap: int = opt(DEFAULT_BOOTSTRAP, "--bootstrap", help="Bootstrap resamples of the subsets for the LDS interval (seeded).")
    out: Path | None = opt(None, "--out", help="Evaluation folder (default: WORKSPACE/evaluations/CIRCUIT-SPLIT).", show_default=False)
    # the experiment's flags that do not apply: every retrain is the remove-random arm of one subset, seed 0
    quick: bool = False
    k: str = "10%"
    augment: str = "2%"
    seeds: int | None = None
    first_seed: int = 0
    arms: str | None = None
    rerun: str | None = None
    methods: str | None = None
    motif_rows: int = 2000
    scales: bool = False
    sizes: str = "64x2,96x2,128x3"

    def validate(self) -> None:
        check_options(self)
        check_evaluate_options(self)


def parse_lds_methods(text: str) -> list[str]:
    """`mda,copy-share` -> the scoring methods in canonical order (the registry, `pipelines.methods`)."""
    METHODS = method_names()

    names = [t.strip() for t in str(text).split(",") if t.strip()]
    if not names:
        raise CurateError(f"{text!r}: name at least one method (known: {', '.join(METHODS)})")
    for n in names:
        if n not in METHODS:
            raise CurateError(f"{text!r}: unknown method {n!r} (known: {', '.join(METHODS)})")
    return [m for m in METHODS if m in names]


def parse_extra_scores(text: str | None, methods: list[str]) -> dict[str, Path]:
    """`NAME=FOLDER,NAME=FOLDER` -> {name: folder}; names unique and none a method's name."""
    out: dict[str, Path] = {}
    if text is None:
        return out
    for part in str(text).split(","):
        name, sep, folder = part.strip().partition("=")
        name, folder = name.strip(), folder.strip()
        if not (sep and name and folder):
            raise CurateError(f"{part.strip()!r}: expected NAME=FOLDER")
        if name in out or name in methods:
            raise CurateError(f"{name!r}: named twice (the methods evaluated are {', '.join(methods)})")
        out[name] = Path(folder).expanduser()
    return out


def check_evaluate_options(opts: EvaluateOptions) -> None:
    """The evaluation's own flags, checked before anything is read or written (errors name the flag)."""
    from curate.options import named

    check_amount(opts.drop, "--drop")
    with named(opts, "lds_methods"):
        methods = parse_lds_methods(opts.lds_methods)
    with named(opts, "extra_scores"):
        parse_extra_scores(opts.extra_scores, methods)
    if opts.split not in SPLITS:
        raise option_error(opts, "split", f"{opts.split!r}: expected one of {', '.join(SPLITS)}")
    if opts.design not in DESIGNS:
        raise option_error(opts, "design", f"{opts.design!r}: expected one of {', '.join(DESIGNS)}")
    if not 1 <= opts.subsets <= MAX_SUBSETS:
        raise option_error(opts, "subsets", f"must be 1 to {MAX_SUBSETS} (got {opts.subsets})")
    check_positive(opts, "horizon", "bootstrap")
