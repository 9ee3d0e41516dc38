"""Module-level functions the tests run remotely (importable on workers via the code mirror)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any


def double(x: int) -> int:
    return 2 * x


def add(a: int, b: int = 0, *, c: int = 0) -> int:
    return a + b + c


def fail_with_value_error(message: str) -> None:
    raise ValueError(message)


def print_and_sleep(lines: int, seconds: float) -> str:
    for i in range(lines):
        print(f"line {i}", flush=True)
        time.sleep(seconds)
    return "finished"


def sleep_and_record(seconds: float, record_dir: str) -> int:
    """Record which instance ran this and when, for the over-allocation check."""
    start = time.time()
    time.sleep(seconds)
    end = time.time()
    record = {
        "instance": os.environ.get("MEADOWRUN_INSTANCE_ID"),
        "pid": os.getpid(),
        "start": start,
        "end": end,
    }
    path = Path(record_dir) / f"{os.getpid()}-{start}.json"
    path.write_text(json.dumps(record))
    return os.getpid()


def kill_self_first_time(x: int, marker_dir: str) -> int:
    """SIGKILL our own worker on the first attempt of task ``x``; succeed afterwards."""
    marker = Path(marker_dir) / f"attempted-{x}"
    if x % 3 == 0 and not marker.exists():
        marker.write_text("")
        os.kill(os.getpid(), signal.SIGKILL)
    return x * 10


def fail_first_time(x: int, marker_dir: str) -> int:
    marker = Path(marker_dir) / f"failed-{x}"
    if not marker.exists():
        marker.write_text("")
        raise RuntimeError(f"transient failure of task {x}")
    return x + 1000


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def allocate_memory(megabytes: int, hold_seconds: float) -> int:
    block = bytearray(megabytes * 2**20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    time.sleep(hold_seconds)
    return len(block)


def return_unpicklable() -> Any:
    return threading.Lock()


def worker_pid_and_sleep(seconds: float) -> int:
    print(f"worker pid {os.getpid()}", flush=True)
    time.sleep(seconds)
    return os.getpid()


def slow_square(x: int, seconds: float) -> tuple[int, str | None]:
    time.sleep(seconds)
    return x * x, os.environ.get("MEADOWRUN_INSTANCE_ID")


def read_env(name: str) -> str | None:
    return os.environ.get(name)


async def async_double(x: int) -> int:
    return 2 * x


def report_then_wait(values: list[Any], seconds: float) -> str:
    """Send values to the client while running (meadowrun_core.report)."""
    import meadowrun_core as mr

    for value in values:
        mr.report(value)
    time.sleep(seconds)
    return "done"


def wait_for_interruption_notice(timeout: float) -> float | None:
    import meadowrun_core as mr

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        notice = mr.interruption_notice()
        if notice is not None:
            return notice
        time.sleep(0.05)
    return None


def start_time_after_waiting_for(path: str, timeout: float = 60.0) -> float:
    """When this call started; first waits until ``path`` exists (a job holding its room
    until the test lets it go)."""
    started = time.time()
    deadline = time.monotonic() + timeout
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.005)
    return started


def allocate_memory_for(x: int, hungry: list[int], megabytes: int, hold_seconds: float) -> int:
    """``x`` squared; a task in ``hungry`` first holds ``megabytes`` for ``hold_seconds``."""
    if x in hungry:
        allocate_memory(megabytes, hold_seconds)
    return x * x


def allocate_memory_after(
    x: int, hungry: list[int], before: float, megabytes: int, hold_seconds: float
) -> int:
    """``allocate_memory_for`` after ``before`` seconds (every attempt runs at least that)."""
    time.sleep(before)
    return allocate_memory_for(x, hungry, megabytes, hold_seconds)


def memory_error_once(marker: str) -> str:
    """Raises MemoryError while ``marker`` does not exist (creating it), then succeeds."""
    if not os.path.exists(marker):
        Path(marker).write_text("")
        raise MemoryError("no room for that")
    return "enough"
