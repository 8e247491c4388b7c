"""bench/formation_law.py on hand-written run folders: the censored floor, the fitted point and the extrapolated cost."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "formation_law.py"


def _point(step: int, tokens: int, induction_l1: float, prev_l0: float) -> dict:
    return {"step": step, "tokens": tokens, "induction": [[0.5, 0.5], [induction_l1, 0.01]],
            "previous_token": [[prev_l0, 0.05], [0.31, 0.1]]}


def _run(folder: Path, batch: int, context: int, steps: int, formed_step: int | None, tokens_per_s: float) -> Path:
    folder.mkdir()
    per_step = batch * context
    points = [_point(s, s * per_step, 0.4 if formed_step is not None and s >= formed_step else 0.02, 0.1 + s / 1e5)
              for s in range(0, steps + 1, 100)]
    (folder / "run.json").write_text(json.dumps({
        "model_config": {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 2, "vocab_size": 512},
        "spec": {"batch_size": batch, "lr": 1e-3, "induction_threshold": 0.3}, "row_len": context + 1}))
    (folder / "curves.json").write_text(json.dumps({"points": points}))
    (folder / "summary.json").write_text(json.dumps({
        "complete": True, "emergence": {"induction": {"emergence_step": formed_step}},
        "timing": {"tokens_per_s": tokens_per_s}}))
    return folder


def _law(*folders: Path) -> str:
    proc = subprocess.run([sys.executable, str(SCRIPT), *map(str, folders)], capture_output=True, text=True, cwd=folders[0].parent)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_every_run_censored_gives_a_floor_and_a_lower_bound_on_the_cost(tmp_path: Path) -> None:
    a = _run(tmp_path / "a", batch=4, context=64, steps=1000, formed_step=None, tokens_per_s=1000.0)
    b = _run(tmp_path / "b", batch=16, context=64, steps=500, formed_step=None, tokens_per_s=2000.0)
    out = _law(a, b)
    floor_a, floor_b = math.log10(1000 * 256 / 16), math.log10(500 * 1024 / 32)  # 4.21, 4.21: both 16,000
    assert f"> {floor_a:.2f}" in out and f"> {floor_b:.2f}" in out
    assert f"log10 a: {max(floor_a, floor_b):.2f} (floor (every run censored))" in out
    # the floor coefficient at b's sqrt(B x C) = 32 is 512,000 tokens, at 2,000 tokens/s 4.3 core-minutes
    assert ">= 4 core-min" in out
    assert "| 0.020 | 0.110 | layer 1, step 0 |" in out  # closeness: late induction, layer-0 previous-token, upper head


def test_a_formed_run_is_the_estimate_and_a_longer_censored_run_contradicts_it(tmp_path: Path) -> None:
    formed = _run(tmp_path / "formed", batch=4, context=64, steps=1000, formed_step=200, tokens_per_s=1000.0)
    out = _law(formed)
    assert "| 0.1M | 3.51 |" in out  # 200 steps x 256 tokens = 51,200 tokens; / 16 -> 10^3.51
    assert "log10 a: 3.51 (fitted)" in out and "no single coefficient" not in out
    longer = _run(tmp_path / "longer", batch=4, context=64, steps=2000, formed_step=None, tokens_per_s=1000.0)
    out = _law(formed, longer)
    assert "largest censored bound 4.51" in out and "no single coefficient fits" in out
