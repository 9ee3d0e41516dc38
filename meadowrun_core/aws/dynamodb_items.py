"""Items of the DynamoDB allocation table: DynamoDB's typed JSON, the shapes of the instance,
job and history items written, and instance items read back as ``InstanceRecord`` /
``AllocationRecord`` (resources beyond CPU and memory included)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from botocore.exceptions import ClientError

from meadowrun_core.resources import Resources
from meadowrun_core.seams.allocation_table import (
    AllocationRecord,
    InstanceRecord,
    gpus_needed,
    normalize_flags,
)
from meadowrun_core.seams.instance_provider import InstanceType

CONDITION_FAILED = ("ConditionalCheckFailedException", "TransactionCanceledException")


def num(value: float) -> Decimal:
    return Decimal(repr(float(value)))


def failed_condition(exc: ClientError) -> bool:
    return exc.response["Error"]["Code"] in CONDITION_FAILED


def job_entry(client_id: str, resources: Resources, now: float, description: str) -> dict[str, Any]:
    """A job's entry in its instance's ``running_jobs`` map: what to give back when it ends."""
    job: dict[str, Any] = {
        "client_id": client_id,
        "cpu": resources.logical_cpu,
        "memory_gb": resources.memory_gb,
        "created": now,
        "description": description,
    }
    if gpus_needed(resources):
        job["gpus"] = gpus_needed(resources)
    if resources.custom:
        job["custom"] = dict(resources.custom)
    return job


def new_instance_item(
    instance_id: str,
    instance_type: InstanceType,
    job_ids: list[str],
    resources: Resources,
    client_id: str,
    description: str,
    now: float,
) -> dict[str, Any]:
    """A launching instance's item, its room already taken by ``job_ids``."""
    n = len(job_ids)
    return {
        "pk": f"instance#{instance_id}",
        "kind": "instance",
        "instance_type": instance_type.name,
        "cpu_total": instance_type.logical_cpu,
        "memory_total": instance_type.memory_gb,
        "cpu_free": instance_type.logical_cpu - n * resources.logical_cpu,
        "memory_free": instance_type.memory_gb - n * resources.memory_gb,
        "price_per_hour": instance_type.price_per_hour,
        "prevent_further_allocation": False,
        "created": now,
        "last_heartbeat": now,
        "gpus_total": instance_type.gpus,
        "gpus_free": instance_type.gpus - n * gpus_needed(resources),
        "gpu_memory_gb": instance_type.gpu_memory_gb,
        "flags": list(normalize_flags(instance_type.flags)),
        "arch": instance_type.arch,
        "is_spot": instance_type.is_spot,
        "interruption_probability": instance_type.interruption_probability,
        "custom_total": dict(instance_type.custom),
        "custom_free": {
            k: v - n * (resources.custom or {}).get(k, 0.0) for k, v in instance_type.custom
        },
        "running_jobs": {
            job_id: job_entry(client_id, resources, now, description) for job_id in job_ids
        },
    }


def history_item(
    job_id: str, instance: dict[str, Any], job: dict[str, Any], outcome: str, ended: float
) -> dict[str, Any]:
    """The record a finished job leaves (``meadowrun costs``, ``finished_job``)."""
    return {
        "pk": f"history#{job_id}",
        "kind": "history",
        "instance_id": instance["pk"].removeprefix("instance#"),
        "instance_type": instance["instance_type"],
        "client_id": job["client_id"],
        "description": job.get("description", ""),
        "cpu": job["cpu"],
        "memory_gb": job["memory_gb"],
        "started": job["created"],
        "ended": ended,
        "outcome": outcome,
        "price_per_hour": instance["price_per_hour"],
        "instance_cpu": instance["cpu_total"],
    }


def instance_record(item: dict[str, Any]) -> InstanceRecord:
    jobs = item.get("running_jobs", {})
    return InstanceRecord(
        instance_id=item["pk"].removeprefix("instance#"),
        instance_type=item["instance_type"],
        cpu_total=float(item["cpu_total"]),
        memory_total=float(item["memory_total"]),
        cpu_free=float(item["cpu_free"]),
        memory_free=float(item["memory_free"]),
        address=item.get("address"),
        agent_pid=int(item["agent_pid"]) if item.get("agent_pid") is not None else None,
        price_per_hour=float(item["price_per_hour"]),
        prevent_further_allocation=bool(item.get("prevent_further_allocation", False)),
        interruption_at=(
            float(item["interruption_at"]) if item.get("interruption_at") is not None else None
        ),
        created=float(item["created"]),
        last_heartbeat=float(item["last_heartbeat"]),
        running_jobs=len(jobs),
        gpus_total=float(item.get("gpus_total", 0)),
        gpus_free=float(item.get("gpus_free", 0)),
        gpu_memory_gb=float(item.get("gpu_memory_gb", 0)),
        flags=tuple(item.get("flags", ())),
        arch=str(item.get("arch", "")),
        is_spot=bool(item.get("is_spot", False)),
        interruption_probability=float(item.get("interruption_probability", 0)),
        custom_total={k: float(v) for k, v in item.get("custom_total", {}).items()},
        custom_free={k: float(v) for k, v in item.get("custom_free", {}).items()},
    )


def allocation_records(item: dict[str, Any]) -> list[AllocationRecord]:
    instance_id = item["pk"].removeprefix("instance#")
    return [
        AllocationRecord(
            job_id=job_id,
            instance_id=instance_id,
            client_id=job["client_id"],
            cpu=float(job["cpu"]),
            memory_gb=float(job["memory_gb"]),
            worker_pid=int(job["worker_pid"]) if job.get("worker_pid") is not None else None,
            created=float(job["created"]),
            description=job.get("description", ""),
            gpus=float(job.get("gpus", 0)),
            custom={k: float(v) for k, v in job.get("custom", {}).items()},
        )
        for job_id, job in item.get("running_jobs", {}).items()
    ]


def to_dynamo_value(value: Any) -> dict[str, Any]:
    if value is None:
        return {"NULL": True}
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, int | float | Decimal):
        return {"N": str(num(value) if not isinstance(value, Decimal) else value)}
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, dict):
        return {"M": {k: to_dynamo_value(v) for k, v in value.items()}}
    if isinstance(value, list | tuple):
        return {"L": [to_dynamo_value(v) for v in value]}
    raise TypeError(f"cannot store {type(value).__name__} in DynamoDB: {json.dumps(str(value))}")


def to_dynamo_item(item: dict[str, Any]) -> dict[str, Any]:
    return {k: to_dynamo_value(v) for k, v in item.items()}


def from_dynamo_value(value: dict[str, Any]) -> Any:
    ((kind, raw),) = value.items()
    if kind == "NULL":
        return None
    if kind == "BOOL":
        return bool(raw)
    if kind == "N":
        number = float(raw)
        return int(number) if number.is_integer() and "." not in raw else number
    if kind == "S":
        return raw
    if kind == "M":
        return {k: from_dynamo_value(v) for k, v in raw.items()}
    if kind == "L":
        return [from_dynamo_value(v) for v in raw]
    raise TypeError(f"unexpected DynamoDB type {kind}")


def from_dynamo(item: dict[str, Any]) -> dict[str, Any]:
    return {k: from_dynamo_value(v) for k, v in item.items()}
