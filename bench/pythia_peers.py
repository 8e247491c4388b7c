"""curate vs kronfluence and bergson on identical work at Pythia size, measured side by side (interleaved) in one run.

On a `training.presets` architecture with random weights (default Pythia-70m) and random 2,049-token rows, one
torch thread on CPU (or `--device cuda`), the same rows for every tool:
- scoring: the influence of every row on ONE query, the induction probe (`attribution.probes.induction_probe` on 8
  repeat probes), through every layer's `query_key_value` and `dense`:
  - curate: the probe gradient, preconditioned with its EK-FAC factors, then `HeadInfluenceScorer.score_batch`
    over every head of the model (which is every row of those two weights, split by head);
  - kronfluence: `Analyzer.compute_pairwise_scores` (EK-FAC, the same modules, its fitted factors);
  - bergson: `collect_gradients` with a `Scorer` holding the query gradient (the per-row gradients of the same
    modules collected and scored on the fly, no projection, no preconditioning: its cheapest path);
- factor fitting: curate's `EKFACFitter.fit` (both passes, every head) vs kronfluence's `fit_all_factors`
  (covariances, eigendecomposition, eigenvalue correction; the same modules) on the same rows.
The peers are optional bench extras, installed apart from the project (`bench/RESULTS.md` says how); a peer that
does not import is skipped with the reason printed. Times: process CPU seconds (one thread), min / median of
`--repeats` interleaved rounds after a warm-up; ratios of medians (peer / curate: curate ahead when > 1).

    PYTHONPATH=. python bench/pythia_peers.py [--preset pythia-70m] [--rows 2] [--batch-rows 2] [--repeats 2]
        [--context N (shorter rows: a smoke run)]
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from curate.attribution.ekfac import EKFACFitter
from curate.attribution.heads import HeadGeometry
from curate.attribution.influence import probe_gradients
from curate.attribution.probes import build_probes, induction_probe
from pythia_common import WALL, clock_for, interleaved, med, n_params, scorer_for, standin_arguments, standin_setup


def module_names(model, kind: str) -> list[str]:
    """The names of every layer's `query_key_value` and `dense` (kind "qkv_dense")."""
    return [name for name, _ in model.named_modules() if name.endswith("attention.query_key_value") or name.endswith("attention.dense")]


