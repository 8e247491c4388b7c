"""A local Ray session dies with the driver that started it.

When the driver is killed (kill -9), Ray's GCS, raylet and workers exit with it, but the dashboard agent and
the runtime-env agent (started by the raylet whatever `include_dashboard` says) live on for minutes. The
driver hands the pids of its session's processes to a tiny watchdog process that ends them once the driver
is gone; a driver that shuts Ray down itself stops the watchdog.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys

WATCHDOG = r"""
import os, signal, sys, time
driver, pids = int(sys.argv[1]), [int(p) for p in sys.argv[2:]]
def alive(pid):
    try:
        os.kill(pid, 0)
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
def ray_process(pid):
    try:
        return b"ray" in open(f"/proc/{pid}/cmdline", "rb").read()
    except OSError:
        return False
while alive(driver):
    time.sleep(0.5)
for pid in pids:
    if ray_process(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
"""


def _children(pid: int) -> set[int]:
    """Every live descendant of `pid` (from /proc; empty where /proc is missing)."""
    parents: dict[int, int] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return set()
    for name in names:
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    parents[int(name)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier and p not in found}
        found |= frontier
    return found


def start_watchdog() -> subprocess.Popen | None:
    """Watch this driver: when it dies, end the Ray processes it started (None where /proc is missing)."""
    pids = sorted(_children(os.getpid()))
    if not pids:
        return None
    return subprocess.Popen([sys.executable, "-c", WATCHDOG, str(os.getpid()), *map(str, pids)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, close_fds=True)


def stop_watchdog(watchdog: subprocess.Popen | None) -> None:
    if watchdog is not None and watchdog.poll() is None:
        watchdog.send_signal(signal.SIGKILL)
        watchdog.wait()
