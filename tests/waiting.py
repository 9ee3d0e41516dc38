"""Small helpers the local-cloud tests share: waiting for a condition, opening a home's table."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from meadowrun_core.local.allocation_table import SqliteAllocationTable


def local_table(home: Path) -> SqliteAllocationTable:
    return SqliteAllocationTable(home / "state.db")


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)
