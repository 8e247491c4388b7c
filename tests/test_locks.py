"""One writer per output (`curate/locks.py`): two real `curate build-mix` processes onto one --out, a killed
holder's lock taken over, and the lock rules in-process (re-entrant, a dead pid's lock file taken over)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from curate.errors import CurateError
from curate.locks import TEST_BARRIER_ENV, acquire, hold, lock_path, release
from tests.mix_helpers import make_setup


def _curate(args: list, cwd: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "curate.cli", *map(str, args)], cwd=cwd, env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def scores(tmp_path_factory) -> Path:
    return make_setup(tmp_path_factory.mktemp("locks")).scores


def test_a_second_writer_onto_the_same_out_gets_one_line_naming_the_holder(scores, tmp_path) -> None:
    out, barrier = tmp_path / "mixes" / "m", tmp_path / "barrier"
    first = _curate(["build-mix", scores, "--remove", "10%", "--out", out], tmp_path, {TEST_BARRIER_ENV: str(barrier)})
    try:
        _wait_for(Path(f"{barrier}.held"), first)  # the first holds the lock and waits before its first byte
        second = _curate(["build-mix", scores, "--remove", "20%", "--control", "random", "--out", out], tmp_path)
        stdout, stderr = second.communicate(timeout=120)
        assert second.returncode == 2, stderr
        lines = [ln for ln in stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), stderr
        assert f"pid {first.pid}" in lines[0] and socket.gethostname() in lines[0] and "build-mix" in lines[0]
        assert not out.exists()  # the second wrote nothing
        Path(f"{barrier}.go").touch()
        _, err = first.communicate(timeout=300)
        assert first.returncode == 0, err
    finally:
        if first.poll() is None:
            first.kill()
    saved = json.loads((out / "command.json").read_text())
    assert saved["options"]["mix"]["remove"] == "10%" and saved["options"]["mix"]["control"] is None  # the first writer's mix, whole
    assert not lock_path(out).exists()  # released on exit


def test_a_killed_holders_lock_is_taken_over(scores, tmp_path) -> None:
    out, barrier = tmp_path / "m", tmp_path / "barrier"
    first = _curate(["build-mix", scores, "--remove", "10%", "--out", out], tmp_path, {TEST_BARRIER_ENV: str(barrier)})
    _wait_for(Path(f"{barrier}.held"), first)
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=60)
    assert json.loads(lock_path(out).read_text())["pid"] == first.pid  # the dead holder's lock file is still there
    second = _curate(["build-mix", scores, "--remove", "20%", "--out", out], tmp_path)
    _, err = second.communicate(timeout=300)
    assert second.returncode == 0, err
    assert json.loads((out / "command.json").read_text())["options"]["mix"]["remove"] == "20%"
    assert not lock_path(out).exists()


def test_locks_are_reentrant_in_a_process_and_leave_nothing(tmp_path) -> None:
    out = tmp_path / "a" / "b" / "out"
    with hold(out):
        with hold(out, None):
            assert json.loads(lock_path(out).read_text())["pid"] == os.getpid()
        assert lock_path(out).exists()
    assert not lock_path(out).exists() and not (tmp_path / "a").exists()  # parents it made are removed when empty


def test_a_lock_file_of_a_dead_pid_on_this_host_is_taken_over(tmp_path) -> None:
    out = tmp_path / "out"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout
    lock_path(out).write_text(json.dumps({"pid": int(dead), "host": socket.gethostname(), "started": 0}))
    acquire(out)
    try:
        assert json.loads(lock_path(out).read_text())["pid"] == os.getpid()
    finally:
        release(out)


def test_a_lock_held_by_a_live_process_is_refused(tmp_path) -> None:
    out = tmp_path / "out"
    code = ("import sys, time; from curate.locks import acquire; acquire(sys.argv[1]); print('held', flush=True); "
            "time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(CurateError, match=f"pid {holder.pid}"):
            acquire(out)
    finally:
        holder.kill()
        holder.wait()
    acquire(out)  # the kernel dropped the killed holder's lock
    release(out)
