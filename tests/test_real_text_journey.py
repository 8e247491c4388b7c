"""The real-text journey on the pinned recipe's CI fixture (tests/fixtures/real_text_debs), as a user runs it from
a folder outside the repository: `bench/real_text_corpus.py --trees` cuts the fixture by the recipe's extraction
rules (small budgets, no digest: the budgets change the bytes), `curate corpus ingest --vocab 512`, `curate
train` a tiny model for 200 steps, `curate score` (mda) and `curate explain --by domain` with the normalised view.

At this size no head forms in 200 steps on real text (README "Your own text": the previous-token head reaches
~0.1), so the score names its checkpoint and heads (`--revision step200 --heads 1.0,...`), as the README says
to score a head that has not formed; the test checks the pipeline and the report's shape, not a finding."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.journey_helpers import SHAPE, SMALL_TRAIN, User

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).parent / "fixtures" / "real_text_debs"
RECIPE = ROOT / "bench" / "real_text_recipe.json"
DOMAINS = {"latex", "code", "xml", "man", "prose"}
STEPS = 200


def small_recipe(path: Path, chars: int = 40_000, file_chars: int = 8_000) -> Path:
    """The pinned recipe with every domain's budget cut to `chars` and no digest (the fixture holds a few files)."""
    spec = json.loads(RECIPE.read_text())
    spec["digest"], spec["file_chars"] = None, file_chars
    for d in spec["domains"]:
        d["chars"] = chars
    path.write_text(json.dumps(spec))
    return path


@pytest.mark.slow
def test_real_text_fixture_to_explain_with_the_normalised_view(tmp_path: Path) -> None:
    user = User(tmp_path / "user")
    recipe = small_recipe(tmp_path / "recipe.json")
    built = subprocess.run([sys.executable, str(ROOT / "bench" / "real_text_corpus.py"), "--recipe", str(recipe),
                            "--trees", str(FIXTURE), "--out", "my_text"], cwd=user.cwd, capture_output=True, text=True,
                           timeout=120)
    assert built.returncode == 0, built.stderr
    assert {p.name for p in (user.cwd / "my_text").iterdir()} == DOMAINS

    out = user("curate corpus ingest my_text --vocab 512 --seq-len 32 --batch-size 16 --heldout-rows 128 --out my_corpus")
    assert "from 34 documents" in out, out
    user(f"curate train --corpus my_corpus {SHAPE} --steps {STEPS} {SMALL_TRAIN} --out my_run --quiet")
    user(f"curate score --model my_run --revision step{STEPS} --heads 1.0,1.1,1.2,1.3 --circuit previous-token "
         f"--fit-rows 256 --out my_scores --quiet")
    summary = json.loads((user.cwd / "my_scores" / "summary.json").read_text())
    assert summary["window"] == [0, STEPS] and summary.get("method", "mda") == "mda"

    out = user("curate explain my_scores --by domain")
    headers = [ln for ln in out.splitlines() if ln.startswith("┃")]
    assert len(headers) == 2, out  # the top and the bottom tail's table (COLUMNS=200: one header line each)
    for column in ("│ ratio (95% CI)", "normalised ratio (95% CI)", "magnitude"):
        assert all(column.strip("│ ") in h.replace("┃", "│") for h in headers), (column, headers)
    assert "by score / grad_norm" in out and "needs a re-score" not in out
    for domain in DOMAINS:  # one row per domain in each tail's table
        rows = [ln for ln in out.splitlines() if ln.startswith("│") and ln.strip("│ ").split(" ")[0] == domain]
        assert len(rows) == 2, (domain, out)
        assert all(ln.split("│")[1:-1][-2].strip() in ("yes", "no") for ln in rows), rows  # the magnitude cell (before note)

    report = json.loads(user("curate explain my_scores --by domain --json"))
    assert report["normalised_by"] == "score / grad_norm" and report["normalised_note"] is None
    assert {c["label"] for c in report["classes"]} == DOMAINS
    for c in report["classes"]:
        assert isinstance(c["magnitude"], bool) and c["magnitude"] == (c["size_effect"] and not c["normalised"]["both_tails"])
        for tail in ("top", "bottom"):
            n = c["normalised"][tail]
            assert n["ci_low"] <= n["ratio"] <= n["ci_high"]
    assert sum(c["normalised"]["top"]["count"] for c in report["classes"]) == report["top_k"]
