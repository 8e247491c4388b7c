"""The Pythia user's journey through the commands, on CPU stand-ins of Pythia's formats: a folder of `stepK/` HF
checkpoints named like the hub model (`pythia-14m`: the 14m architecture's format, rotary share, parallel residual,
untied embeddings, at the smallest size; random weights) and a sharded Megatron corpus (Pythia-named `.bin` shards
+ one `.idx`, rows straddling shards). Score a window (heads auto) -> build-mix -> hand the mix to Megatron ->
experiment arms from stepSTART with micro-batches (dry run first, which writes nothing) -> report. Nothing is
downloaded."""
from __future__ import annotations

import json
import math
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from corpus_helpers import shard_bin
from curate.atomic import write_json
from curate.commands.experiment import print_dry_run
from curate.corpus import CorpusMeta, open_corpus
from curate.megatron import write_megatron
from curate.training.models import load_model
from curate.training.presets import preset_for

CONTEXT, VOCAB, ROWS, BATCH = 32, 256, 96, 4
CHECKPOINTS = (0, 2, 4)
START, END, ARM_STEPS = 2, 4, 6


def standin_checkpoints(folder: Path) -> Path:
    """`folder/stepK/` HF folders of the pythia-14m architecture's format at the smallest size (2 layers, width 32,
    4 heads, vocabulary 256, context 32), each of other random weights."""
    fields = {**preset_for("pythia-14m").architecture.config_fields(), "num_hidden_layers": 2, "hidden_size": 32,
              "num_attention_heads": 4, "intermediate_size": 128, "vocab_size": VOCAB, "max_position_embeddings": CONTEXT}
    for step in CHECKPOINTS:
        torch.manual_seed(step)
        GPTNeoXForCausalLM(GPTNeoXConfig(**fields)).save_pretrained(folder / f"step{step}")
    return folder


