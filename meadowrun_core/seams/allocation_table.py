"""The instance allocation table: who runs what where, updated atomically.

Implementations use optimistic concurrency (SQLite transactions, DynamoDB conditional writes,
Azure Table ETags) so that racing clients never over-allocate an instance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from meadowrun_core.resources import Resources
from meadowrun_core.seams.instance_provider import InstanceType


@dataclass(frozen=True)
class InstanceRecord:
    instance_id: str
    instance_type: str
    cpu_total: float
    memory_total: float
    cpu_free: float
    memory_free: float
    address: str | None
    agent_pid: int | None
    price_per_hour: float
    prevent_further_allocation: bool
    interruption_at: float | None
    created: float
    last_heartbeat: float
    running_jobs: int


@dataclass(frozen=True)
class AllocationRecord:
    job_id: str
    instance_id: str
    client_id: str
    cpu: float
    memory_gb: float
    worker_pid: int | None
    created: float
    description: str


class AllocationTable(Protocol):
    def allocate_on_existing(
        self, job_ids: list[str], resources: Resources, client_id: str, description: str
    ) -> dict[str, str]:
        """Place as many jobs as fit on registered instances (best fit); job id -> instance id."""
        ...

    def allocate_on_new_instance(
        self,
        instance_id: str,
        instance_type: InstanceType,
        job_ids: list[str],
        resources: Resources,
        client_id: str,
        description: str,
        max_cpu: float,
        max_memory_gb: float,
    ) -> bool:
        """Record a launching instance with the jobs on it, unless it breaks the launch limit."""
        ...

    def deallocate(self, job_id: str, outcome: str) -> bool: ...

    def set_worker_pid(self, job_id: str, pid: int) -> None: ...

    def register_instance(self, instance_id: str, address: str, agent_pid: int) -> None: ...

    def heartbeat(self, instance_id: str) -> InstanceRecord | None: ...

    def remove_instance_if_idle(self, instance_id: str) -> bool: ...

    def remove_instance(self, instance_id: str, outcome: str) -> None: ...

    def remove_dead_instances(self) -> list[str]:
        """Remove instances that stopped heartbeating or never registered; their ids."""
        ...

    def set_prevent_further_allocation(self, instance_id: str) -> None: ...

    def job_history(self, limit: int = 100) -> list[dict[str, Any]]: ...

    def get_instance(self, instance_id: str) -> InstanceRecord | None: ...

    def list_instances(self) -> list[InstanceRecord]: ...

    def list_allocations(self, instance_id: str | None = None) -> list[AllocationRecord]: ...

    def renew_lease(self, client_id: str, pid: int, lease_seconds: float) -> None: ...

    def release_lease(self, client_id: str) -> None: ...

    def allocations_with_expired_lease(self, instance_id: str) -> list[AllocationRecord]: ...

    def lease_expiry(self, client_id: str) -> float | None: ...

    def request_interruption(self, instance_id: str, delay_seconds: float) -> None: ...

    def claim_job_key(self, job_key: str, job_id: str, submitter: str = "") -> str | None: ...

    def set_job_key_instance(self, job_key: str, job_id: str, instance_id: str) -> None: ...

    def mark_job_key_started(self, job_key: str) -> None: ...

    def record_job_final(self, job_key: str, final: str, payload_key: str | None) -> None: ...

    def get_job_key(self, job_key: str) -> dict[str, object] | None: ...

    def forget_job_key(self, job_key: str) -> bool: ...
