"""How the experiment's reports write numbers: values, steps (censored as "> N"), paired differences, p-values with
their Holm correction, mean +- sd; and the figures' resolution."""
from __future__ import annotations

import numpy as np

from curate.stats import mean_std

DPI = 150


def fmt(v: float | None, digits: int = 3, sign: bool = False) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    return f"{v:+.{digits}g}" if sign else f"{v:.{digits}g}"


def fmt_step(v: float | None, sign: bool = False, censored: bool = False) -> str:
    """A step (or a difference of steps); `censored`: only known to lie beyond it ("> N")."""
    if v is None:
        return "none"
    n = int(round(v))  # whole steps, never "-0"
    text = f"{n:+d}" if sign else f"{n:d}"
    return ("> " if censored else "") + text


def fmt_run_emergence(run: dict) -> str:
    """A run's emergence step, or "> END" when it never formed (censored at its last step)."""
    return fmt_step(run["emergence"]) if run["emergence"] is not None else fmt_step(max(run["steps"]), censored=True)


def fmt_diffs(paired: dict) -> str:
    """Per-pair differences of a `effects.Paired` (JSON), a censored one as a bound ("> +90" / "< -40"; "censored"
    when both runs never formed: their end steps say nothing about the difference)."""
    out = []
    for d, c, a, b in zip(paired["diffs"], paired["censored"], paired["a_values"], paired["b_values"]):
        text = f"{d:+.0f}" if paired["outcome"] == "emergence" else f"{d:+.3g}"
        out.append(text if not c else "censored" if a == b else (">" if a > b else "<") + " " + text)
    return ", ".join(out)


def fmt_p(test: dict | None) -> str:
    """`p = 0.01 (Holm 0.03)`, or "-" where there is no test."""
    if test is None or test.get("p") is None:
        return "-"
    return f"p = {fmt(test['p'])} (Holm {fmt(test.get('p_holm'))})"


def mean_sd(values: list[float]) -> str:
    """`1700 +- 120` (mean and sample sd, `curate.stats.mean_std`), the mean alone for one value, "none" for none."""
    m, sd = mean_std(values)
    if m is None:
        return "none"
    return f"{m:.0f} +- {sd:.0f}" if sd is not None else f"{m:.0f}"
