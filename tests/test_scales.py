"""`curate experiment --scales` (`pipelines/scales.py`): the quick experiment's augmentation arms on three tiny
sizes, the acceleration per size, and the no-emergence path on the smallest (apart from tests/test_experiment.py
so that the two xdist workers run it beside the quick experiment)."""
from __future__ import annotations

import json

import pytest

from tests.corpus_helpers import run_cli
from tests.test_experiment import quick_args, ray_session_for_module, tiny  # noqa: F401 (module fixtures)


@pytest.mark.slow
def test_scales_reports_acceleration_per_size(tiny, ray_session_for_module, monkeypatch, capsys):
    out = tiny["base"] / "scales"
    args = quick_args(tiny, out)
    args[args.index("--seeds") + 1] = "1"
    code, stdout, stderr = run_cli(args + ["--scales", "--sizes", "16x1,24x2,32x2", "--workers", "1", "--json"], monkeypatch, capsys)
    assert code == 0, stderr
    res = json.loads((out / "report" / "results.json").read_text())
    assert res["sizes"] == ["16x1", "24x2", "32x2"]
    rows = res["table"]
    assert [(r["size"], r["arm"]) for r in rows] == [(s, a) for s in res["sizes"] for a in ("augment-top", "augment-random", "augment-synthetic")]
    params = [r["params"] for r in rows[::3]]
    assert params == sorted(params) and len(set(params)) == 3
    for r in rows:
        e = next(e for e in res["per_size"][r["size"]]["effects"] if e["arm"] == r["arm"])
        if e["emergence_delta"] is None:
            assert r["acceleration_steps"] is None and r["acceleration"] == "n/a"
        else:
            assert r["acceleration_steps"] == -e["emergence_delta"]
    for size in res["sizes"]:
        sub = json.loads((out / "scales" / size / "report" / "results.json").read_text())
        assert sub["arm_names"] == ["baseline", "augment-top", "augment-random", "augment-synthetic"]
        cfg = json.loads((out / "scales" / size / "model-config.json").read_text())
        assert f"{cfg['hidden_size']}x{cfg['num_hidden_layers']}" == size and cfg["intermediate_size"] == 4 * cfg["hidden_size"]
    assert "never formed" in res["per_size"]["16x1"]["window"]["reason"]  # the no-emergence path
    assert all(r["acceleration_steps"] is None for r in rows[:3])
    assert any(r["acceleration_steps"] is not None for r in rows[3:])  # the acceleration path on a size that formed
    md = (out / "report" / "report.md").read_text()
    assert "](scales.png)" in md and (out / "report" / "scales.png").is_file()
    assert json.loads(stdout)["scales"] == rows
