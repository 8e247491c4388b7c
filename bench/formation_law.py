"""The induction-head formation law fitted to our own runs, and the cost it extrapolates to.

Aoyama, Wilcox & Schneider 2025 (arXiv 2511.16893) fit the tokens by which an induction head forms as
N = a x sqrt(batch x context) with log10(a) = 5.7 (2 layers, width 768, GPT-2's vocabulary, CC100). This script
reads `curate train` run folders (the formation sweep's `runs/*`), measures per run the tokens trained, the step at
which the best head of layers >= 1 reached the run's induction threshold, and the throughput, and fits log10(a):

- a run that formed a head gives a point, log10(tokens at formation / sqrt(B x C));
- a run that never formed gives a lower bound, log10(tokens trained / sqrt(B x C)) (censored);
- the fit is the mean of the points when any run formed (reported beside the largest lower bound, which must not
  exceed it if one coefficient holds for all settings), else only the largest lower bound: a floor, not an estimate.

The extrapolated cost of each setting is the fitted (or floor) coefficient times its sqrt(B x C), divided by the
run's measured tokens per second on its one core. It also prints, per run, how close it came: the best induction
score after the first quarter of the run (initialisation gives ~0.02 by chance) and the best layer-0
previous-token score (an induction head of layer 1 composes with a previous-token head below it).

    PYTHONPATH=. python bench/formation_law.py /work/rt/sweep/runs/* [--published 5.7]
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

PUBLISHED_LOG10_A = 5.7


@dataclass(frozen=True)
class FormationRun:
    """One run folder's shape, how far it trained and what formed."""

    name: str
    layers: int
    hidden: int
    heads: int
    vocab: int
    context: int
    batch: int
    lr: float
    seed: int
    tokens_trained: int
    formed_tokens: int | None
    complete: bool
    tokens_per_s: float | None
    late_induction_max: float
    layer0_previous_token_max: float
    upper_previous_token: tuple[int, int] | None  # (layer, step) of the first head of layers >= 1 at >= 0.3

    @property
    def setting(self) -> str:
        """The sweep's spelling (LAYERSxHIDDEN/hHEADS/cCONTEXT/bBATCH/vVOCAB/lrLR) and the seed."""
        return f"{self.layers}x{self.hidden}/h{self.heads}/c{self.context}/b{self.batch}/v{self.vocab}/lr{self.lr:g}, seed {self.seed}"

    @property
    def sqrt_bc(self) -> float:
        return math.sqrt(self.batch * self.context)

    @property
    def log10_a(self) -> float:
        """The point (formed) or the lower bound (censored) on log10(a)."""
        return math.log10((self.formed_tokens or self.tokens_trained) / self.sqrt_bc)


def read_run(folder: Path) -> FormationRun:
    run = json.loads((folder / "run.json").read_text())
    summary = json.loads((folder / "summary.json").read_text())
    points = json.loads((folder / "curves.json").read_text())["points"]
    if not points:
        raise SystemExit(f"error: {folder}: no evaluation points yet")
    cfg, spec = run["model_config"], run["spec"]
    context = int(run["row_len"]) - 1
    step = summary["emergence"]["induction"]["emergence_step"]
    per_step = int(spec["batch_size"]) * context
    late = [p for p in points if p["step"] >= points[-1]["step"] / 4]
    upper_prev = next(((layer, p["step"]) for p in points for layer, heads in enumerate(p["previous_token"])
                       if layer >= 1 and max(heads) >= 0.3), None)
    timing = summary.get("timing") or {}
    return FormationRun(
        name=folder.name, layers=int(cfg["num_hidden_layers"]), hidden=int(cfg["hidden_size"]),
        heads=int(cfg["num_attention_heads"]), vocab=int(cfg["vocab_size"]), context=context,
        batch=int(spec["batch_size"]), lr=float(spec["lr"]), seed=int(spec.get("seed", 0)), tokens_trained=int(points[-1]["tokens"]),
        formed_tokens=None if step is None else int(step) * per_step, complete=bool(summary.get("complete")),
        tokens_per_s=timing.get("tokens_per_s"),
        late_induction_max=max(max(h) for p in late for h in p["induction"][1:]),
        layer0_previous_token_max=max(max(p["previous_token"][0]) for p in points), upper_previous_token=upper_prev)


def fit(runs: list[FormationRun]) -> tuple[float, bool, float | None]:
    """(log10 a, whether it is an estimate rather than a floor, the largest censored lower bound)."""
    formed = [r.log10_a for r in runs if r.formed_tokens is not None]
    floors = [r.log10_a for r in runs if r.formed_tokens is None]
    floor = max(floors) if floors else None
    if formed:
        return sum(formed) / len(formed), True, floor
    if floor is None:
        raise SystemExit("error: no runs")
    return floor, False, floor


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="curate train run folders")
    ap.add_argument("--published", type=float, default=PUBLISHED_LOG10_A, help="the published log10(a) to compare")
    args = ap.parse_args()
    runs = [read_run(f) for f in args.runs if (f / "summary.json").is_file()]
    log10_a, estimate, floor = fit(runs)
    print("| run | setting | B x C | tokens trained | law's budget (published) | formed at | log10 a | best induction, "
          "layers >= 1, after the first quarter | layer-0 previous-token | first previous-token >= 0.3 above layer 0 "
          "| tokens/s (1 core) | extrapolated cost |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in runs:
        budget = 10 ** args.published * r.sqrt_bc
        need = 10 ** log10_a * r.sqrt_bc
        cost = "-" if not r.tokens_per_s else f"{'' if estimate else '>= '}{need / r.tokens_per_s / 60:,.0f} core-min"
        formed = "never" if r.formed_tokens is None else f"{r.formed_tokens / 1e6:.1f}M"
        bound = f"{r.log10_a:.2f}" if r.formed_tokens is not None else f"> {r.log10_a:.2f}"
        prev = "-" if r.upper_previous_token is None else f"layer {r.upper_previous_token[0]}, step {r.upper_previous_token[1]:,}"
        rate = "-" if not r.tokens_per_s else f"{r.tokens_per_s:,.0f}"
        print(f"| {r.name}{'' if r.complete else ' (stopped)'} | {r.setting} | {r.batch} x {r.context} | {r.tokens_trained / 1e6:.1f}M "
              f"| {budget / 1e6:.1f}M ({r.tokens_trained / budget:.2f}x) | {formed} | {bound} | {r.late_induction_max:.3f} "
              f"| {r.layer0_previous_token_max:.3f} | {prev} | {rate} | {cost} |")
    kind = "fitted" if estimate else "floor (every run censored)"
    print(f"\nlog10 a: {log10_a:.2f} ({kind}); published {args.published:.2f}"
          + (f"; largest censored bound {floor:.2f}" if estimate and floor is not None else ""))
    if estimate and floor is not None and floor > log10_a:
        print("no single coefficient fits: a run that never formed trained past the fitted coefficient's budget")


if __name__ == "__main__":
    main()
