"""The functions every system in the benchmark runs.

They live at module level in an importable module so that meadowrun, Dask,
ProcessPoolExecutor and Ray all pickle them by reference and import them in their workers.
"""

from __future__ import annotations

import time


def noop(x: int) -> int:
    """A task that does nothing: what it costs is the system's own overhead."""
    return x


def busy(cpu_seconds: float) -> float:
    """Spin the CPU (no sleep) until this thread has used ``cpu_seconds`` of CPU time.

    Counting the thread's CPU time, not wall time, keeps the work fixed: if a system's own
    processes take CPU away from the task, the task takes longer and the benchmark shows it.
    Returns the CPU time used.
    """
    start = time.thread_time()
    deadline = start + cpu_seconds
    while time.thread_time() < deadline:
        pass
    return time.thread_time() - start
