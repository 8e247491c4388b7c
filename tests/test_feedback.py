"""Feedback while a command works (`curate/commands/feedback.py`) and hub names on an offline machine (`curate/hub.py`)."""
from __future__ import annotations

import time

import pytest

from curate import hub
from curate.commands.feedback import heartbeat
from curate.progress import HEARTBEAT_ENV
from tests.corpus_helpers import run_cli


def test_off_a_terminal_long_work_writes_plain_heartbeat_lines(monkeypatch, capsys) -> None:
    monkeypatch.setenv(HEARTBEAT_ENV, "0.1")
    with heartbeat("build-mix: writing the mix"):
        time.sleep(0.45)
    lines = capsys.readouterr().err.strip().splitlines()
    assert 3 <= len(lines) <= 5, lines
    assert all(ln.startswith("build-mix: writing the mix: working, ") and ln.endswith(" so far") for ln in lines)


def test_short_or_quiet_work_writes_nothing(monkeypatch, capsys) -> None:
    monkeypatch.setenv(HEARTBEAT_ENV, "5")
    with heartbeat("explain"):
        pass
    with heartbeat("explain", quiet=True):
        time.sleep(0.05)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("args", [["circuits", "--model", "EleutherAI/pythia-70m", "--revision", "step1000"],
                                  ["corpus", "show", "{corpus}", "--step", "0", "--tokenizer", "EleutherAI/pythia-70m"]])
def test_a_hub_name_offline_fails_at_once_with_one_line(args, tmp_path, monkeypatch, capsys) -> None:
    from tests.score_helpers import build_tiny_corpus

    corpus = build_tiny_corpus(tmp_path / "corpus") if "{corpus}" in args else None
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # an empty cache
    hub.hub_offline.cache_clear()
    monkeypatch.chdir(tmp_path)
    started = time.perf_counter()
    code, _, err = run_cli([a.format(corpus=corpus) for a in args], monkeypatch, capsys)
    seconds = time.perf_counter() - started
    hub.hub_offline.cache_clear()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:"), err
    assert "offline" in lines[0] and "EleutherAI/pythia-70m" in lines[0] and "--local-dir" in lines[0]
    assert seconds < 20  # no retries against the hub (they took ~25 s)


def test_an_unreachable_hub_counts_as_offline(monkeypatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    hub.hub_offline.cache_clear()
    try:
        assert hub.hub_offline()
    finally:
        hub.hub_offline.cache_clear()
