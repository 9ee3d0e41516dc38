"""Functions the benchmark runs on every system.

They live at module level in an importable module so that meadowrun, Dask,
ProcessPoolExecutor and Ray can all pickle them by reference.
"""

from __future__ import annotations

import time


def noop(x: int) -> int:
    """A task that does nothing: measures pure scheduling overhead."""
    return x


def busy(seconds: float) -> float:
    """Spin the CPU (not sleep) for ``seconds`` of wall time; returns the time spent."""
    start = time.perf_counter()
    deadline = start + seconds
    count = 0
    while time.perf_counter() < deadline:
        count += 1
    return time.perf_counter() - start
