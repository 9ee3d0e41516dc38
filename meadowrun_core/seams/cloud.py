"""The seams one cloud offers, under the same names on the client and on an instance.

``backend.Backend`` (the client's view of a cloud) and ``agent.cloud.AgentCloud`` (the
agent's) both extend this, so code that only moves data (the code mirror, payloads, map
queues) takes either.
"""

from __future__ import annotations

from typing import Protocol

from meadowrun_core.seams.allocation_table import AllocationTable
from meadowrun_core.seams.object_store import ObjectStore
from meadowrun_core.seams.secret_store import SecretStore
from meadowrun_core.seams.task_queue import TaskQueue
from meadowrun_core.serialization import Signer


class CloudSeams(Protocol):
    # read-only members, so each cloud may hold its own concrete seam classes
    @property
    def table(self) -> AllocationTable:
        """Instances, their allocations and job keys."""
        ...

    @property
    def queues(self) -> TaskQueue:
        """Map jobs' request and result queues."""
        ...

    @property
    def store(self) -> ObjectStore:
        """Content-addressed code, functions and payloads."""
        ...

    @property
    def signer(self) -> Signer:
        """Signs and verifies everything the cluster exchanges (the cluster key)."""
        ...

    @property
    def secrets(self) -> SecretStore:
        """The cloud's named secrets (what deployments' ``*_secret`` names refer to)."""
        ...
