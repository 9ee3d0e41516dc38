"""Items of the DynamoDB allocation table: DynamoDB's typed JSON, and instance items as
``InstanceRecord`` / ``AllocationRecord`` (resources beyond CPU and memory included)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from botocore.exceptions import ClientError

from meadowrun_core.seams.allocation_table import AllocationRecord, InstanceRecord

CONDITION_FAILED = ("ConditionalCheckFailedException", "TransactionCanceledException")


def num(value: float) -> Decimal:
    return Decimal(repr(float(value)))


def failed_condition(exc: ClientError) -> bool:
    return exc.response["Error"]["Code"] in CONDITION_FAILED


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
