"""Training curves: per-evaluation metrics, emergence steps, and the files a run writes.

An evaluation point is a plain dict: step, tokens, loss (mean training loss over the updates since the
previous evaluation; None at the first point), lr (of the last update), heldout_loss, icl (None without held-out rows),
induction and previous_token ((layers x heads) nested lists). The best induction head is taken over
layers >= 1 (a layer-0 head cannot do induction; its prefix-matching score would be positional), the
best previous-token head over all layers.
"""
from __future__ import annotations

from pathlib import Path

from curate.atomic import atomic_path, write_json
from curate.attribution.metrics import best_of

CURVES_JSON = "curves.json"
CURVES_PARQUET = "curves.parquet"
SUMMARY_JSON = "summary.json"
CURVES_PNG = "curves.png"
METRICS = ("induction", "previous_token")


def best_head(point: dict, metric: str) -> tuple[str, float]:
    """("L.H", value) of the best head for `metric` at one evaluation point (`attribution.metrics.best_of`)."""
    head, value = best_of(point[metric], metric)
    return str(head), value


def emergence_step(steps: list[int], values: list[float], threshold: float) -> int | None:
    """First step whose value reaches `threshold` and stays at or above it for every later point."""
    found: int | None = None
    for step, value in zip(steps, values):
        if value >= threshold:
            if found is None:
                found = step
        else:
            found = None
    return found


def summarize_curves(curves: list[dict], thresholds: dict[str, float]) -> dict:
    """Emergence of each circuit (absolute threshold, and 50% of the final value) plus final values."""
    out: dict = {}
    if not curves:
        return out
    steps = [int(p["step"]) for p in curves]
    for metric in METRICS:
        best = [best_head(p, metric) for p in curves]
        values = [v for _, v in best]
        threshold = float(thresholds[metric])
        step = emergence_step(steps, values, threshold)
        final = values[-1]
        half_step = emergence_step(steps, values, 0.5 * final) if final > 0 else None
        out[metric] = {
            "threshold": threshold,
            "emergence_step": step,
            "emergence_head": best[steps.index(step)][0] if step is not None else None,
            "half_final_step": half_step,
            "final": final,
            "final_head": best[-1][0],
            "max": max(values),
        }
    icl = [(int(p["step"]), p["icl"]) for p in curves if p.get("icl") is not None]
    if icl:
        out["icl"] = {"initial": icl[0][1], "final": icl[-1][1], "min": min(v for _, v in icl)}
    losses = [p["heldout_loss"] for p in curves if p.get("heldout_loss") is not None]
    if losses:
        out["heldout_loss"] = {"initial": losses[0], "final": losses[-1]}
    train = [p["loss"] for p in curves if p.get("loss") is not None]
    if train:
        out["train_loss"] = {"first": train[0], "final": train[-1]}
    return out


def curves_table(curves: list[dict]):
    """The curves as a pyarrow Table: scalar columns, best heads, and one column per head and metric."""
    import pyarrow as pa

    cols: dict[str, list] = {k: [] for k in ("step", "tokens", "loss", "lr", "heldout_loss", "icl")}
    for metric in METRICS:
        cols[f"best_{metric}"] = []
        cols[f"best_{metric}_head"] = []
    per_head: dict[str, list] = {}
    for p in curves:
        for k in ("step", "tokens", "loss", "lr", "heldout_loss", "icl"):
            cols[k].append(p.get(k))
        for metric in METRICS:
            name, value = best_head(p, metric)
            cols[f"best_{metric}"].append(value)
            cols[f"best_{metric}_head"].append(name)
            for layer, row in enumerate(p[metric]):
                for head, value in enumerate(row):
                    per_head.setdefault(f"{metric}_{layer}_{head}", []).append(float(value))
    types = {"step": pa.int64(), "tokens": pa.int64(), "loss": pa.float64(), "lr": pa.float64(), "heldout_loss": pa.float64(), "icl": pa.float64()}
    arrays = {k: pa.array(v, type=types.get(k)) for k, v in cols.items()}
    arrays.update({k: pa.array(v, type=pa.float64()) for k, v in per_head.items()})
    return pa.table(arrays)


def write_curves(run_dir: Path, curves: list[dict], summary: dict, plot: bool = True) -> None:
    """curves.json, curves.parquet, curves.png and, last, summary.json in `run_dir`, each written atomically
    (a complete summary is the mark of a finished run: nothing is written after it)."""
    import pyarrow.parquet as pq

    run_dir = Path(run_dir)
    write_json(run_dir / CURVES_JSON, {"points": curves})
    with atomic_path(run_dir / CURVES_PARQUET) as tmp:
        pq.write_table(curves_table(curves), tmp)
    if plot and curves:
        plot_curves(run_dir / CURVES_PNG, curves, summary.get("emergence", {}))
    write_json(run_dir / SUMMARY_JSON, summary)


def plot_curves(path: Path, curves: list[dict], emergence: dict) -> None:
    """Best induction, best previous-token, ICL and loss against step, emergence steps marked (Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [p["step"] for p in curves]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True)
    panels = [
        (axes[0, 0], "induction", "best induction score (layers >= 1)"),
        (axes[0, 1], "previous_token", "best previous-token score"),
    ]
    for ax, metric, title in panels:
        ax.plot(steps, [best_head(p, metric)[1] for p in curves], marker=".", color="C0")
        info = emergence.get(metric, {})
        if "threshold" in info:
            ax.axhline(info["threshold"], color="grey", linestyle=":", linewidth=1, label=f"threshold {info['threshold']:g}")
        if info.get("emergence_step") is not None:
            ax.axvline(info["emergence_step"], color="C3", linestyle="--", label=f"emerges at step {info['emergence_step']}")
        ax.set_title(title)
        ax.set_ylim(0, 1)
        ax.legend(loc="lower right", fontsize=8)
    icl = [(p["step"], p["icl"]) for p in curves if p.get("icl") is not None]
    ax = axes[1, 0]
    if icl:
        ax.plot([s for s, _ in icl], [v for _, v in icl], marker=".", color="C2")
    ind_step = emergence.get("induction", {}).get("emergence_step")
    if ind_step is not None:
        ax.axvline(ind_step, color="C3", linestyle="--")
    ax.set_title("ICL score (late - early loss)")
    ax = axes[1, 1]
    train = [(p["step"], p["loss"]) for p in curves if p.get("loss") is not None]
    held = [(p["step"], p["heldout_loss"]) for p in curves if p.get("heldout_loss") is not None]
    if train:
        ax.plot([s for s, _ in train], [v for _, v in train], label="train (running mean)", color="C0")
    if held:
        ax.plot([s for s, _ in held], [v for _, v in held], label="held-out", color="C1")
    if ind_step is not None:
        ax.axvline(ind_step, color="C3", linestyle="--")
    ax.set_title("loss")
    ax.legend(fontsize=8)
    for ax in axes[1]:
        ax.set_xlabel("step")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
