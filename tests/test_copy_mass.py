"""bench/copy_mass.py on hand-written scores folders of a 10-row window: the copy mass in each method's top rows,
per checkpoint of a trajectory folder, the overlaps, and the refusals (one `error:` line)."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.errors import CurateError

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("copy_mass", ROOT / "bench" / "copy_mass.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["copy_mass"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def scores_folder(folder: Path, scores: list[float], method: str, window=(0, 2), batch=5, trajectory: dict | None = None) -> Path:
    (folder / "shards").mkdir(parents=True)
    summary = {"corpus": "unused", "window": list(window), "batch_size": batch, "method": method}
    if trajectory is not None:
        summary["trajectory"] = trajectory
    (folder / "summary.json").write_text(json.dumps(summary))
    first = window[0] * batch
    ids = np.arange(first, first + len(scores), dtype=np.int64)
    pq.write_table(pa.table({"row_id": ids, "score": np.asarray(scores, dtype=np.float64)}), folder / "shards" / "rows.parquet")
    return folder


@pytest.fixture
def folders(tmp_path) -> dict:
    rows = np.arange(10)
    copy = scores_folder(tmp_path / "copy", [0, 0, 1, 1, 2, 2, 3, 3, 4, 4], "copy-share")  # copy mass 20
    a = scores_folder(tmp_path / "a", list(9 - rows), "gradient-dot")  # top 2: rows 0, 1
    b = scores_folder(tmp_path / "b", list(rows % 5), "mda", trajectory={"checkpoints": [1, 2], "aggregate": "sum"})  # top: 4, 9
    scores_folder(b / "checkpoints" / "step1", list(rows), "mda")  # top: 9, 8
    scores_folder(b / "checkpoints" / "step2", list(-rows), "mda")  # top: 0, 1
    return {"copy": copy, "a": a, "b": b, "tmp": tmp_path}


def test_copy_mass_shares_checkpoints_and_overlaps_by_hand(folders, capsys):
    m = load_script()
    r = m.run([str(folders["copy"]), str(folders["a"]), str(folders["b"]), "--top", "20%"])
    assert r["top_rows"] == 2 and r["copy_mass"] == 20.0 and r["random_share"] == pytest.approx(0.2)
    shares = {s["name"]: s["top_share"] for s in r["shares"]}
    assert shares == pytest.approx({"copy-share": 8 / 20, "gradient-dot": 0.0, "mda-trajectory": (2 + 4) / 20,
                                    "mda-trajectory@step1": 8 / 20, "mda-trajectory@step2": 0.0})
    assert [s["checkpoint"] for s in r["shares"]] == [False, False, False, True, True]
    assert [s["copy_overlap"] for s in r["shares"]] == [1.0, 0.0, 0.5, 1.0, 0.0]  # copy-share's top: rows 8, 9
    overlaps = {(o["a"], o["b"]): o["overlap"] for o in r["overlaps"]}
    assert overlaps == {("copy-share", "gradient-dot"): 0.0, ("copy-share", "mda-trajectory"): 0.5,
                        ("gradient-dot", "mda-trajectory"): 0.0}
    printed = capsys.readouterr().out
    assert "| mda-trajectory | 30.0% | 50.0% |" in printed and "|   mda-trajectory@step1 | 40.0% | 100.0% |" in printed
    assert "| copy-share | mda-trajectory | 50.0% |" in printed


def test_names_and_the_copy_folder(folders):
    m = load_script()
    r = m.run(["G=" + str(folders["a"]), "--copy", str(folders["copy"]), "--top", "3", "--json"])
    assert [s["name"] for s in r["shares"]] == ["G"] and r["overlaps"] == []
    assert r["shares"][0]["top_share"] == pytest.approx((0 + 0 + 1) / 20)  # rows 0, 1, 2


def test_refusals(folders):
    m = load_script()
    with pytest.raises(CurateError, match="no copy-share scores folder"):
        m.run([str(folders["a"])])
    other = scores_folder(folders["tmp"] / "other", [1.0] * 5, "loss", window=(1, 2))
    with pytest.raises(CurateError, match="not the copy-share folder's 0:2"):
        m.run([str(folders["copy"]), str(other)])
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "copy_mass.py"), str(folders["a"]), str(folders["a"]),
                           "--copy", str(folders["copy"])], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: two folders are named alike (gradient-dot, gradient-dot): name them NAME=FOLDER"]
