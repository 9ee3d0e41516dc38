"""Functions the result-cache tests run remotely; each records every execution as a file, so
a test counts what actually ran (not what was reported)."""

from __future__ import annotations

import uuid
from pathlib import Path


def double_and_record(x: int, record_dir: str) -> int:
    """``2 * x``, recording that it ran."""
    Path(record_dir, f"{x}.{uuid.uuid4().hex}").write_text("")
    return 2 * x


def double_unless_broken(x: int, record_dir: str, broken_marker: str) -> int:
    """``2 * x``, recording that it ran; raises for ``x >= 15`` while ``broken_marker``
    exists (a bug that is fixed between runs)."""
    Path(record_dir, f"{x}.{uuid.uuid4().hex}").write_text("")
    if x >= 15 and Path(broken_marker).exists():
        raise ValueError(f"task {x} is broken")
    return 2 * x


def executions(record_dir: str | Path) -> list[int]:
    """The arguments of every recorded execution, sorted (one entry per run)."""
    return sorted(int(p.name.split(".")[0]) for p in Path(record_dir).iterdir())
