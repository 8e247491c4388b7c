"""One option vocabulary: the README's Options table is what `--help` shows, every command takes -h, --workspace and
shows an example, `--version` prints the version, and the old spellings still work with one warning line."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from curate.cli import app
from curate.commands.options import curate_version
from tests.corpus_helpers import run_cli

README = Path(__file__).resolve().parents[1] / "README.md"


def _commands() -> dict[str, object]:
    """Every leaf command by its name on the command line ("score", "corpus ingest")."""
    out: dict[str, object] = {}

    def walk(cmd, path: list[str]) -> None:
        subs = getattr(cmd, "commands", None)
        if subs:
            for name, sub in subs.items():
                walk(sub, [*path, name])
        else:
            out[" ".join(path)] = cmd

    walk(typer.main.get_command(app), [])
    return out


def _help_text(path: str) -> str:
    result = CliRunner().invoke(app, [*path.split(), "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    return result.output


def _help_options(path: str) -> set[str]:
    """The options `curate PATH --help` lists (first spelling of each, -h/--help left out)."""
    found = set()
    for line in _help_text(path).splitlines():
        m = re.match(r"^\s{2}((?:-[-\w]+(?:, )?)+)", line)
        if m:
            long = [f for f in m.group(1).split(", ") if f.startswith("--")]
            if long and long[0] != "--help":
                found.add(long[0])
    return found


def _readme_table() -> dict[str, set[str]]:
    text = README.read_text()
    section = text.split("\n## Options\n", 1)[1].split("\n## ", 1)[0]
    table: dict[str, set[str]] = {}
    for line in section.splitlines():
        m = re.match(r"^\| `(--[\w-]+)` \| (.+?) \| (.+?) \|$", line)
        if m:
            assert m.group(2).strip(), line
            table[m.group(1)] = {c.strip() for c in m.group(3).split(",")}
    return table


def test_the_readme_options_table_matches_help() -> None:
    table = _readme_table()
    assert len(table) > 50
    for path in _commands():
        in_help = _help_options(path)
        in_readme = {option for option, commands in table.items() if path in commands}
        assert in_help == in_readme, f"curate {path}: only in --help {sorted(in_help - in_readme)}, only in README {sorted(in_readme - in_help)}"


@pytest.mark.parametrize("path", sorted(_commands()))
def test_every_command_takes_h_workspace_and_shows_an_example(path: str) -> None:
    text = _help_text(path)
    assert "-h, --help" in text and "--workspace" in text
    example = re.search(r"Example: (curate .+)", text)
    assert example is not None and example.group(1).startswith(f"curate {path}"), text[-400:]


def test_version_and_short_help(monkeypatch, capsys) -> None:
    code, out, _ = run_cli(["--version"], monkeypatch, capsys)
    assert code == 0 and out.strip() == f"curate {curate_version()}"
    code, out, _ = run_cli(["-h"], monkeypatch, capsys)
    assert code == 0 and "build-mix" in out and "--version" in out


OLD_SPELLINGS = [  # (command, old spelling, new spelling) of every option renamed this release
    ("explain", "--top", "--tail-rows"), ("explain", "--tail-share", "--tail-rows"), ("score", "--top", "--tail-rows"),
    ("neighbors", "--top", "--query-rows"), ("build-mix", "--top", "--motif-rows"), ("synth", "--top", "--motif-rows"),
    ("synth", "--from", "--scores"), ("experiment", "--k", "--remove"), ("score", "--checkpoint", "--model"),
    ("train", "--from", "--model"), ("train", "--heads", "--attention-heads"),
]


@pytest.mark.parametrize(("path", "old", "new"), OLD_SPELLINGS)
def test_old_spellings_are_hidden_but_accepted(path: str, old: str, new: str) -> None:
    assert new in _help_options(path) and old not in _help_options(path)
    cmd = _commands()[path]
    hidden = [p for p in cmd.params if old in getattr(p, "opts", ())]
    assert hidden and hidden[0].hidden


def test_an_old_spelling_works_with_one_warning_line(tmp_path: Path) -> None:
    """`curate neighbors --top 0` (deprecated for --query-rows): one warning line, then the value reaches the check."""
    proc = subprocess.run([sys.executable, "-m", "curate.cli", "neighbors", "--top", "0", "--scores", str(tmp_path / "none")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 2, proc.stderr
    assert lines[0].startswith("warning: --top is deprecated") and "--query-rows" in lines[0]
    assert lines[1].startswith("error: --query-rows '0'"), lines[1]


def test_every_command_composes_the_library_spec_whole() -> None:
    """One pattern (`curate/options.py`): a command's options compose the library's spec, never inherit it nor mirror
    its fields; a spec composed `flat` keeps command.json flat and reads back equal; fields are read and replaced
    wherever they live."""
    import dataclasses

    from curate.augment.mix_spec import MixSpec
    from curate.commands.evaluate import EvaluateCommandOptions
    from curate.commands.experiment import ExperimentCommandOptions
    from curate.commands.mix import BuildMixOptions
    from curate.commands.options import COMMANDS
    from curate.commands.score import ScoreOptions
    from curate.commands.train import TrainOptions
    from curate.options import CLI, build_options, cli_params, from_json, option_value, replaced, to_json
    from curate.pipelines.evaluate_options import EvaluateOptions
    from curate.pipelines.experiment_options import ExperimentOptions
    from curate.pipelines.score_request import ScoreRequest
    from curate.training.train_request import TrainRequest

    pairs = [(ScoreOptions, ScoreRequest), (ExperimentCommandOptions, ExperimentOptions),
             (EvaluateCommandOptions, EvaluateOptions), (TrainOptions, TrainRequest), (BuildMixOptions, MixSpec)]
    for options_cls, spec_cls in pairs:
        assert spec_cls not in options_cls.__mro__
        own = {f.name for f in dataclasses.fields(options_cls)}
        assert not own & {f.name for f in dataclasses.fields(spec_cls)}, options_cls  # nothing mirrored
        if spec_cls is not MixSpec:  # the spec's own flags, in its order, all of them on the command line
            assert [p.name for p in cli_params(options_cls) if p.owner is not None] == \
                [f.name for f in dataclasses.fields(spec_cls) if CLI in f.metadata]
    for name in ("score", "experiment", "evaluate", "train", "build-mix"):
        options_cls = COMMANDS[name][0]
        assert not any(issubclass(options_cls, spec) for _, spec in pairs), name

    o = build_options(ScoreOptions, {"circuit": "previous-token", "top": "5%", "quiet": True})
    assert (o.request.circuit, o.request.top, o.request.progress, o.quiet) == ("previous-token", "5%", False, True)
    saved = to_json(o)
    assert saved["circuit"] == "previous-token" and saved["progress"] is False and "request" not in saved  # flat
    assert from_json(ScoreOptions, saved) == o
    moved = replaced(o, out=Path("x"), as_json=True)
    assert (moved.request.out, moved.as_json, moved.request.circuit, o.request.out) == (Path("x"), True, "previous-token", None)
    assert option_value(moved, "out") == Path("x") and option_value(moved, "quiet") is True
    mix = build_options(BuildMixOptions, {"scores": Path("s"), "remove": "20%"})
    assert to_json(mix)["mix"]["remove"] == "20%" and from_json(BuildMixOptions, to_json(mix)) == mix  # nested
