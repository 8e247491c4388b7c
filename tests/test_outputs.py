"""Nothing lost: a command replaces an existing --out only when it is its own kind of output and holds no input."""
from __future__ import annotations


import pytest

from corpus_helpers import digest, run_cli
from curate.augment.mix import MixSpec, build_mix
from curate.errors import CurateError
from curate.outputs import CORPUS, INDEX, MIX, SCORES, check_output_folder, folder_kind
from mix_helpers import make_setup


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return make_setup(tmp_path_factory.mktemp("outputs"))


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_index_into_a_folder_holding_a_user_file_is_refused(setup, tmp_path, monkeypatch, capsys) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    before, inputs = digest(out), digest(setup.scores.parent)
    code, _, err = run_cli(["index", setup.scores, "--out", out], monkeypatch, capsys)
    assert code == 2 and "is not a curate structure index" in one_error_line(err)
    assert digest(out) == before and digest(setup.scores.parent) == inputs


def test_index_into_the_scores_folder_itself_is_refused(setup, monkeypatch, capsys) -> None:
    before = digest(setup.scores.parent)
    code, _, err = run_cli(["index", setup.scores, "--out", setup.scores], monkeypatch, capsys)
    assert code == 2 and "holds a curate scores folder, not a structure index" in one_error_line(err)
    assert digest(setup.scores.parent) == before


def test_build_mix_into_the_scores_folder_is_refused(setup, monkeypatch, capsys) -> None:
    before = digest(setup.scores.parent)
    code, _, err = run_cli(["build-mix", setup.scores, "--remove", "10%", "--out", setup.scores], monkeypatch, capsys)
    line = one_error_line(err)
    assert code == 2 and f"{setup.scores}: is an input of this command" in line
    assert digest(setup.scores.parent) == before


def test_build_mix_into_a_folder_containing_the_corpus_is_refused(setup, monkeypatch, capsys) -> None:
    root = setup.corpus.parent  # holds corpus/ and scores/
    before = digest(root)
    code, _, err = run_cli(["build-mix", setup.scores, "--remove", "10%", "--out", root], monkeypatch, capsys)
    assert code == 2 and f"{root}: contains an input of this command" in one_error_line(err)
    assert digest(root) == before


def test_build_mix_into_the_corpus_folder_is_refused(setup, monkeypatch, capsys) -> None:
    before = digest(setup.corpus.parent)
    code, _, err = run_cli(["build-mix", setup.scores, "--remove", "10%", "--out", setup.corpus], monkeypatch, capsys)
    assert code == 2 and "an input of this command" in one_error_line(err)
    assert digest(setup.corpus.parent) == before


def test_a_mix_is_replaced_by_a_mix_and_an_index_by_an_index(setup, tmp_path, monkeypatch, capsys) -> None:
    out = tmp_path / "mix"
    build_mix(setup.scores, out, MixSpec(remove="1%", seed=0))
    assert folder_kind(out) == MIX
    first = digest(out)
    build_mix(setup.scores, out, MixSpec(remove="2%", seed=0))
    assert folder_kind(out) == MIX and digest(out) != first
    idx = tmp_path / "idx"
    for _ in range(2):
        code, _, err = run_cli(["index", setup.scores, "--out", idx], monkeypatch, capsys)
        assert code == 0, err
    assert folder_kind(idx) == INDEX
    # a mix is a corpus too, but not the kind `corpus ingest` replaces
    with pytest.raises(CurateError, match="holds a curate mix, not a corpus"):
        check_output_folder(out, CORPUS)


def test_check_output_folder_rules(setup, tmp_path) -> None:
    check_output_folder(tmp_path / "new", CORPUS)  # absent: fine
    (tmp_path / "empty").mkdir()
    check_output_folder(tmp_path / "empty", CORPUS)  # empty: fine
    (tmp_path / "file").write_text("x")
    with pytest.raises(CurateError, match="exists and is not a folder"):
        check_output_folder(tmp_path / "file", CORPUS)
    assert folder_kind(setup.corpus) == CORPUS and folder_kind(setup.scores) == SCORES
    check_output_folder(setup.corpus, CORPUS)  # same kind, holds no input: may be replaced
    # an input reached through a symlink or a relative path is still the input
    link = tmp_path / "link"
    link.symlink_to(setup.corpus, target_is_directory=True)
    with pytest.raises(CurateError, match="is an input of this command"):
        check_output_folder(link, CORPUS, [setup.corpus])
    with pytest.raises(CurateError, match="contains an input of this command"):
        check_output_folder(setup.corpus, CORPUS, [setup.corpus / "corpus.bin"])
    # an empty folder that is an input is refused too
    (tmp_path / "empty_in").mkdir()
    with pytest.raises(CurateError, match="is an input"):
        check_output_folder(tmp_path / "empty_in", CORPUS, [tmp_path / "empty_in"])
