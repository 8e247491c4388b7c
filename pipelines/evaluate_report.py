"""The evaluation's outputs: EVAL/lds.json (every number), report.md (the LDS table, the subsets) and lds.png
(predicted vs measured effect per method, 150 dpi), each written atomically."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from curate.atomic import atomic_path, write_json
from curate.pipelines.lds_outcomes import AREA, EMERGENCE

Log = Callable[[str], None]

LDS_JSON = "lds.json"
REPORT_MD = "report.md"
PLOT_PNG = "lds.png"
PLOT_DPI = 150


def write_report(out: Path, results: dict, log: Log) -> None:
    write_json(out / LDS_JSON, results)
    with atomic_path(out / PLOT_PNG) as tmp:
        plot(results, tmp)
    with atomic_path(out / REPORT_MD) as tmp:
        tmp.write_text(markdown(results))
    log(f"evaluate: report {out / REPORT_MD}")


def _num(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:+.{digits}f}"


def _emergence(v: float | None, last: int) -> str:
    return f"> {last}" if v is None else f"{v:.0f}"


def design_text(r: dict) -> str:
    """One sentence: how the retrains leave the dropped rows out (`pipelines.lds_design`)."""
    if r.get("design", "compact") == "compact":
        return ("Design compact: the dropped rows are removed from the retrain's row stream and every later row moves up "
                "into the freed positions (so every later row trains earlier than in the baseline).")
    start, stop = r["filler_rows"]
    return (f"Design {r['design']}: each dropped row's position in the retrain's row stream holds a filler row instead, drawn "
            f"with the subset's seed from rows {start:,}-{stop:,} of the corpus (rows the retrains never train otherwise, "
            "before the held-out rows); every other row trains at its baseline step.")


def markdown(r: dict) -> str:
    w = r["window"]
    lines = [
        f"# Leave-subset-out score (LDS): {r['circuit']}, {r['split']} subsets",
        "",
        f"{len(r['subsets'])} random subsets of the window (steps {w['start']}-{w['end']}, {w['rows']:,} rows), each dropping "
        f"{r['drop']} ({r['subsets'][0]['dropped']:,} rows); one retrain per subset to step {r['retrain_steps']}. "
        f"Targeted heads {', '.join(r['targeted_heads'])}.",
        "",
        design_text(r),
        "",
        "Predicted effect of a subset: the sum of its dropped rows' scores. Measured: the area the targeted heads' mean "
        f"{r['metric']} score loses (minus its mean from step {w['start']} to the horizon, step {r['horizon']}), and the "
        f"best targeted head's emergence step (threshold {r['threshold']:g}, interpolated; a retrain that never formed "
        "ranks last). LDS = Spearman's rho across subsets, 95% percentile bootstrap interval over subsets "
        f"({r['bootstrap']['resamples']} resamples, seed {r['bootstrap']['seed']}). Positive: subsets whose rows score "
        "higher cost the circuit more.",
        "",
        "| method | LDS (area) | 95% interval | LDS (emergence) | 95% interval | censored |",
        "|---|---|---|---|---|---|",
    ]
    by = {(x["method"], x["outcome"]): x for x in r["lds"]}
    for m in r["methods"]:
        a, e = by[(m, AREA)], by[(m, EMERGENCE)]
        lines.append(f"| {m} | {_num(a['rho'])} | [{_num(a['low'], 2)}, {_num(a['high'], 2)}] | {_num(e['rho'])} | "
                     f"[{_num(e['low'], 2)}, {_num(e['high'], 2)}] | {e['censored']} |")
    base = r.get("baseline")
    lines += ["", f"![predicted vs measured]({PLOT_PNG})", ""]
    if base is not None:
        lines.append(f"Baseline run: area {base['area']:.4f}, emergence {_emergence(base['emergence'], base['last_step'])}.")
        lines.append("")
    lines += ["| subset seed | area | emergence | " + " | ".join(f"predicted ({m})" for m in r["methods"]) + " |",
              "|---" * (3 + len(r["methods"])) + "|"]
    for sub in r["subsets"]:
        o = sub["outcome"]
        lines.append(f"| {sub['seed']} | {o['area']:.4f} | {_emergence(o['emergence'], o['last_step'])} | "
                     + " | ".join(f"{sub['predicted'][m]:.4g}" for m in r["methods"]) + " |")
    lines += ["", "Scores folders:", ""] + [f"- {m}: `{f}`" for m, f in r["scores"].items()]
    return "\n".join(lines) + "\n"


def plot(r: dict, path: Path) -> None:
    """One panel per method: predicted effect vs measured area lost, LDS in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = r["methods"]
    by = {(x["method"], x["outcome"]): x for x in r["lds"]}
    base = r.get("baseline")
    ref = base["area"] if base is not None else 0.0
    lost = [ref - s["outcome"]["area"] for s in r["subsets"]]
    fig, axes = plt.subplots(1, len(methods), figsize=(3.6 * len(methods), 3.4), squeeze=False)
    for ax, m in zip(axes[0], methods):
        ax.scatter([s["predicted"][m] for s in r["subsets"]], lost, s=18)
        ax.set_title(f"{m}: LDS {_num(by[(m, AREA)]['rho'], 2)}", fontsize=10)
        ax.set_xlabel("predicted (sum of dropped rows' scores)", fontsize=8)
        ax.set_ylabel("area lost vs baseline" if base is not None else "minus area", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=PLOT_DPI)
    plt.close(fig)
