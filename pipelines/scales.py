"""`curate experiment --scales`: the baseline and the augmentation arms (top duplicates, random duplicates,
synthetic motifs) on several sizes of the default model family, each size with its own baseline run, its own
scores and its own report (EXP/scales/HxL/), and one report of the acceleration per size (EXP/report/).

A size HxL is the base model config (the embedded default, or --config) with hidden size H, L layers and the
base's MLP ratio; the number of heads stays (H must be a multiple of it).
"""
from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from transformers import GPTNeoXForCausalLM

from curate.atomic import atomic_dir, write_json
from curate.corpus import open_corpus
from curate.default_corpus import ensure_default_corpus
from curate.errors import CurateError
from curate.outputs import EXPERIMENT, check_output_folder
from curate.pipelines.arms import SCALE_ARMS, parse_arms
from curate.pipelines.ray_holder import ray_holder
from curate.pipelines.experiment import run_experiment
from curate.pipelines.experiment_options import command_line, parse_sizes
from curate.pipelines.experiment_setting import EXPERIMENT_FILE, default_out
from curate.pipelines.report import Doc, render_html, render_md
from curate.pipelines.report_figures import arm_colors, plt_agg, save_figure
from curate.training.default_model import default_model_config
from curate.training.models import config_from_dict, load_config_file
from curate.training.models import corpus_vocab_size
from curate.workspace import resolve_workspace

Log = Callable[[str], None]


def size_name(hidden: int, layers: int) -> str:
    return f"{hidden}x{layers}"


def size_config(base: dict, hidden: int, layers: int) -> dict:
    """The base config resized: hidden size, layers, MLP width at the base's ratio; heads unchanged."""
    heads = int(base.get("num_attention_heads", 4))
    if hidden % heads:
        raise CurateError(f"hidden size {hidden} is not a multiple of the {heads} attention heads")
    ratio = int(base.get("intermediate_size", 4 * int(base["hidden_size"]))) / int(base["hidden_size"])
    cfg = {k: v for k, v in base.items() if k not in ("_name_or_path", "transformers_version", "architectures")}
    cfg.update(hidden_size=hidden, num_hidden_layers=layers, intermediate_size=int(round(ratio * hidden)))
    return cfg


def parameter_count(config: dict) -> int:
    """Parameters of a GPT-NeoX built from `config` (on the meta device: nothing is allocated)."""
    with torch.device("meta"):
        model = GPTNeoXForCausalLM(config_from_dict(config))
    return int(sum(p.numel() for p in model.parameters()))


def _base_config(opts, ws: Path, log: Log) -> tuple[dict, str | None]:
    """(base config dict, corpus path) for the sizes: --config, else the default model for the corpus's vocabulary."""
    if opts.config is not None:
        return load_config_file(opts.config), opts.corpus
    if opts.corpus is not None:
        corpus_path = opts.corpus
    else:
        corpus_path = str(ensure_default_corpus(ws, opts.progress, log))

    return default_model_config(corpus_vocab_size(open_corpus(corpus_path))).to_dict(), opts.corpus


SCALES_KEY = "scales"  # in the --scales folder's experiment.json: the sizes


def check_scales_folder(out: Path, inputs: list) -> None:
    """The --scales folder follows every writer's rule (`curate.outputs`): absent, empty or an experiment folder
    holding none of the inputs; and an experiment folder must be a --scales one (not a single experiment)."""
    check_output_folder(out, EXPERIMENT, inputs)
    marker = out / EXPERIMENT_FILE
    if marker.is_file():
        try:
            body = json.loads(marker.read_text())
        except (OSError, ValueError):
            raise CurateError(f"{marker}: not valid JSON; remove it or use another output folder") from None
        if not isinstance(body, dict) or SCALES_KEY not in body:
            raise CurateError(f"{out}: holds a single experiment, not a --scales one; use another output folder")
    elif out.is_dir() and any(out.iterdir()) and not (out / SCALES_KEY).is_dir():  # (a --scales folder of before the marker)
        raise CurateError(f"{out}: holds a curate experiment, not a --scales one; use another output folder")


def run_scales(opts, log: Log = lambda m: None) -> dict:
    """Run every size's experiment (resumable like one experiment), then write the acceleration report."""
    opts.validate()
    sizes = parse_sizes(opts.sizes)
    ws = resolve_workspace(opts.workspace)
    out = Path(opts.out) if opts.out is not None else default_out(opts, ws)
    if out.exists() and not out.is_dir():
        raise CurateError(f"{out}: exists and is not a folder")
    if opts.corpus is not None:
        open_corpus(opts.corpus)
    arms = ",".join(parse_arms(opts.arms, default=SCALE_ARMS))
    heads = None
    if opts.config is not None:
        heads = int(load_config_file(opts.config).get("num_attention_heads", 4))
    for hidden, _ in sizes:  # cheap checks before anything is written
        if heads is not None and hidden % heads:
            raise CurateError(f"hidden size {hidden} is not a multiple of the {heads} attention heads")
    check_scales_folder(out, [opts.corpus, opts.config, opts.model])
    base, corpus = _base_config(opts, ws, log)
    configs = {size_name(h, l): size_config(base, h, l) for h, l in sizes}
    write_json(out / EXPERIMENT_FILE, {SCALES_KEY: list(configs), "command": command_line(opts)})  # names the folder's kind

    per_size: dict[str, dict] = {}
    with ray_holder(opts.workers or (os.cpu_count() or 1)) as holder:
        for name, cfg in configs.items():
            folder = out / "scales" / name
            cfg_path = folder / "model-config.json"
            if not cfg_path.is_file() or json.loads(cfg_path.read_text()) != cfg:
                write_json(cfg_path, cfg)
            log(f"scales: size {name} ({parameter_count(cfg):,} parameters) -> {folder}")
            sub = replace(opts, scales=False, config=str(cfg_path.resolve()), arms=arms, out=folder, corpus=corpus)
            per_size[name] = run_experiment(sub, log, ray=holder)
    table = scales_table(per_size, {n: parameter_count(c) for n, c in configs.items()})
    results = {
        "circuit": next(iter(per_size.values()))["circuit"],
        "sizes": list(configs),
        "configs": configs,
        "table": table,
        "per_size": {n: {"report": r["report"], "window": r["window"], "targeted_heads": r["targeted_heads"],
                         "effects": r["effects"], "verdicts": r["verdicts"], "comparisons": r["comparisons"]}
                     for n, r in per_size.items()},
        "report": str((out / "report").resolve()),
        "command": command_line(opts),
    }
    write_scales_report(out / "report", results, per_size, log)
    return results


