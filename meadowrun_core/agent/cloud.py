"""What the agent needs from the cloud it runs in, one implementation per cloud."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from meadowrun_core.local.allocation_table import SqliteAllocationTable
from meadowrun_core.local.object_store import FileObjectStore
from meadowrun_core.local.secrets import LocalSecretStore
from meadowrun_core.local.task_queue import SqliteTaskQueue
from meadowrun_core.seams.allocation_table import AllocationTable
from meadowrun_core.seams.object_store import ObjectStore
from meadowrun_core.seams.secret_store import SecretStore
from meadowrun_core.seams.task_queue import TaskQueue
from meadowrun_core.serialization import Signer, load_or_create_key


class AgentCloud(Protocol):
    @property
    def table(self) -> AllocationTable: ...

    @property
    def queues(self) -> TaskQueue: ...

    @property
    def store(self) -> ObjectStore: ...

    @property
    def signer(self) -> Signer: ...

    @property
    def secrets(self) -> SecretStore:
        """Where the secrets that deployments name are read on the instance."""
        ...

    def worker_environment(self) -> dict[str, str]:
        """Variables that tell worker processes how to reach the object store."""
        ...

    def interruption_notice(self) -> float | None:
        """When the cloud will reclaim this instance (epoch seconds), if it said so."""
        ...

    def terminate_self(self, instance_id: str) -> None:
        """Stop paying for this instance once its agent has left the table."""
        ...


class LocalAgentCloud:
    """The local cloud: SQLite and files under ``MEADOWRUN_HOME``; interruptions are
    simulated through the allocation table, and an instance ends when its agent exits."""

    def __init__(self, home: Path) -> None:
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
