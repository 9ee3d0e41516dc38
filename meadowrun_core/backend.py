"""A cloud as the client sees it: its seams, its limits, and how to reach an instance's agent.

``LocalBackend`` (meadowrun_core.local.backend) and ``AwsBackend`` (meadowrun_core.aws.backend)
implement it; the client's allocation, job and map code only ever sees this protocol.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from meadowrun_core.config import Settings
from meadowrun_core.exceptions import MeadowrunError
from meadowrun_core.seams.allocation_table import InstanceRecord
from meadowrun_core.seams.cloud import CloudSeams
from meadowrun_core.seams.instance_provider import Provider


class CapacityError(Exception):
    """The cloud has no capacity (or quota) for this instance type now: try the next choice.
    ``market_wide``: the error holds for every type of its market (a spot quota), so the
    remaining choices in that market are skipped. ``also_refuses``: other types of the same
    market the same error holds for (an Azure regular quota counts a whole size family), so
    they are skipped without asking the cloud again."""

    def __init__(
        self, message: str, market_wide: bool = False, also_refuses: Iterable[str] = ()
    ) -> None:
        super().__init__(message)
        self.market_wide = market_wide
        self.also_refuses = frozenset(also_refuses)


class LaunchError(MeadowrunError):
    """An instance was launched but could not become a meadowrun instance (its bootstrap
    failed); it has been terminated, and the message says why."""


class Backend(CloudSeams, Protocol):
    """A cloud as the client sees it; its seams are ``CloudSeams``' members."""

    @property
    def key(self) -> str:
        """Identifies this cloud within the process (caches and signals are per key)."""
        ...

    @property
    def description(self) -> str:
        """Names the cloud in messages, e.g. 'the local cloud' or 'AWS us-east-1'."""
        ...

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
    def provider(self) -> Provider: ...

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
