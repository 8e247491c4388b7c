"""The experiment report's figures (PNG, 150 dpi): the circuit curves per arm (one colour per arm, bands over the
seeds), the emergence steps per arm and seed (censored runs drawn as "> END", never averaged), ICL and loss."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from curate.pipelines.report_format import DPI
from curate.stats import mean_std


def plt_agg():
    """pyplot on the Agg backend (imported here: a measured 0.4 s that only writing figures needs)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=DPI)
    plt_agg().close(fig)


def _stack(runs: dict, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values (seeds x steps)) of one curve over an arm's seeds, on the steps every seed evaluated."""
    lists = list(runs.values())
    steps = sorted(set.intersection(*[set(r["steps"]) for r in lists]))
    rows = []
    for r in lists:
        index = {s: i for i, s in enumerate(r["steps"])}
        rows.append([np.nan if r["curves"][key][index[s]] is None else float(r["curves"][key][index[s]]) for s in steps])
    return np.asarray(steps), np.asarray(rows, dtype=np.float64)


def _band(ax, runs: dict, key: str, color: str, label: str, style: str = "-") -> None:
    steps, values = _stack(runs, key)
    if np.all(np.isnan(values)):
        return
    with np.errstate(all="ignore"):
        mean = np.nanmean(values, axis=0)
    ax.plot(steps, mean, style, color=color, label=label, linewidth=1.4)
    if values.shape[0] > 1:
        ax.fill_between(steps, np.nanmin(values, axis=0), np.nanmax(values, axis=0), color=color, alpha=0.18, linewidth=0)


def _grid(n: int):
    plt = plt_agg()
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows), sharex=True, sharey=True, squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def arm_colors(arms: list[str]) -> dict[str, tuple]:
    """One distinct colour per arm: tab10 up to 10 arms, tab20 up to 20, else evenly spaced hues (never a wrap)."""
    plt = plt_agg()
    n = len(arms)
    if n <= 10:
        cmap, picks = plt.get_cmap("tab10"), list(range(n))
    elif n <= 20:
        cmap, picks = plt.get_cmap("tab20"), list(range(n))
    else:
        cmap, picks = plt.get_cmap("hsv"), [i / n for i in range(n)]
    return {a: tuple(cmap(p)) for a, p in zip(arms, picks)}


def _fit_steps(ax, arms: dict[str, dict]) -> None:
    """x axis from the first to the last evaluated step of these runs."""
    steps = [s for runs in arms.values() for r in runs.values() for s in r["steps"]]
    if steps:
        ax.set_xlim(min(steps), max(steps))