def scales_table(per_size: dict[str, dict], params: dict[str, int]) -> list[dict]:
    """Per size and augmentation arm: emergence (mean over the runs that formed), the baseline's, the acceleration
    (baseline minus arm, paired by seed; none when a run never formed: censored, never averaged), its share of the
    baseline's emergence, final-score delta."""
    rows = []
    for name, res in per_size.items():
        effects = {e["arm"]: e for e in res["effects"]}
        base = effects.get("baseline")
        for arm, e in effects.items():
            if arm == "baseline":
                continue
            accel = 0.0 - e["emergence_delta"] if e["emergence_delta"] is not None else None
            accel = accel + 0.0 if accel is not None else None  # no negative zero
            base_em = base["emergence_mean"] if base is not None else None
            share = accel / base_em if accel is not None and base_em else None
            rows.append({
                "size": name, "params": params[name], "arm": arm,
                "emergence_mean": e["emergence_mean"], "baseline_emergence_mean": base_em,
                "acceleration_steps": accel, "acceleration_share": share, "acceleration_censored": e["emergence_censored"],
                "score_delta": e["score_delta"], "formed": f"{e['formed']}/{len(e['seeds'])}",
                "emergence": "none" if e["emergence_mean"] is None else f"{e['emergence_mean']:.0f}",
                "baseline_emergence": "none" if base_em is None else f"{base_em:.0f}",
                "acceleration": "n/a" if accel is None else f"{accel:+.0f} steps" + (f" ({share:+.0%})" if share is not None else ""),
                "score_delta_text": "n/a" if e["score_delta"] is None else f"{e['score_delta']:+.3g}",
            })
    return rows


def write_scales_report(folder: Path, results: dict, per_size: dict[str, dict], log: Log) -> None:
    with atomic_dir(folder) as tmp:
        _figure(tmp / "scales.png", results["table"], per_size)
        doc = Doc()
        doc.h1(f"Mechanistic data augmentation across model sizes ({results['circuit']})")
        doc.p("Each size has its own baseline run, scores and arms (report linked below). Acceleration = baseline emergence "
              "step minus the arm's, paired by seed and averaged; 'n/a' = some run never formed (censored: its step is "
              "only known to lie beyond the run's end, never averaged). The final-score delta is the arm's final best-head "
              "score minus the baseline's.")
        doc.table(["size", "parameters", "arm", "formed", "emergence", "baseline emergence", "acceleration", "final score delta"],
                  [[r["size"], f"{r['params']:,}", r["arm"], r["formed"], r["emergence"], r["baseline_emergence"],
                    r["acceleration"], r["score_delta_text"]] for r in results["table"]])
        doc.img("scales.png", "Emergence step (left; missing where the circuit never formed) and final best-head score (right) "
                "against model size, per arm (mean over seeds)")
        doc.h2("Expected effect per size: augment-top sooner than augment-random")
        doc.table(["size", "status", "numbers"], [
            [n, v["status"], v["detail"]] for n, r in per_size.items() for v in r["verdicts"] if v["key"] == "augment_top_sooner"])
        doc.h2("Per-size reports")
        doc.items([f"{n}: {r['report']}/report.md" for n, r in per_size.items()])
        doc.h2("Rerun")
        doc.code(results["command"])
        (tmp / "report.md").write_text(render_md(doc))
        (tmp / "report.html").write_text(render_html(doc, tmp, "augmentation across model sizes"))
        write_json(tmp / "results.json", results)
    log(f"report: {folder / 'report.md'}  {folder / 'report.html'}")


def _figure(path: Path, table: list[dict], per_size: dict[str, dict]) -> None:
    plt = plt_agg()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    arms = ["baseline"] + sorted({r["arm"] for r in table})
    params = {r["size"]: r["params"] for r in table}
    sizes = sorted(per_size, key=lambda n: params.get(n, 0))
    colors = arm_colors(arms)
    for arm in arms:
        xs, em, sc = [], [], []
        for n in sizes:
            e = next((e for e in per_size[n]["effects"] if e["arm"] == arm), None)
            if e is None:
                continue
            xs.append(params[n])
            em.append(np.nan if e["emergence_mean"] is None else e["emergence_mean"])
            sc.append(np.nan if e["score_final"] is None else e["score_final"])
        style = "--" if arm == "baseline" else "-"
        axes[0].plot(xs, em, style, marker="o", color=colors[arm], label=arm)
        axes[1].plot(xs, sc, style, marker="o", color=colors[arm], label=arm)
    for ax, title in zip(axes, ("emergence step", "final best-head score")):
        ax.set_xscale("log")
        ax.set_xlabel("parameters")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    save_figure(fig, path)
