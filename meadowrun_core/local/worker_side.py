"""What a worker process and a running job need of the local cloud (``clouds.Cloud``)."""

from __future__ import annotations

import functools
from pathlib import Path

from meadowrun_core.config import meadowrun_home
from meadowrun_core.local.allocation_table import SqliteAllocationTable
from meadowrun_core.local.object_store import FileObjectStore


def object_store(home: Path) -> FileObjectStore:
    """The content-addressed files under the agent's home."""
    return FileObjectStore(home / "objects")


@functools.cache
def _table() -> SqliteAllocationTable:
    return SqliteAllocationTable(meadowrun_home() / "state.db")


def interruption_notice(instance_id: str) -> float | None:
    """A simulated notice (``meadowrun interrupt``) as the allocation table holds it, for a
    job that asks before its agent has written the notice file."""
    record = _table().get_instance(instance_id)
    return None if record is None else record.interruption_at
