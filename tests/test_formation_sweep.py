"""bench/real_text_formation.py on the raw-text fixture: a run continued by --extend is the run trained that long."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "real_text_formation.py"
TEXT = ROOT / "tests" / "fixtures" / "raw_text"
SETTING = "2x32/h2/c32/b4/v300"


def _sweep(out: Path, *flags: str) -> list[dict]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(SCRIPT), "--text", str(TEXT), "--out", str(out), "--settings", SETTING,
                           "--eval-every", "10", "--heldout-rows", "8", *flags], capture_output=True, text=True, env=env, cwd=out.parent)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads((out / "sweep.json").read_text())


def test_extend_continues_a_finished_run_to_the_run_trained_that_long(tmp_path: Path) -> None:
    straight = _sweep(tmp_path / "straight", "--steps", "40")
    extended = _sweep(tmp_path / "extended", "--steps", "20", "--extend", "40")
    assert [r["name"] for r in extended] == ["2x32-h2-c32-b4-v300-lr0.001-to40"] and extended[0]["steps"] == 40
    name = "2x32-h2-c32-b4-v300-lr0.001"
    a = json.loads((tmp_path / "straight" / "runs" / name / "curves.json").read_text())["points"]
    b = json.loads((tmp_path / "extended" / "runs" / f"{name}-to40" / "curves.json").read_text())["points"]
    assert [p["step"] for p in b] == [0, 10, 20, 30, 40]  # the parent's history, then the continuation
    assert a == b  # losses and every head's scores, to the bit
    assert straight[0]["tokens_trained"] == extended[0]["tokens_trained"]
    again = _sweep(tmp_path / "extended", "--steps", "20", "--extend", "40")  # finished: only read
    assert again == [dict(extended[0], wall_s=again[0]["wall_s"])]
