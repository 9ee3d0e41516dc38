"""The agent's side of the local cloud."""

from __future__ import annotations

from pathlib import Path

from meadowrun_core.local.allocation_table import SqliteAllocationTable
from meadowrun_core.local.object_store import FileObjectStore
from meadowrun_core.local.secrets import LocalSecretStore
from meadowrun_core.local.task_queue import SqliteTaskQueue
from meadowrun_core.serialization import Signer, load_or_create_key


class LocalAgentCloud:
    """The local cloud: SQLite and files under ``MEADOWRUN_HOME``; interruptions are
    simulated through the allocation table, and an instance ends when its agent exits."""

    def __init__(self, home: Path, region: str | None = None) -> None:
        del region  # one local cloud per home
        self.signer = Signer(load_or_create_key(home / "cluster.key"))
        self.table = SqliteAllocationTable(home / "state.db")
        self.queues = SqliteTaskQueue(home / "queues.db")
        self.store = FileObjectStore(home / "objects")
        self.secrets = LocalSecretStore(home)

    def worker_environment(self) -> dict[str, str]:
        return {}

    def interruption_notice(self) -> float | None:
        return None

    def terminate_self(self, instance_id: str) -> None:
        pass
