"""The scoring methods: one registry line each. `curate score --method` (its choices and help), the experiment's
`--methods` (choices and default), its remove-top / augment-top arms and the method table all take their names
from here, so a new scoring method is one module (its row statistic) plus one line in `REGISTRY`.

Kept free of torch (a measured 4 s import): `score_request` builds the command line from it. A statistic method's scorer is
named "module:function" and imported when scoring (`pipelines.score_methods.score_method`)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    """One scoring method.

    A gradient method has a `curvature` ("ekfac" or "identity", `attribution.scoring.CURVATURES`) and writes one
    column per head; a statistic method names ("module:function") the function `(model, rows) -> (losses, scores)`
    (`attribution.scoring.RowStatistic`) that scores each row. `compared`: the experiment compares it by its own
    remove-top / augment-top arms by default (its default `--methods`, which may also name the others);
    `runs_model`: it runs the checkpoint (else one score serves every checkpoint)."""

    name: str
    help: str
    curvature: str | None = None
    scorer: str | None = None  # "module:function" of a statistic method
    compared: bool = False
    runs_model: bool = True


PRIMARY = "mda"
"""The product's method: its scores choose the window's heads, its arms are `remove-top` / `augment-top`."""

REGISTRY: dict[str, Method] = {m.name: m for m in (
    Method("mda", "EK-FAC influence on the heads", curvature="ekfac", compared=True),
    Method("gradient-dot", "the same without curvature", curvature="identity", compared=True),
    Method("copy-share", "share of repeated 4-grams in the row", scorer="curate.pipelines.copy_share:copy_share", compared=True,
           runs_model=False),
    Method("loss", "the row's mean loss", scorer="curate.attribution.scoring:row_loss"),
)}


def method_names() -> tuple[str, ...]:
    """Every scoring method (`curate score --method`), in registry order."""
    return tuple(REGISTRY)


def compared_methods() -> tuple[str, ...]:
    """The methods an experiment compares (its default `--methods`), the primary one first."""
    return tuple(m for m in REGISTRY if REGISTRY[m].compared)


def get_method(name: str) -> Method:
    """The method called `name`; KeyError names the known ones."""
    if name not in REGISTRY:
        raise KeyError(f"scoring method {name!r}: expected one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


def methods_help() -> str:
    """`mda (EK-FAC influence on the heads), ... or loss (the row's mean loss)`."""
    parts = [f"{m.name} ({m.help})" for m in REGISTRY.values()]
    return ", ".join(parts[:-1]) + " or " + parts[-1] if len(parts) > 1 else parts[0]


def method_arms(method: str) -> tuple[str, str]:
    """(remove arm, augment arm) of a scoring method: `remove-top` / `augment-top` for the primary method,
    `remove-top-<m>` / `augment-top-<m>` for the others."""
    return ("remove-top", "augment-top") if method == PRIMARY else (f"remove-top-{method}", f"augment-top-{method}")
