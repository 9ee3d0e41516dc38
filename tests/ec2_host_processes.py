"""The EC2 twin's hosts' processes: finding and killing them by environment marker.

Every process a test host starts carries ``MEADOWRUN_TEST_HOST=<instance id>`` in its
environment, so the host finds them again even after they detach (setsid/nohup), and kills
them all when it powers off. Kept apart from tests/ec2_hosts.py because it is plain psutil
work, independent of the SSH and IMDS servers.
"""

from __future__ import annotations

import contextlib
import os
import time

import psutil

MARKER = "MEADOWRUN_TEST_HOST"


def find_marked(instance_id: str) -> list[psutil.Process]:
    found = []
    me = os.getpid()
    for proc in psutil.process_iter():
        if proc.pid == me:
            continue
        try:
            if proc.environ().get(MARKER) != instance_id:
                continue
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
        except (psutil.Error, OSError):
            continue
        found.append(proc)
    return found


def kill_marked(instance_id: str) -> int:
    """SIGKILL every live process marked with this instance id; how many there were."""
    killed = 0
    for _ in range(5):  # again, in case one forked while we were killing
        procs = find_marked(instance_id)
        if not procs:
            break
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.kill()
                killed += 1
        _wait_dead(procs, 3)
    return killed


def _wait_dead(procs: list[psutil.Process], timeout: float) -> None:
    # Not psutil.wait_procs: for our own children it would waitpid() them, stealing the exit
    # status from asyncio's child watcher. A zombie counts as dead.
    deadline = time.monotonic() + timeout
    pending = list(procs)
    while pending and time.monotonic() < deadline:
        alive = []
        for proc in pending:
            with contextlib.suppress(psutil.Error):
                if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(proc)
        pending = alive
        if pending:
            time.sleep(0.02)
