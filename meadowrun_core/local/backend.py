"""The local cloud assembled from its seams, one per ``MEADOWRUN_HOME`` and process."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from meadowrun_core.config import Settings, meadowrun_home
from meadowrun_core.hosts import AllocLocalInstance
from meadowrun_core.local.allocation_table import SqliteAllocationTable
from meadowrun_core.local.collect import collect_if_due
from meadowrun_core.local.instance_provider import LocalInstanceProvider
from meadowrun_core.local.object_store import FileObjectStore
from meadowrun_core.local.secrets import LocalSecretStore
from meadowrun_core.local.task_queue import SqliteTaskQueue
from meadowrun_core.seams.allocation_table import InstanceRecord
from meadowrun_core.serialization import Signer, load_or_create_key


@dataclass
class LocalBackend:
    home: Path
    settings: Settings
    table: SqliteAllocationTable
    queues: SqliteTaskQueue
    store: FileObjectStore
    provider: LocalInstanceProvider
    signer: Signer
    max_cpu: float
    max_memory_gb: float
    secrets: LocalSecretStore
    instances_are_this_machine: bool = True

    @classmethod
    def open(cls, host: AllocLocalInstance) -> LocalBackend:
        home = meadowrun_home(host.home)
        settings = Settings.from_env()
        max_cpu = host.max_cpu if host.max_cpu is not None else settings.max_cpu
        max_mem = host.max_memory_gb if host.max_memory_gb is not None else settings.max_memory_gb
        idle = host.idle_timeout if host.idle_timeout is not None else settings.idle_timeout_seconds
        table = SqliteAllocationTable(home / "state.db")
        threading.Thread(
            target=collect_if_due, args=(home, table), name="meadowrun-collect", daemon=True
        ).start()
        return cls(
            home=home,
            settings=settings,
            table=table,
            queues=SqliteTaskQueue(home / "queues.db"),
            store=FileObjectStore(home / "objects"),
            provider=LocalInstanceProvider(home, max_cpu, max_mem, idle, host.custom_resources),
            signer=Signer(load_or_create_key(home / "cluster.key")),
            max_cpu=max_cpu,
            max_memory_gb=max_mem,
            secrets=LocalSecretStore(home),
        )

    @cached_property
    def key(self) -> str:
        # the key's fingerprint too: a home deleted and recreated (a new key) shares no caches
        # (a backend's home and key never change: worked out once, as every job reads it)
        return f"local:{self.home}:{self.signer.mac(b'backend key').hex()[:12]}"

    @property
    def description(self) -> str:
        return f"the local cloud ({self.max_cpu:g} CPU / {self.max_memory_gb:g} GB)"

    async def reach(self, instance: InstanceRecord, host: str, port: int) -> tuple[str, int]:
        return host, port

    async def expose(self, port: int) -> None:
        """Instances are processes of this machine: they reach its loopback already."""

    async def open_agent_stream(
        self, instance: InstanceRecord
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Local agents listen on loopback; frames are authenticated with the cluster key."""
        if instance.address is None:
            raise ConnectionError(f"instance {instance.instance_id} has not registered yet")
        host, port = instance.address.rsplit(":", 1)
        return await asyncio.open_connection(host, int(port))

    def close(self) -> None:
        pass