def sharded_corpus(folder: Path) -> Path:
    """`ROWS` rows of `CONTEXT + 1` tokens (a repeated half: induction has something to find) in 5 Pythia-named shards
    whose size is no multiple of a row, + `document.idx` and corpus.json (batch 4)."""
    rng = np.random.default_rng(0)
    half = rng.integers(0, VOCAB, (ROWS, (CONTEXT + 1) // 2 + 1))
    data = np.concatenate([half, half], axis=1)[:, : CONTEXT + 1]
    single = folder / "single"
    write_megatron(single / "document", data, np.uint16)
    size = (single / "document.bin").stat().st_size
    shards = shard_bin(single / "document.bin", folder, "document", math.ceil(size / 5) + 1)
    assert len(shards) == 5 and (size // 5) % ((CONTEXT + 1) * 2)  # rows straddle the shard boundaries
    (folder / "document.idx").write_bytes((single / "document.idx").read_bytes())
    for f in single.iterdir():
        f.unlink()
    single.rmdir()
    write_json(folder / "corpus.json", CorpusMeta(data="document.idx", batch_size=BATCH, vocab_size=VOCAB).to_json())
    corpus = open_corpus(folder)
    assert corpus.describe()["shards"] == 5 and np.array_equal(corpus.rows(0, ROWS), data)
    return folder


def curate(cwd: Path, *args) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "curate.cli", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture(scope="module")
def journey(tmp_path_factory) -> dict:
    """The journey's folders after score -> build-mix -> export -> experiment --dry-run -> experiment."""
    root = tmp_path_factory.mktemp("journey")
    model, corpus = standin_checkpoints(root / "models" / "pythia-14m"), sharded_corpus(root / "pile")
    work = root / "work"
    work.mkdir()
    score = ["score", "--circuit", "induction", "--model", model, "--revision", f"step{END}", "--corpus", corpus,
             "--window", f"{START}:{END}", "--fit-rows", 8, "--workers", 1, "--out", "scores", "--json", "--quiet"]
    auto = subprocess.run([sys.executable, "-m", "curate.cli", *map(str, score), "--heads", "auto"], cwd=work,
                          capture_output=True, text=True, timeout=600)
    # random weights: no head passes the induction threshold, and the one error line names the best head to choose
    assert auto.returncode == 2 and not (work / "scores").exists(), auto.stderr
    best = re.search(r"name the heads, e\.g\. (\d+\.\d+)", auto.stderr)
    assert best is not None, auto.stderr
    scores = json.loads(curate(work, *score, "--heads", best.group(1)).stdout)
    curate(work, "build-mix", "scores", "--remove", "25%", "--out", "mix")
    order = curate(work, "corpus", "export", "mix", "--to", "megatron-order", "--global-batch", BATCH, "--train-iters",
                   END - START, "--tokenizer", "null", "--out", "megatron-cache").stdout
    experiment = ["experiment", "--model", model, "--corpus", corpus, "--window", f"{START}:{END}", "--steps", ARM_STEPS,
                  "--eval-every", 2, "--arms", "remove-top,augment-top", "--methods", "mda", "--seeds", 1, "--remove", "25%",
                  "--augment", "25%", "--fit-rows", 8, "--micro-batch", 2, "--workers", 1, "--out", "exp"]
    before = tree(root)
    dry_json = json.loads(curate(work, *experiment, "--dry-run", "--quiet", "--json").stdout)
    after_dry = tree(root)
    results = json.loads(curate(work, *experiment, "--json", "--quiet").stdout)
    return {"root": root, "model": model, "corpus": corpus, "work": work, "scores": scores, "order": order,
            "dry_json": dry_json, "wrote_on_dry_run": sorted(set(after_dry) - set(before)), "results": results}


def test_score_reads_the_window_from_the_checkpoint_folder(journey) -> None:
    s = journey["scores"]
    assert s["rows"] == (END - START) * BATCH and s["rows_scored"] == s["rows"] and len(s["heads"]) == 1


def test_the_mix_goes_to_megatron_with_the_printed_flags(journey) -> None:
    flags = shlex.split(journey["order"].strip().splitlines()[-1])
    values = dict(zip(flags[::2], flags[1::2]))
    mix = journey["work"] / "mix"
    assert Path(values["--data-path"] + ".bin").is_file() and Path(values["--data-path"]).parent == mix.resolve()
    assert int(values["--seq-length"]) == CONTEXT and values["--split"] == "100,0,0"
    assert int(values["--global-batch-size"]) * int(values["--train-iters"]) == (END - START) * BATCH
    assert any(p.name.endswith("-GPTDataset-train-shuffle_index.npy") for p in (journey["work"] / "megatron-cache").iterdir())


def test_dry_run_prints_the_plan_and_a_cost_and_writes_nothing(journey, capsys) -> None:
    assert journey["wrote_on_dry_run"] == []
    plan = journey["dry_json"]
    assert plan["arms"] == ["baseline", "remove-top", "augment-top"] and plan["seeds"] == [0]
    assert plan["arm_steps"] == {"from": START, "to": ARM_STEPS, "steps": ARM_STEPS - START}
    assert plan["runs_to_train"] == 3 and plan["micro_batch"] == 2 and plan["precision"] == "fp32"
    assert plan["rows_scored"] == (END - START) * BATCH
    assert plan["tokens_trained"] == 3 * (ARM_STEPS - START) * BATCH * (CONTEXT + 1)
    cal = plan["train_calibration"]
    assert cal["steps"] >= 2 and cal["rows_per_step"] == BATCH and cal["micro_batch"] == 2
    assert plan["estimate"]["seconds_train"] == pytest.approx(3 * (ARM_STEPS - START) * cal["seconds_per_step"])
    assert plan["estimate"]["seconds"] > plan["estimate"]["seconds_train"] > 0
    print_dry_run(plan)
    text = capsys.readouterr().out
    assert "dry run (nothing written)" in text and "3 arms x 1 seeds = 3 runs, 3 distinct to train" in text
    assert "micro-batch 2" in text and "estimate: scoring" in text


def test_the_arms_train_from_step_start_with_accumulation_and_pythias_settings(journey) -> None:
    results = journey["results"]
    exp = journey["work"] / "exp"
    assert (exp / "report" / "report.md").is_file() and results["report"] == str((exp / "report").resolve())
    for arm in ("baseline", "remove-top", "augment-top"):
        spec = json.loads((exp / "arms" / arm / "seed0" / "run.json").read_text())["spec"]
        assert spec["micro_batch"] == 2 and spec["start_step"] == START and spec["steps"] == ARM_STEPS
        assert spec["weight_decay"] == 0.1 and spec["warmup_steps"] == 1430 and spec["schedule_steps"] == 143_000  # Pythia's


def test_an_arm_with_micro_batches_matches_curate_train_on_the_whole_batch(journey) -> None:
    """`curate train --from MODEL/stepSTART` (Pythia's settings again, the whole batch at once) ends where the
    experiment's baseline arm (2-row micro-batches) ends, to float tolerance."""
    work = journey["work"]
    curate(work, "train", "--model", journey["model"] / f"step{START}", "--corpus", journey["corpus"], "--start-step", START,
           "--steps", ARM_STEPS, "--eval-every", 2, "--checkpoints", "none", "--out", "full", "--quiet")
    assert json.loads((work / "full" / "run.json").read_text())["spec"]["weight_decay"] == 0.1  # Pythia's, as the arms'
    whole = load_model(work / "full", f"step{ARM_STEPS}")
    accumulated = load_model(work / "exp" / "arms" / "baseline" / "seed0", f"step{ARM_STEPS}")
    start = load_model(journey["model"], f"step{START}")
    moved = max(float((a - b).detach().abs().max()) for a, b in zip(whole.parameters(), start.parameters()))
    assert moved > 1e-6  # the runs trained
    for a, b in zip(whole.parameters(), accumulated.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_experiment_help_offers_pythias_batch_on_one_gpu(tmp_path) -> None:
    """The help names --micro-batch, --precision and --dry-run in the Pythia recipe, and no count or limit the code
    does not have (the plan's counts come from --dry-run)."""
    text = " ".join(curate(tmp_path, "experiment", "--help").stdout.split())
    assert "--micro-batch M --precision bf16" in text and "--dry-run" in text
    for stale in ("no gradient accumulation", "runs fp32", "21 arm runs", "seven arms"):
        assert stale not in text
