"""The instance allocation table: who runs what where, updated atomically.

Implementations use optimistic concurrency (SQLite transactions, DynamoDB conditional writes,
Azure Table ETags) so that racing clients never over-allocate an instance.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from meadowrun_core.resources import Resources
from meadowrun_core.seams.instance_provider import InstanceType
from meadowrun_core.seams.raffle import RaffleEntry

# Facts every table, client and agent share, whichever cloud holds the table.
# Instances that have not written a heartbeat for this long are treated as crashed.
INSTANCE_DEAD_AFTER_SECONDS = 10.0
# An instance that has not registered this long after its launch is treated as failed (a
# cloud whose instances boot slower passes its own grace to its table: EC2's is 600 s).
LAUNCH_GRACE_SECONDS = 60.0


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
    gpus_total: float = 0.0
    gpus_free: float = 0.0
    gpu_memory_gb: float = 0.0  # per GPU
    flags: tuple[str, ...] = ()
    arch: str = ""
    is_spot: bool = False
    interruption_probability: float = 0.0
    custom_total: Mapping[str, float] = field(default_factory=dict)
    custom_free: Mapping[str, float] = field(default_factory=dict)


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
    gpus: float = 0.0
    custom: Mapping[str, float] = field(default_factory=dict)


# What a job needs beyond CPU and memory, shared by every table so that reuse means the same
# on SQLite and DynamoDB.
_FLAG_ALIASES = {
    "aarch64": "arm64",
    "arm": "arm64",
    "graviton": "arm64",
    "x86": "x86_64",
    "amd64": "x86_64",
    "amd_cpu": "amd",
    "intel_cpu": "intel",
    "cuda": "nvidia",
    "avx-512": "avx512",
}
_ARCHES = {"arm64", "x86_64"}


def normalize_flags(flags: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    names = {_FLAG_ALIASES.get(f.strip().lower(), f.strip().lower()) for f in flags}
    return tuple(sorted(names))


def gpus_needed(resources: Resources) -> float:
    """GPUs one job takes: ``gpus``, or one GPU when only ``gpu_memory`` is asked for."""
    return resources.gpus or (1.0 if resources.gpu_memory else 0.0)


def instance_suits(record: InstanceRecord, resources: Resources) -> bool:
    """Whether the instance's fixed properties suit the job: architecture (x86_64 unless
    asked; "" is the client's own machine), flags, market (``max_eviction_rate=0`` never
    on spot; spot only within the rate) and memory per GPU."""
    wanted = normalize_flags(resources.flags)
    arch = next((f for f in wanted if f in _ARCHES), "x86_64")
    if record.arch and record.arch != arch:
        return False
    if not {f for f in wanted if f not in _ARCHES} <= set(normalize_flags(record.flags)):
        return False
    if record.is_spot and (
        resources.max_eviction_rate <= 0
        or record.interruption_probability * 100 > resources.max_eviction_rate + 1e-9
    ):
        return False
    gpus = gpus_needed(resources)
    return not (resources.gpu_memory and record.gpu_memory_gb * gpus < resources.gpu_memory)


def room_fits(
    resources: Resources,
    cpu_free: float,
    memory_free: float,
    gpus_free: float,
    custom_free: Mapping[str, float],
) -> bool:
    """Whether the free room holds one more job of ``resources``."""
    return (
        cpu_free >= resources.logical_cpu - 1e-9
        and memory_free >= resources.memory_gb - 1e-9
        and gpus_free >= gpus_needed(resources) - 1e-9
        and all(custom_free.get(k, 0.0) >= v - 1e-9 for k, v in (resources.custom or {}).items())
    )


class AllocationTable(Protocol):
    def allocate_on_existing(
        self, job_ids: list[str], resources: Resources, client_id: str, description: str
    ) -> dict[str, str]:
        """Place as many jobs as fit on registered instances (best fit) where every resource
        fits (``instance_suits``, ``room_fits``); job id -> instance id."""
        ...

    def place_on_existing(
        self, job_ids: list[str], resources: Resources, client_id: str, description: str
    ) -> dict[str, InstanceRecord]:
        """``allocate_on_existing``, answering with the instances' records (no re-read)."""
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

    def remove_dead_instances(self) -> tuple[list[str], list[InstanceRecord]]:
        """Remove instances that stopped heartbeating or never registered: the ids removed
        and the instances left (one listing serves both: a request fewer on a cloud)."""
        ...

    def set_prevent_further_allocation(self, instance_id: str) -> None: ...

    def job_history(self, limit: int = 100) -> list[dict[str, Any]]: ...

    def finished_job(self, job_id: str) -> dict[str, Any] | None:
        """The job-history row of ``job_id`` (as ``job_history``'s), None until its allocation
        is freed; one read, for ``JobHandle.cost()``."""
        ...

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

    def find_job_key(self, job_id: str) -> dict[str, object] | None:
        """The record of the keyed job whose job id is ``job_id`` (as ``get_job_key``)."""
        ...

    def forget_job_key(self, job_key: str) -> bool: ...

    # --- the priority raffle among jobs waiting for room (seams/raffle.py) ---------------
    def raffle_entries(self) -> list[RaffleEntry]:
        """The live raffle entries (not expired), of every client."""
        ...

    def enter_raffle(self, ticket: str, priority: float, client_id: str, expires: float) -> None:
        """Add or renew a waiting job's entry until ``expires``; drop expired entries."""
        ...

    def leave_raffle(self, ticket: str) -> None: ...


def takes_jobs(record: InstanceRecord, resources: Resources, now: float) -> bool:
    """Whether a cloud's instance may take new jobs of ``resources``: registered, alive,
    not told to stop taking them, and of a kind that suits them (room checked apart)."""
    return (
        record.address is not None
        and not record.prevent_further_allocation
        and record.last_heartbeat >= now - INSTANCE_DEAD_AFTER_SECONDS
        and instance_suits(record, resources)
    )


def split_dead(
    records: list[InstanceRecord], now: float, launch_grace: float
) -> tuple[list[str], list[InstanceRecord]]:
    """The ids of instances that stopped heartbeating or never registered within
    ``launch_grace``, and the others (``remove_dead_instances``' two answers)."""
    dead: list[str] = []
    alive: list[InstanceRecord] = []
    for record in records:
        if (
            record.address is not None and record.last_heartbeat < now - INSTANCE_DEAD_AFTER_SECONDS
        ) or (record.address is None and record.created < now - launch_grace):
            dead.append(record.instance_id)
        else:
            alive.append(record)
    return dead, alive
