"""A local Ray started by a driver ends with it: after kill -9 of the driver, none of the processes its session
started (the dashboard and runtime-env agents included) are left running."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from curate.pipelines.ray_reaper import _children

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc")

DRIVER = """
import sys, time
from curate.pipelines.ray_pool import ray_session
with ray_session(None, num_cpus=1):
    print("up", flush=True)
    time.sleep(600)
"""


def test_kill_9_of_the_driver_leaves_no_ray_process():
    p = subprocess.Popen([sys.executable, "-c", DRIVER], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                         start_new_session=True)
    try:
        assert p.stdout.readline().strip() == "up"
        time.sleep(1)
        started = _children(p.pid)
        assert len(started) >= 3  # GCS, raylet, agents, the watchdog
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    deadline = time.time() + 20
    while time.time() < deadline and any(os.path.exists(f"/proc/{q}") for q in started):
        time.sleep(0.5)
    left = [q for q in started if os.path.exists(f"/proc/{q}") and open(f"/proc/{q}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"]
    assert left == []
