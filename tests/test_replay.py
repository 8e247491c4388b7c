"""`curate replay FOLDER` from another working directory: each folder kind's `command.json` holds the resolved options
(no null where the command resolved a default) with local paths relative to the folder, so the replay finds its
inputs and writes the same folder again."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from curate.commands.options import load_config
from tests.corpus_helpers import digest, run_cli
from tests.mix_helpers import make_setup
from tests.score_helpers import build_tiny_corpus


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("replay")
    setup = make_setup(root / "setup")
    docs = root / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": f"the cat {i} sat on the mat {i % 7} " * 6}) + "\n" for i in range(60)))
    return {"root": root, "scores": setup.scores, "docs": docs, "tok": setup.corpus / "tokenizer.json",
            "tiny": build_tiny_corpus(root / "tiny")}


def _rel(path: Path, start: Path) -> str:
    return os.path.relpath(path, start)


CASES = {  # kind -> (arguments run from `work/`, with {name} the input's path relative to work/; the output folder)
    "mix": (["build-mix", "{scores}", "--remove", "10%", "--out", "out/mix"], "out/mix"),
    "index": (["index", "{scores}", "--out", "out/index"], "out/index"),
    "corpus": (["corpus", "ingest", "{docs}", "--tokenizer", "{tok}", "--seq-len", "15", "--batch-size", "4", "--out", "out/corpus"], "out/corpus"),
    "tokenizer": (["tokenizer", "train", "{docs}", "--vocab", "300", "--out", "out/tok"], "out/tok"),
    "run": (["train", "--corpus", "{tiny}", "--steps", "2", "--batch-size", "8", "--eval-every", "1", "--layers", "1",
             "--hidden", "16", "--attention-heads", "2", "--context", "32", "--checkpoints", "none", "--quiet", "--out", "out/run"], "out/run"),
}
SAME_BYTES = {"mix", "corpus", "tokenizer"}  # outputs whose bytes the replay reproduces exactly (runs and indexes time themselves)


@pytest.mark.parametrize("kind", sorted(CASES))
def test_replay_from_another_folder(kind, inputs, tmp_path, monkeypatch, capsys) -> None:
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    monkeypatch.setenv("CURATE_WORKSPACE", str(tmp_path / "ws"))
    monkeypatch.chdir(work)
    args, out = CASES[kind]
    values = {k: _rel(v, work) for k, v in inputs.items()}
    code, _, err = run_cli([a.format(**values) for a in args], monkeypatch, capsys)
    assert code == 0, err
    folder = work / out
    saved = json.loads((folder / "command.json").read_text())
    options = saved["options"]
    assert options["out"] == "." and "out" in saved["paths"]  # the folder itself, relative to where it is stored
    assert options.get("workspace") is not None  # resolved, not null
    for key in saved["paths"]:
        value = options
        for part in key.split("."):
            value = value[part]
        assert not os.path.isabs(value), (key, value)
        assert key == "workspace" or (folder / value).exists(), (key, value)  # an unused workspace need not exist
    before = digest(folder)
    monkeypatch.chdir(elsewhere)
    code, _, err = run_cli(["replay", _rel(folder, elsewhere)], monkeypatch, capsys)
    if kind == "run":  # the saved options found their corpus; replaying a finished run continues it: nothing to do
        assert code == 0, err
        _, options = load_config(Path(_rel(folder, elsewhere)))
        assert Path(options.request.corpus).resolve() == inputs["tiny"].resolve() and Path(options.out).resolve() == folder.resolve()
        assert digest(folder) == before
        return
    assert code == 0, err
    assert sorted(os.listdir(elsewhere)) == []  # nothing written where the replay ran
    if kind in SAME_BYTES:
        assert digest(folder) == before
    else:
        assert set(digest(folder)) == set(before)


def test_a_config_saved_before_the_mix_spec_was_composed_still_replays(inputs, tmp_path, monkeypatch, capsys) -> None:
    """Older build-mix folders keep the spec's fields flat in command.json (`remove`, `top`, ...) and absolute paths."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "mix"
    code, _, err = run_cli(["build-mix", inputs["scores"], "--remove", "5%", "--out", out], monkeypatch, capsys)
    assert code == 0, err
    before = digest(out)
    flat = {"scores": str(inputs["scores"]), "remove": "5%", "augment": None, "source": "top", "pool": None, "at_step": None,
            "control": None, "top": 2000, "seed": 0, "out": str(out), "workspace": None}
    (out / "command.json").write_text(json.dumps({"command": "build-mix", "options": flat}))
    code, _, err = run_cli(["replay", out], monkeypatch, capsys)
    assert code == 0, err
    after = digest(out)
    assert {k: v for k, v in after.items() if k != "command.json"} == {k: v for k, v in before.items() if k != "command.json"}


def test_a_scores_folder_reads_its_checkpoint_relative_to_itself(tmp_path, monkeypatch) -> None:
    """summary.json stores the scored checkpoint relative to the scores folder (as the corpus): read from any
    working directory; a hub name is kept as it is."""
    from curate.attribution.scores_folder import ScoresFolder
    from curate.paths import portable_if_local

    step = tmp_path / "runs" / "ref" / "checkpoints" / "step5"
    step.mkdir(parents=True)
    scores = tmp_path / "scores" / "induction"
    scores.mkdir(parents=True)
    stored = portable_if_local(str(step), scores)
    assert stored == "../../runs/ref/checkpoints/step5"
    monkeypatch.chdir(tmp_path / "runs")
    folder = ScoresFolder(Path("../scores/induction"), {"checkpoint": stored, "checkpoint_absolute": str(step)}, [], 0, [])
    assert Path(folder.checkpoint).resolve() == step.resolve()
    hub = ScoresFolder(scores, {"checkpoint": portable_if_local("EleutherAI/pythia-70m@step1000", scores)}, [], 0, [])
    assert hub.checkpoint == "EleutherAI/pythia-70m@step1000"
