"""Functions the timeout and retry tests run remotely (importable on workers via the code
mirror): each leaves its pid or a marker file behind so the test can see what ran."""

from __future__ import annotations

import os
import time
from pathlib import Path


def sleep_and_record_pid(seconds: float, pid_file: str) -> str:
    Path(pid_file).write_text(str(os.getpid()))
    time.sleep(seconds)
    return "slept"


def fail_first_time(marker: str) -> str:
    """Raises on the first attempt (no marker yet), succeeds on the next."""
    if not os.path.exists(marker):
        Path(marker).write_text("attempt 1")
        raise ValueError("first attempt fails")
    return "second attempt"


def slow_first_time(marker: str, seconds: float = 30.0) -> str:
    """Sleeps ``seconds`` on the first attempt (no marker yet), returns at once after."""
    if not os.path.exists(marker):
        Path(marker).write_text("attempt 1")
        time.sleep(seconds)
    return "fast"


def slow_task(x: int) -> int:
    """Task 3 sleeps far past any test's timeout; the others return at once."""
    if x == 3:
        time.sleep(30)
    return x * 10


def slow_task_first_time(arg: tuple[int, str]) -> int:
    """Task ``x`` sleeps on its first attempt only (marker file per task)."""
    x, marker = arg
    if x == 3:
        slow_first_time(marker)
    return x * 10