def make_figures(folder: Path, results: dict) -> list[tuple[str, str]]:
    """Write the experiment's PNGs into `folder`; returns (file, caption) pairs in report order."""
    plt = plt_agg()
    arms: dict[str, dict] = {a: results["arms"][a]["runs"] for a in results["arm_names"]}
    metric = results["metric"]
    name = metric.replace("_", "-")
    threshold = results["threshold"]
    window = results["window"]
    base = arms.get("baseline")
    figures: list[tuple[str, str]] = []
    colors = arm_colors(list(arms))

    fig, axes = _grid(len(arms))
    for ax, (arm, runs) in zip(axes, arms.items()):
        if base is not None and arm != "baseline":
            _band(ax, base, f"{metric}_best", "grey", "baseline", "--")
        _band(ax, runs, f"{metric}_best", colors[arm], arm)
        ax.axhline(threshold, color="black", linestyle=":", linewidth=0.8)
        ax.axvspan(window["start"], window["end"], color="gold", alpha=0.08)
        ax.set_title(arm, fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
    for ax in axes:
        ax.set_xlabel("step", fontsize=8)
    _fit_steps(axes[0], arms)
    axes[0].set_ylabel(f"best {name} score", fontsize=8)
    save_figure(fig, folder / "circuit_by_arm.png")
    figures.append(("circuit_by_arm.png", f"Best {name} score per arm over training steps: mean over seeds, band = min-max over "
                    f"seeds, baseline dashed; dotted line = threshold {threshold:g}; shaded = attribution window"))

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for arm, runs in arms.items():
        _band(ax, runs, f"{metric}_best", colors[arm], arm)
    ax.axhline(threshold, color="black", linestyle=":", linewidth=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel(f"best {name} score")
    _fit_steps(ax, arms)
    ax.legend(fontsize=7, ncol=2 if len(arms) > 6 else 1)
    save_figure(fig, folder / "circuit_all_arms.png")
    figures.append(("circuit_all_arms.png", f"All arms together (mean over seeds, band = min-max)"))

    fig, axes = _grid(len(arms))
    for ax, (arm, runs) in zip(axes, arms.items()):
        _band(ax, runs, f"{metric}_targeted", "tab:red", "targeted heads")
        _band(ax, runs, f"{metric}_other", "tab:blue", "other heads", "--")
        ax.set_title(arm, fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
    _fit_steps(axes[0], arms)
    axes[0].set_ylabel(f"mean {name} score", fontsize=8)
    save_figure(fig, folder / "targeted_vs_other.png")
    figures.append(("targeted_vs_other.png", f"Mean {name} score of the targeted heads ({', '.join(results['targeted_heads'])}) and "
                    "of the other heads, per arm (mean over seeds, band = min-max)"))

    other = "previous_token" if metric == "induction" else "induction"
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for arm, runs in arms.items():
        _band(axes[0], runs, f"{other}_best", colors[arm], arm)
        _band(axes[1], runs, "icl", colors[arm], arm)
        _band(axes[2], runs, "heldout_loss", colors[arm], arm)
    axes[0].set_title(f"best {other.replace('_', '-')} score", fontsize=10)
    axes[1].set_title("ICL score (late - early loss; lower = more ICL)", fontsize=10)
    axes[2].set_title("held-out loss", fontsize=10)
    for ax in axes:
        ax.set_xlabel("step")
        _fit_steps(ax, arms)
    axes[2].legend(fontsize=7, ncol=2 if len(arms) > 6 else 1)
    save_figure(fig, folder / "other_curves.png")
    figures.append(("other_curves.png", f"Per arm: best {other.replace('_', '-')} score, ICL score and held-out loss (mean over seeds)"))

    fig, ax = plt.subplots(figsize=(max(8, 0.8 * len(arms)), 4))
    end = max(max(r["steps"]) for runs in arms.values() for r in runs.values())
    shown: list[float] = []
    for i, (arm, runs) in enumerate(arms.items()):
        formed = [r["emergence"] for r in runs.values() if r["emergence"] is not None]
        missing = len(runs) - len(formed)
        jitter = np.linspace(-0.15, 0.15, max(1, len(runs)))[: len(formed)]
        ax.scatter(i + jitter, formed, color=colors[arm], zorder=3, s=22)
        shown += formed
        if formed and not missing:  # a mean only over exact values: a censored run is never averaged
            m, sd = mean_std(formed)
            shown += [m - (sd or 0.0), m + (sd or 0.0)]  # type: ignore[operator]
            ax.errorbar([i], [m], yerr=[sd or 0.0], fmt="_", color="black", capsize=6, markersize=18, zorder=4)
        if missing:
            shown.append(end)
            ax.scatter([i], [end], marker="^", color=colors[arm], s=40, zorder=3)
            ax.annotate(f"{missing} > {end}", (i, end), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
    ax.set_xticks(range(len(arms)))
    ax.set_xticklabels(list(arms), rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("emergence step")
    if shown:
        lo, hi = min(shown), max(shown)
        pad = max(0.08 * (hi - lo), 0.02 * max(hi, 1.0))
        ax.set_ylim(lo - pad, hi + 2.5 * pad)
    save_figure(fig, folder / "emergence.png")
    figures.append(("emergence.png", f"Emergence step of the {name} circuit per arm (interpolated between evaluations): one dot "
                    f"per seed, bar = mean +- sd where every run formed; triangle '> {end}' = runs in which it never reached "
                    f"{threshold:g} by step {end} (censored: not averaged)"))
    return figures


# --------------------------------------------------------------------------- the report
