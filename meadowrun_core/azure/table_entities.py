"""Entities of the Azure Table allocation table: their keys, their shapes, and instance
entities read back as ``InstanceRecord`` / ``AllocationRecord``.

Every record kind is one partition (``instance``, ``history``, ``jobkey``, ``client``,
``raffle``), so listing a kind is a query of one partition, read consistently. The launch
limit's counter is the row ``!limits`` of the ``instance`` partition: an entity group
transaction (atomic within one partition) then charges it and records an instance together.

Azure Table has no maps and no numbers wider than 32 bits without a type hint, so numbers are
stored as doubles and maps (an instance's running jobs, custom resources, flags) as JSON
strings. A string property holds at most 64 KiB (32K UTF-16 characters), so a JSON value
longer than that is split over numbered properties (``running_jobs``, ``running_jobs_1``...,
their count in ``running_jobs_parts``).
"""

from __future__ import annotations

import json
import re
from typing import Any

from meadowrun_core.resources import Resources
from meadowrun_core.seams.allocation_table import (
    AllocationRecord,
    InstanceRecord,
    gpus_needed,
    normalize_flags,
)
from meadowrun_core.seams.instance_provider import InstanceType

INSTANCE = "instance"
HISTORY = "history"
JOB_KEY = "jobkey"
CLIENT = "client"
RAFFLE = "raffle"
# The launch limit's row: "!" is never left unescaped in a key made by ``row_key``.
LIMITS_ROW = "!limits"

_SAFE = re.compile(r"[A-Za-z0-9_.-]")
_PART_CHARS = 30_000  # below Azure's 32K UTF-16 characters per string property


def row_key(name: str) -> str:
    """A RowKey for any id (job ids, job keys, client ids...): Azure forbids ``/ \\ # ?`` and
    control characters in keys, so every character outside ``[A-Za-z0-9_.-]`` becomes ``~``
    and the hex of its UTF-8 bytes (reversible, and never ``LIMITS_ROW``)."""
    return "".join(
        c if _SAFE.fullmatch(c) else "".join(f"~{b:02x}" for b in c.encode()) for c in name
    )


def put_json(entity: dict[str, Any], name: str, value: Any) -> dict[str, Any]:
    """Store ``value`` as JSON under ``name`` in ``entity``, split into parts if long."""
    text = json.dumps(value, separators=(",", ":"), sort_keys=True)
    parts = [text[i : i + _PART_CHARS] for i in range(0, len(text), _PART_CHARS)] or [""]
    entity[name] = parts[0]
    for i, part in enumerate(parts[1:], start=1):
        entity[f"{name}_{i}"] = part
    entity[f"{name}_parts"] = float(len(parts))
    return entity


def get_json(entity: dict[str, Any], name: str, default: Any) -> Any:
    """The value ``put_json`` stored under ``name`` (``default`` when absent)."""
    if name not in entity:
        return default
    count = int(entity.get(f"{name}_parts", 1))
    text = entity[name] + "".join(entity[f"{name}_{i}"] for i in range(1, count))
    return json.loads(text) if text else default


def optional_float(entity: dict[str, Any], name: str) -> float | None:
    value = entity.get(name)
    return None if value is None else float(value)


def job_entry(client_id: str, resources: Resources, now: float, description: str) -> dict[str, Any]:
    """A job's entry in its instance's running jobs: what to give back when it ends."""
    job: dict[str, Any] = {
        "client_id": client_id,
        "cpu": float(resources.logical_cpu),
        "memory_gb": float(resources.memory_gb),
        "created": now,
        "description": description,
    }
    if gpus_needed(resources):
        job["gpus"] = float(gpus_needed(resources))
    if resources.custom:
        job["custom"] = {k: float(v) for k, v in resources.custom.items()}
    return job