class RowsDataset(torch.utils.data.Dataset):
    def __init__(self, data: np.ndarray) -> None:
        self.data = torch.from_numpy(np.asarray(data, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict:
        return {"input_ids": self.data[i]}


class ProbeDataset(torch.utils.data.Dataset):
    """One query: the whole probe set."""

    def __init__(self, probes: torch.Tensor) -> None:
        self.probes = probes

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> dict:
        return {"probes": self.probes}


def kronfluence_case(model, data: np.ndarray, probes: torch.Tensor, batch_rows: int, work: Path, dev: torch.device):
    """(fit, score) callables on kronfluence, or the reason it cannot run."""
    try:
        from kronfluence.analyzer import Analyzer, prepare_model
        from kronfluence.arguments import FactorArguments, ScoreArguments
        from kronfluence.task import Task
    except Exception as e:  # noqa: BLE001 - any import failure skips the peer
        return f"kronfluence not importable ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
    names = module_names(model, "qkv_dense")

    class InductionTask(Task):
        def compute_train_loss(self, batch, model, sample: bool = False) -> torch.Tensor:
            ids = batch["input_ids"]
            logits = model(input_ids=ids[:, :-1], use_cache=False).logits.float()
            flat = logits.reshape(-1, logits.shape[-1])
            if sample:
                with torch.no_grad():
                    labels = torch.multinomial(torch.softmax(flat.detach(), -1), 1).squeeze(-1)
            else:
                labels = ids[:, 1:].reshape(-1)
            return F.cross_entropy(flat, labels, reduction="sum")

        def compute_measurement(self, batch, model) -> torch.Tensor:
            return induction_probe(model, batch["probes"].reshape(-1, batch["probes"].shape[-1]))

        def get_influence_tracked_modules(self):
            return names

    import copy

    task = InductionTask()
    kmodel = prepare_model(copy.deepcopy(model), task)  # it wraps the modules in place: a copy, so the others see plain ones
    analyzer = Analyzer("pythia", kmodel, task, cpu=dev.type == "cpu", disable_tqdm=True, output_dir=str(work / "kronfluence"),
                        log_level=40)
    train, query = RowsDataset(data), ProbeDataset(probes)
    fargs = FactorArguments(strategy="ekfac")

    def fit() -> None:
        analyzer.fit_all_factors("ekfac", train, per_device_batch_size=batch_rows, factor_args=fargs, overwrite_output_dir=True)

    def score() -> None:
        analyzer.compute_pairwise_scores("scores", "ekfac", query, train, per_device_query_batch_size=1,
                                         per_device_train_batch_size=batch_rows, score_args=ScoreArguments(),
                                         overwrite_output_dir=True)

    return fit, score


def bergson_case(model, data: np.ndarray, probes: torch.Tensor, batch_rows: int, work: Path, dev: torch.device):
    """The scoring callable on bergson, or the reason it cannot run."""
    try:
        import bergson  # noqa: F401
        from bergson import GradientProcessor, IndexConfig, Scorer, collect_gradients
        from bergson.score.score_writer import InMemorySequenceScoreWriter
        from bergson.utils.worker_utils import processor_for
        from datasets import Dataset
    except Exception as e:  # noqa: BLE001
        return f"bergson not importable ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
    names = module_names(model, "qkv_dense")
    base = model.base_model
    prefix = next(n for n, m in model.named_modules() if m is base)
    short = [n[len(prefix) + 1 :] if prefix and n.startswith(prefix + ".") else n for n in names]
    ds = Dataset.from_dict({"input_ids": [list(map(int, r)) for r in data], "length": [len(r) for r in data]})
    state: dict = {}
    batches = [list(range(a, min(a + batch_rows, len(data)))) for a in range(0, len(data), batch_rows)]

    cfg = IndexConfig(run_path=str(work / "bergson"), projection_dim=0, skip_hessians=True) if _has_field(IndexConfig, "skip_hessians") \
        else IndexConfig(run_path=str(work / "bergson"), projection_dim=0)
    processor = processor_for(cfg, {})

    def query_gradient() -> dict[str, torch.Tensor]:
        """The query's gradient on every tracked module (bergson keys them by the name under model.base_model)."""
        weights = [model.get_submodule(n).weight for n in names]
        flags = [(p, p.requires_grad) for p in model.parameters()]
        for p, _ in flags:
            p.requires_grad_(False)
        for w in weights:
            w.requires_grad_(True)
        try:
            grads = torch.autograd.grad(induction_probe(model, probes), weights)
        finally:
            for p, f in flags:
                p.requires_grad_(f)
        return {s: g.reshape(1, -1) for s, g in zip(short, grads)}

    def score() -> None:
        query = query_gradient()
        scorer = Scorer(query, short, InMemorySequenceScoreWriter(len(data), 1), dev, torch.float32)
        collect_gradients(model, ds, processor, cfg, batches=batches, target_modules=set(short), scorer=scorer)
        state["bergson"] = scorer.writer.scores

    return score


def _has_field(cls, name: str) -> bool:
    import inspect

    return name in getattr(cls, "__dataclass_fields__", {}) or name in inspect.signature(cls.__init__).parameters


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    standin_arguments(ap)
    ap.add_argument("--skip", default="", help="comma-separated peers not to run (kronfluence, bergson)")
    args = ap.parse_args(argv)
    model, data, dev, sync = standin_setup(args)
    geo = HeadGeometry.of(model)
    heads = geo.all_heads()
    mode = "qkvo"
    probes = build_probes(model.config, n=8, seed=0).to(dev)
    print(f"{args.preset} stand-in: {n_params(model):,} parameters; {len(data)} rows of {data.shape[1]:,} tokens, batches of "
          f"{args.batch_rows}; one query (the induction probe, {probes.shape[0]} probes); modules: every layer's "
          f"query_key_value and dense ({len(heads)} heads, mode {mode}); {args.threads} thread(s)")
    fit_batches = [(list(range(a, min(a + args.batch_rows, len(data)))), data[a : a + args.batch_rows])
                   for a in range(0, len(data), args.batch_rows)]
    state: dict = {}

    def curate_fit() -> None:
        state["factors"] = EKFACFitter(model, heads, mode, seed=0).fit(fit_batches)

    def curate_score() -> None:
        grads = probe_gradients(model, lambda m, h: induction_probe(m, probes), heads, mode, shared=True)
        scorer = scorer_for(model, heads, mode, state["factors"].precondition(grads))
        for _, rows in fit_batches:
            scorer.score_batch(rows)

    curate_fit()
    fit_cases = {"curate fit": curate_fit}
    score_cases = {"curate score": curate_score}
    skipped = {}
    work = Path(tempfile.mkdtemp(prefix="pythia-peers-"))
    try:
        skip = set(filter(None, args.skip.split(",")))
        k = "kronfluence: skipped (--skip)" if "kronfluence" in skip else kronfluence_case(model, data, probes, args.batch_rows, work, dev)
        if isinstance(k, str):
            skipped["kronfluence"] = k
        else:
            fit_cases["kronfluence fit_all_factors"], score_cases["kronfluence pairwise"] = k
            k[0]()  # its factors exist before its scoring is timed
        b = "bergson: skipped (--skip)" if "bergson" in skip else bergson_case(model, data, probes, args.batch_rows, work, dev)
        if isinstance(b, str):
            skipped["bergson"] = b
        else:
            score_cases["bergson collect+score"] = b
        for name, why in skipped.items():
            print(f"skipped {name}: {why}")
        clock, clock_name = clock_for(dev)
        times = interleaved({**fit_cases, **score_cases}, args.repeats, sync, clock=clock)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{clock_name}:")
    print(f"{'case':<30s} {'min s':>8s} {'median s':>9s} {'wall median s':>14s}")
    for name, v in times.items():
        print(f"{name:<30s} {min(v):8.2f} {med(v):9.2f} {med(WALL[name]):14.2f}")
    print("\nratios of medians, peer / curate (curate ahead when > 1; goal >= 1.5 for scoring):")
    for name in score_cases:
        if name != "curate score":
            print(f"  scoring: {name} / curate score: {med(times[name]) / med(times['curate score']):.2f}")
    for name in fit_cases:
        if name != "curate fit":
            print(f"  fitting: {name} / curate fit: {med(times[name]) / med(times['curate fit']):.2f}")


if __name__ == "__main__":
    main()
