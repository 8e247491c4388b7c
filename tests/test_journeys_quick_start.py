"""README "Quick start on the embedded default", run as a user runs it (see tests/test_journeys.py for the rules and
the small settings): from a folder whose ./curate-workspace holds a small default corpus and reference run,
`score` -> `explain` -> `index` -> `neighbors` -> `build-mix` (remove, control random, augment top / neighbors /
synthetic) -> every printed command (`curate verify`, the arm's `curate train`) executed -> `circuits` on an arm.
"""
from __future__ import annotations

import json
import re
import shutil

import pytest

from tests.journey_helpers import (
    CIRCUIT, SHAPE, SMALL_TRAIN, User, base_rows, final_step, heldout_start, option, own_text_corpus, printed, summary,
)


@pytest.fixture(scope="module")
def quick_start(tmp_path_factory) -> dict:
    """A user folder whose ./curate-workspace holds the small corpus as its default corpus and a reference run
    trained on it (one pass, as the default's reference run)."""
    user = User(tmp_path_factory.mktemp("journeys") / "quick")
    own_text_corpus(user)  # the small corpus, made as README "Your own text" makes one
    ws = user.cwd / "curate-workspace" / "default"
    shutil.copytree(user.cwd / "my_corpus", ws / "corpus")
    user(f"curate train --corpus curate-workspace/default/corpus {SHAPE} --steps 150 {SMALL_TRAIN} "
         "--out curate-workspace/default/runs/reference --quiet")
    return {"user": user}


def test_quick_start_mixes_verify_and_their_printed_arms_train(quick_start) -> None:
    user: User = quick_start["user"]
    cwd = user.cwd
    scores = f"curate-workspace/default/scores/{CIRCUIT}"
    reference = cwd / "curate-workspace" / "default" / "runs" / "reference"
    corpus = cwd / "curate-workspace" / "default" / "corpus"
    held = heldout_start(corpus)

    user(f"curate score --circuit {CIRCUIT} --fit-rows 256 --quiet")  # scores in curate-workspace/default/scores/<circuit>
    s = json.loads((cwd / scores / "summary.json").read_text())
    n = s["window"][1]
    assert s["circuit"] == CIRCUIT and n >= summary(reference)["emergence"]["previous_token"]["emergence_step"]
    out = user(f"curate explain {scores} --top 10%")
    assert "top tail" in out
    user(f"curate index {scores}")
    assert (cwd / scores / "index").is_dir()
    out = user(f"curate neighbors --top 5 --circuit {CIRCUIT}")
    listed = json.loads(user(f"curate neighbors --top 5 --circuit {CIRCUIT} --json"))
    neighbour_ids = [int(m) for m in re.findall(r'"row_id": (\d+)', json.dumps(listed))]
    assert neighbour_ids and max(neighbour_ids) < held, "a held-out row offered as a neighbour"

    mixes = {
        "remove-top": f"curate build-mix {scores} --remove 10% --out mixes/remove-top",
        "remove-random": f"curate build-mix {scores} --remove 10% --control random --out mixes/remove-random",
        "augment-top": f"curate build-mix {scores} --augment 5% --out mixes/augment-top",
        "augment-neighbors": f"curate build-mix {scores} --augment 5% --source neighbors --out mixes/augment-neighbors",
        "augment-synthetic": f"curate build-mix {scores} --augment 5% --source synthetic --top 100 --out mixes/augment-synthetic",
    }
    for name, line in mixes.items():
        out = user(line)
        train_line = printed(out, "train")
        assert printed(out, "verify") == f"curate verify mixes/{name}", out
        ran = user.follow(out)  # `curate verify` then the arm's `curate train`, as printed
        assert {train_line, f"curate verify mixes/{name}"} <= set(ran)
        arm = cwd / option(train_line, "--out")
        assert summary(arm)["complete"], name
        # the arm trains past the scored checkpoint (where the head had formed), so the mix's effect can show
        assert final_step(arm) >= n, (name, train_line, final_step(arm), n)
        assert max(base_rows(cwd / "mixes" / name)) < held, f"{name}: a held-out row in the mix"
    remove = cwd / "mixes" / "remove-top-run"
    report = json.loads(user(f"curate circuits {remove.relative_to(cwd)} --json"))  # circuits on the arm's result
    assert len(report["heads"]) == 8
