"""A cloud as the client sees it: its seams, its limits, and how to reach an instance's agent.

``LocalBackend`` (meadowrun_core.local.backend) and ``AwsBackend`` (meadowrun_core.aws.backend)
implement it; the client's allocation, job and map code only ever sees this protocol.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Protocol

from meadowrun_core.config import Settings
from meadowrun_core.exceptions import MeadowrunError
from meadowrun_core.resources import Resources
from meadowrun_core.seams.allocation_table import AllocationTable, InstanceRecord
from meadowrun_core.seams.instance_provider import InstanceType
from meadowrun_core.seams.object_store import ObjectStore
from meadowrun_core.seams.secret_store import SecretStore
from meadowrun_core.seams.task_queue import TaskQueue
from meadowrun_core.serialization import Signer


class CapacityError(Exception):
    """The cloud has no capacity (or quota) for this instance type now: try the next choice.
    ``market_wide``: the error holds for every type of its market (a spot quota), so the
    remaining choices in that market are skipped."""

    def __init__(self, message: str, market_wide: bool = False) -> None:
        super().__init__(message)
        self.market_wide = market_wide


class LaunchError(MeadowrunError):
    """An instance was launched but could not become a meadowrun instance (its bootstrap
    failed); it has been terminated, and the message says why."""


class Provider(Protocol):
    """Instance types, choosing among them, and starting and stopping instances."""

    def check_satisfiable(self, resources: Resources) -> None:
        """Raise ``ResourcesNotAvailableError`` naming the largest type if nothing could fit."""
        ...

    def choices(
        self, resources: Resources, workers: int, room_cpu: float, room_memory_gb: float
    ) -> list[tuple[InstanceType, int]]:
        """Types that fit within the room, best first, with how many workers each holds."""
        ...

    async def launch(self, instance_id: str, instance_type: InstanceType) -> None:
        """Start the instance and its agent, which then registers in the allocation table.
        Raises ``CapacityError`` when the cloud cannot start this type now."""
        ...

    def terminate(self, instance_id: str, agent_pid: int | None = None) -> None: ...

    def failure_hint(self, instance_id: str) -> str:
        """Where to look when an instance did not start (its log's tail, if reachable)."""
        ...


class Backend(Protocol):
    @property
    def key(self) -> str:
        """Identifies this cloud within the process (caches and signals are per key)."""
        ...

    @property
    def description(self) -> str:
        """Names the cloud in messages, e.g. 'the local cloud' or 'AWS us-east-1'."""
        ...

    # read-only here, so each cloud may hold its own concrete seam classes
    @property
    def home(self) -> Path:
        """Local directory for this cloud's client-side caches."""
        ...

    @property
    def instances_are_this_machine(self) -> bool:
        """The local cloud: interpreters and tools on instances can be checked here."""
        ...

    @property
    def settings(self) -> Settings: ...

    @property
    def table(self) -> AllocationTable: ...

    @property
    def queues(self) -> TaskQueue: ...

    @property
    def store(self) -> ObjectStore: ...

    @property
    def provider(self) -> Provider: ...

    @property
    def signer(self) -> Signer: ...

    @property
    def secrets(self) -> SecretStore:
        """The cloud's named secrets (what deployments' ``*_secret`` names refer to)."""
        ...

    @property
    def max_cpu(self) -> float: ...

    @property
    def max_memory_gb(self) -> float: ...

    async def open_agent_stream(
        self, instance: InstanceRecord
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """An authenticated-transport stream to the instance's agent."""
        ...

    async def reach(self, instance: InstanceRecord, host: str, port: int) -> tuple[str, int]:
        """An address on this machine that reaches ``host:port`` as seen from ``instance``
        (a server a job runs there): the same address where the instance is this machine, a
        port forwarded through the SSH connection otherwise, so no other port need be open."""
        ...

    async def expose(self, port: int) -> None:
        """From now on, instances reach this machine's ``127.0.0.1:port`` at their own."""
        ...

    def close(self) -> None:
        """Release what the backend holds open (SSH connections, forwarded ports)."""
        ...
