"""Functions the chaos tests run on workers (importable there through the code mirror)."""

from __future__ import annotations

import os
import time
from pathlib import Path


def record_and_sleep(x: int, record_dir: str, seconds: float) -> int:
    """Record one execution of task ``x`` (a file per execution), then sleep."""
    Path(record_dir, f"{x}-{os.getpid()}-{time.monotonic_ns()}").write_text("")
    time.sleep(seconds)
    return x * x


def executions(record_dir: str) -> dict[int, int]:
    counts: dict[int, int] = {}
    for name in os.listdir(record_dir):
        task = int(name.split("-", 1)[0])
        counts[task] = counts.get(task, 0) + 1
    return counts


def write_file(path: str) -> None:
    Path(path).write_text("pwned")