def new_instance_entity(
    instance_id: str,
    instance_type: InstanceType,
    job_ids: list[str],
    resources: Resources,
    client_id: str,
    description: str,
    now: float,
) -> dict[str, Any]:
    """A launching instance's entity, its room already taken by ``job_ids``."""
    n = len(job_ids)
    custom = resources.custom or {}
    entity: dict[str, Any] = {
        "PartitionKey": INSTANCE,
        "RowKey": row_key(instance_id),
        "instance_id": instance_id,
        "instance_type": instance_type.name,
        "cpu_total": float(instance_type.logical_cpu),
        "memory_total": float(instance_type.memory_gb),
        "cpu_free": float(instance_type.logical_cpu - n * resources.logical_cpu),
        "memory_free": float(instance_type.memory_gb - n * resources.memory_gb),
        "price_per_hour": float(instance_type.price_per_hour),
        "prevent_further_allocation": False,
        "created": now,
        "last_heartbeat": now,
        "gpus_total": float(instance_type.gpus),
        "gpus_free": float(instance_type.gpus - n * gpus_needed(resources)),
        "gpu_memory_gb": float(instance_type.gpu_memory_gb),
        "arch": instance_type.arch,
        "is_spot": bool(instance_type.is_spot),
        "interruption_probability": float(instance_type.interruption_probability),
    }
    put_json(entity, "flags", list(normalize_flags(instance_type.flags)))
    put_json(entity, "custom_total", {k: float(v) for k, v in instance_type.custom})
    put_json(
        entity,
        "custom_free",
        {k: float(v) - n * custom.get(k, 0.0) for k, v in instance_type.custom},
    )
    jobs = {job_id: job_entry(client_id, resources, now, description) for job_id in job_ids}
    return put_json(entity, "running_jobs", jobs)


def history_entity(
    job_id: str, instance: dict[str, Any], job: dict[str, Any], outcome: str, ended: float
) -> dict[str, Any]:
    """The record a finished job leaves (``meadowrun costs``, ``finished_job``)."""
    return {
        "PartitionKey": HISTORY,
        "RowKey": row_key(job_id),
        "job_id": job_id,
        "instance_id": instance["instance_id"],
        "instance_type": instance["instance_type"],
        "client_id": job["client_id"],
        "description": job.get("description", ""),
        "cpu": float(job["cpu"]),
        "memory_gb": float(job["memory_gb"]),
        "started": float(job["created"]),
        "ended": ended,
        "outcome": outcome,
        "price_per_hour": float(instance["price_per_hour"]),
        "instance_cpu": float(instance["cpu_total"]),
    }


def plain(entity: dict[str, Any]) -> dict[str, Any]:
    """An entity's own properties, without its keys."""
    return {k: v for k, v in entity.items() if k not in ("PartitionKey", "RowKey")}


def instance_record(entity: dict[str, Any]) -> InstanceRecord:
    agent_pid = optional_float(entity, "agent_pid")
    return InstanceRecord(
        instance_id=entity["instance_id"],
        instance_type=entity["instance_type"],
        cpu_total=float(entity["cpu_total"]),
        memory_total=float(entity["memory_total"]),
        cpu_free=float(entity["cpu_free"]),
        memory_free=float(entity["memory_free"]),
        address=entity.get("address"),
        agent_pid=None if agent_pid is None else int(agent_pid),
        price_per_hour=float(entity["price_per_hour"]),
        prevent_further_allocation=bool(entity.get("prevent_further_allocation", False)),
        interruption_at=optional_float(entity, "interruption_at"),
        created=float(entity["created"]),
        last_heartbeat=float(entity["last_heartbeat"]),
        running_jobs=len(get_json(entity, "running_jobs", {})),
        gpus_total=float(entity.get("gpus_total", 0.0)),
        gpus_free=float(entity.get("gpus_free", 0.0)),
        gpu_memory_gb=float(entity.get("gpu_memory_gb", 0.0)),
        flags=tuple(get_json(entity, "flags", [])),
        arch=str(entity.get("arch", "")),
        is_spot=bool(entity.get("is_spot", False)),
        interruption_probability=float(entity.get("interruption_probability", 0.0)),
        custom_total=get_json(entity, "custom_total", {}),
        custom_free=get_json(entity, "custom_free", {}),
    )


def allocation_records(entity: dict[str, Any]) -> list[AllocationRecord]:
    return [
        AllocationRecord(
            job_id=job_id,
            instance_id=entity["instance_id"],
            client_id=job["client_id"],
            cpu=float(job["cpu"]),
            memory_gb=float(job["memory_gb"]),
            worker_pid=int(job["worker_pid"]) if job.get("worker_pid") is not None else None,
            created=float(job["created"]),
            description=job.get("description", ""),
            gpus=float(job.get("gpus", 0.0)),
            custom={k: float(v) for k, v in job.get("custom", {}).items()},
        )
        for job_id, job in get_json(entity, "running_jobs", {}).items()
    ]
