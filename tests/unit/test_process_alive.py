"""engine/run/pool.py `process_alive`: how engine processes tell that their coordinator is gone."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from engine.run.pool import process_alive


def test_a_zombie_is_not_alive():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while process_alive(child.pid):
        assert time.monotonic() < deadline, "the child never counted as gone"
        time.sleep(0.01)
    os.kill(child.pid, 0)  # not reaped yet: signal 0 still finds the zombie (no ProcessLookupError)
    child.wait()


def test_a_running_process_is_alive_and_a_reaped_one_is_not():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert process_alive(child.pid)
        assert process_alive(os.getpid())
    finally:
        child.kill()
        child.wait()
    assert not process_alive(child.pid)
