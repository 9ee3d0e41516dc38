"""``AllocationTable`` on DynamoDB, with conditional writes instead of transactions.

One table holds every record, told apart by the ``pk`` prefix: ``instance#``, ``client#``,
``history#``, ``jobkey#`` and the single ``limits`` item. A job's allocation lives inside its
instance's item (``running_jobs`` map), so placing it is one conditional ``update_item`` that
checks and subtracts the free capacity atomically, as Meadowrun did; launching an instance is
one transaction that also charges the cloud-wide launch limit.
"""

from __future__ import annotations

import json
import time
from decimal import Decimal
from typing import Any

from botocore.exceptions import ClientError

from meadowrun_core.aws import names
from meadowrun_core.local.allocation_table import (
    INSTANCE_DEAD_AFTER_SECONDS,
)
from meadowrun_core.resources import Resources
from meadowrun_core.seams.allocation_table import AllocationRecord, InstanceRecord
from meadowrun_core.seams.instance_provider import InstanceType

_LIMITS = "limits"
# A sparse index on ``kind``: instance and history items carry it, so listing them is a Query
# over those items instead of a Scan of the whole table (leases, job keys, history).
_BY_KIND = "by_kind"
_CONDITION_FAILED = ("ConditionalCheckFailedException", "TransactionCanceledException")


def _num(value: float) -> Decimal:
    return Decimal(repr(float(value)))


def _failed_condition(exc: ClientError) -> bool:
    return exc.response["Error"]["Code"] in _CONDITION_FAILED


def _instance(item: dict[str, Any]) -> InstanceRecord:
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
    )


def _allocations(item: dict[str, Any]) -> list[AllocationRecord]:
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
        )
        for job_id, job in item.get("running_jobs", {}).items()
    ]


# An EC2 instance may take minutes to boot, install meadowrun and register (the local
# cloud's agents take a second): a launching record older than this is considered dead.
EC2_LAUNCH_GRACE_SECONDS = 600.0


class DynamoDbAllocationTable:
    def __init__(
        self,
        dynamodb: Any,
        table_name: str = names.TABLE_NAME,
        launch_grace_seconds: float = EC2_LAUNCH_GRACE_SECONDS,
    ) -> None:
        self._db = dynamodb
        self._table = table_name
        self._launch_grace = launch_grace_seconds

    # --- setup ----------------------------------------------------------------------------
    def create(self) -> None:
        """Create the table (on-demand billing) if it does not exist; used by install."""
        try:
            self._db.create_table(
                TableName=self._table,
                AttributeDefinitions=[
                    {"AttributeName": "pk", "AttributeType": "S"},
                    {"AttributeName": "kind", "AttributeType": "S"},
                ],
                KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                GlobalSecondaryIndexes=[
                    {
                        "IndexName": _BY_KIND,
                        "KeySchema": [
                            {"AttributeName": "kind", "KeyType": "HASH"},
                            {"AttributeName": "pk", "KeyType": "RANGE"},
                        ],
                        "Projection": {"ProjectionType": "ALL"},
                    }
                ],
                BillingMode="PAY_PER_REQUEST",
                Tags=names.TAGS,
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ResourceInUseException":
                raise
        self._db.get_waiter("table_exists").wait(TableName=self._table)

    # --- helpers --------------------------------------------------------------------------
    def _scan(self, prefix: str) -> list[dict[str, Any]]:
        """Every item whose key starts with ``prefix``, across all scan pages, read
        consistently (reads the whole table: only a fallback)."""
        items: list[dict[str, Any]] = []
        paginator = self._db.get_paginator("scan")
        for page in paginator.paginate(
            TableName=self._table,
            FilterExpression="begins_with(pk, :p)",
            ExpressionAttributeValues={":p": {"S": prefix}},
            ConsistentRead=True,
        ):
            items.extend(_from_dynamo(item) for item in page["Items"])
        return items

    def _kind(self, kind: str) -> list[dict[str, Any]]:
        """Every item of one kind (instance, history) from the sparse index on ``kind``: a
        Query that reads only those items, not the whole table. Index reads are eventually
        consistent; callers that must see the latest state re-read the item by key."""
        items: list[dict[str, Any]] = []
        paginator = self._db.get_paginator("query")
        for page in paginator.paginate(
            TableName=self._table,
            IndexName=_BY_KIND,
            KeyConditionExpression="#k = :k",
            ExpressionAttributeNames={"#k": "kind"},
            ExpressionAttributeValues={":k": {"S": kind}},
        ):
            items.extend(_from_dynamo(item) for item in page["Items"])
        return items

    def _instance_holding(self, job_id: str) -> dict[str, Any] | None:
        """The instance item (read consistently) whose running jobs include ``job_id``. The
        index finds it; if the index has not caught up yet, a consistent scan does."""
        for item in self._kind("instance"):
            if job_id in item.get("running_jobs", {}):
                fresh = self._get(item["pk"])
                if fresh is not None and job_id in fresh.get("running_jobs", {}):
                    return fresh
        for item in self._scan("instance#"):
            if job_id in item.get("running_jobs", {}):
                return item
        return None

    def _get(self, pk: str) -> dict[str, Any] | None:
        response = self._db.get_item(
            TableName=self._table, Key={"pk": {"S": pk}}, ConsistentRead=True
        )
        item = response.get("Item")
        return None if item is None else _from_dynamo(item)

    # --- allocation -----------------------------------------------------------------------
    def allocate_on_existing(
        self, job_ids: list[str], resources: Resources, client_id: str, description: str
    ) -> dict[str, str]:
        placed: dict[str, str] = {}
        now = time.time()
        for record in self.list_instances():
            if (
                record.address is None
                or record.prevent_further_allocation
                or record.last_heartbeat < now - INSTANCE_DEAD_AFTER_SECONDS
            ):
                continue
            for job_id in job_ids:
                if job_id in placed:
                    continue
                if not self._try_allocate(
                    record.instance_id, job_id, resources, client_id, description, now
                ):
                    break  # full (or changed under us): the next instance
                placed[job_id] = record.instance_id
            if len(placed) == len(job_ids):
                break
        return placed

    def _try_allocate(
        self,
        instance_id: str,
        job_id: str,
        resources: Resources,
        client_id: str,
        description: str,
        now: float,
    ) -> bool:
        job = _to_dynamo_value(
            {
                "client_id": client_id,
                "cpu": resources.logical_cpu,
                "memory_gb": resources.memory_gb,
                "created": now,
                "description": description,
            }
        )
        try:
            self._db.update_item(
                TableName=self._table,
                Key={"pk": {"S": f"instance#{instance_id}"}},
                UpdateExpression=(
                    "SET cpu_free = cpu_free - :c, memory_free = memory_free - :m, "
                    "running_jobs.#j = :job"
                ),
                ConditionExpression=(
                    "cpu_free >= :c AND memory_free >= :m AND prevent_further_allocation = :f "
                    "AND attribute_not_exists(running_jobs.#j)"
                ),
                ExpressionAttributeNames={"#j": job_id},
                ExpressionAttributeValues={
                    ":c": {"N": str(resources.logical_cpu)},
                    ":m": {"N": str(resources.memory_gb)},
                    ":f": {"BOOL": False},
                    ":job": job,
                },
            )
        except ClientError as exc:
            if _failed_condition(exc):
                return False
            raise
        return True

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
        now = time.time()
        n = len(job_ids)
        item = {
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
            "running_jobs": {
                job_id: {
                    "client_id": client_id,
                    "cpu": resources.logical_cpu,
                    "memory_gb": resources.memory_gb,
                    "created": now,
                    "description": description,
                }
                for job_id in job_ids
            },
        }
        self._ensure_limits()
        try:
            self._db.transact_write_items(
                TransactItems=[
                    {
                        "Update": {
                            "TableName": self._table,
                            "Key": {"pk": {"S": _LIMITS}},
                            "UpdateExpression": "SET cpu_used = cpu_used + :c, "
                            "memory_used = memory_used + :m",
                            "ConditionExpression": "cpu_used <= :max_c AND memory_used <= :max_m",
                            "ExpressionAttributeValues": {
                                ":c": {"N": str(instance_type.logical_cpu)},
                                ":m": {"N": str(instance_type.memory_gb)},
                                ":max_c": {"N": str(max_cpu - instance_type.logical_cpu)},
                                ":max_m": {"N": str(max_memory_gb - instance_type.memory_gb)},
                            },
                        }
                    },
                    {
                        "Put": {
                            "TableName": self._table,
                            "Item": _to_dynamo_item(item),
                            "ConditionExpression": "attribute_not_exists(pk)",
                        }
                    },
                ]
            )
        except ClientError as exc:
            if _failed_condition(exc):
                return False
            raise
        return True

    def _ensure_limits(self) -> None:
        try:
            self._db.put_item(
                TableName=self._table,
                Item={"pk": {"S": _LIMITS}, "cpu_used": {"N": "0"}, "memory_used": {"N": "0"}},
                ConditionExpression="attribute_not_exists(pk)",
            )
        except ClientError as exc:
            if not _failed_condition(exc):
                raise

    def deallocate(self, job_id: str, outcome: str) -> bool:
        item = self._instance_holding(job_id)
        if item is None:
            return False
        return self._deallocate(item, job_id, item["running_jobs"][job_id], outcome)

    def _deallocate(
        self, item: dict[str, Any], job_id: str, job: dict[str, Any], outcome: str
    ) -> bool:
        try:
            self._db.update_item(
                TableName=self._table,
                Key={"pk": {"S": item["pk"]}},
                UpdateExpression="SET cpu_free = cpu_free + :c, memory_free = memory_free + :m "
                "REMOVE running_jobs.#j",
                ConditionExpression="attribute_exists(running_jobs.#j)",
                ExpressionAttributeNames={"#j": job_id},
                ExpressionAttributeValues={
                    ":c": {"N": str(job["cpu"])},
                    ":m": {"N": str(job["memory_gb"])},
                },
            )
        except ClientError as exc:
            if _failed_condition(exc):
                return False  # someone else freed it first
            raise
        self._put(
            {
                "pk": f"history#{job_id}",
                "kind": "history",
                "instance_id": item["pk"].removeprefix("instance#"),
                "instance_type": item["instance_type"],
                "client_id": job["client_id"],
                "description": job.get("description", ""),
                "cpu": job["cpu"],
                "memory_gb": job["memory_gb"],
                "started": job["created"],
                "ended": time.time(),
                "outcome": outcome,
                "price_per_hour": item["price_per_hour"],
                "instance_cpu": item["cpu_total"],
            }
        )
        return True

    def set_worker_pid(self, job_id: str, pid: int) -> None:
        item = self._instance_holding(job_id)
        if item is not None:
            self._update_instance(
                item["pk"],
                "SET running_jobs.#j.worker_pid = :v",
                {":v": {"N": str(pid)}},
                {"#j": job_id},
            )

    # --- instances ------------------------------------------------------------------------
    def _update_instance(
        self,
        pk: str,
        expression: str,
        values: dict[str, Any],
        names: dict[str, str] | None = None,
    ) -> bool:
        kwargs: dict[str, Any] = {
            "TableName": self._table,
            "Key": {"pk": {"S": pk}},
            "UpdateExpression": expression,
            "ConditionExpression": "attribute_exists(pk)",
            "ExpressionAttributeValues": values,
        }
        if names:
            kwargs["ExpressionAttributeNames"] = names
        try:
            self._db.update_item(**kwargs)
        except ClientError as exc:
            if _failed_condition(exc):
                return False
            raise
        return True

    def register_instance(self, instance_id: str, address: str, agent_pid: int) -> None:
        self._update_instance(
            f"instance#{instance_id}",
            "SET address = :a, agent_pid = :p, last_heartbeat = :t",
            {":a": {"S": address}, ":p": {"N": str(agent_pid)}, ":t": {"N": str(time.time())}},
        )

    def heartbeat(self, instance_id: str) -> InstanceRecord | None:
        if not self._update_instance(
            f"instance#{instance_id}", "SET last_heartbeat = :t", {":t": {"N": str(time.time())}}
        ):
            return None
        return self.get_instance(instance_id)

    def remove_instance_if_idle(self, instance_id: str) -> bool:
        item = self._get(f"instance#{instance_id}")
        if item is None:
            return True
        try:
            self._delete_instance_item(item, condition="size(running_jobs) = :zero")
        except ClientError as exc:
            if _failed_condition(exc):
                return False
            raise
        return True

    def _delete_instance_item(self, item: dict[str, Any], condition: str | None = None) -> None:
        """Delete an instance and give its capacity back to the launch limit, atomically."""
        delete: dict[str, Any] = {"TableName": self._table, "Key": {"pk": {"S": item["pk"]}}}
        if condition:
            delete["ConditionExpression"] = condition
            delete["ExpressionAttributeValues"] = {":zero": {"N": "0"}}
        self._db.transact_write_items(
            TransactItems=[
                {"Delete": delete},
                {
                    "Update": {
                        "TableName": self._table,
                        "Key": {"pk": {"S": _LIMITS}},
                        "UpdateExpression": "SET cpu_used = cpu_used - :c, "
                        "memory_used = memory_used - :m",
                        "ExpressionAttributeValues": {
                            ":c": {"N": str(item["cpu_total"])},
                            ":m": {"N": str(item["memory_total"])},
                        },
                    }
                },
            ]
        )

    def remove_instance(self, instance_id: str, outcome: str) -> None:
        item = self._get(f"instance#{instance_id}")
        if item is None:
            return
        for job_id, job in list(item.get("running_jobs", {}).items()):
            self._deallocate(item, job_id, job, outcome)
        item = self._get(f"instance#{instance_id}")
        if item is not None:
            self._delete_instance_item(item)

    def remove_dead_instances(self) -> list[str]:
        now = time.time()
        dead = [
            r.instance_id
            for r in self.list_instances()
            if (r.address is not None and r.last_heartbeat < now - INSTANCE_DEAD_AFTER_SECONDS)
            or (r.address is None and r.created < now - self._launch_grace)
        ]
        for instance_id in dead:
            self.remove_instance(instance_id, "instance died")
        return dead

    def set_prevent_further_allocation(self, instance_id: str) -> None:
        self._update_instance(
            f"instance#{instance_id}", "SET prevent_further_allocation = :t", {":t": {"BOOL": True}}
        )

    def request_interruption(self, instance_id: str, delay_seconds: float) -> None:
        if not self._update_instance(
            f"instance#{instance_id}",
            "SET interruption_at = :t",
            {":t": {"N": str(time.time() + delay_seconds)}},
        ):
            raise KeyError(f"no instance {instance_id!r} in the allocation table")

    def get_instance(self, instance_id: str) -> InstanceRecord | None:
        item = self._get(f"instance#{instance_id}")
        return None if item is None else _instance(item)

    def list_instances(self) -> list[InstanceRecord]:
        return sorted((_instance(i) for i in self._kind("instance")), key=lambda r: r.created)

    def list_allocations(self, instance_id: str | None = None) -> list[AllocationRecord]:
        if instance_id is not None:
            item = self._get(f"instance#{instance_id}")
            records = _allocations(item) if item else []
        else:
            records = [a for item in self._kind("instance") for a in _allocations(item)]
        return sorted(records, key=lambda a: a.created)

    def job_history(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = [{**i, "job_id": i["pk"].removeprefix("history#")} for i in self._kind("history")]
        return sorted(rows, key=lambda r: r["ended"], reverse=True)[:limit]

    # --- keyed jobs -----------------------------------------------------------------------
    def claim_job_key(self, job_key: str, job_id: str, submitter: str = "") -> str | None:
        try:
            self._db.put_item(
                TableName=self._table,
                Item=_to_dynamo_item(
                    {
                        "pk": f"jobkey#{job_key}",
                        "job_id": job_id,
                        "status": "submitted",
                        "created": time.time(),
                        "submitter": submitter,
                    }
                ),
                ConditionExpression="attribute_not_exists(pk)",
            )
        except ClientError as exc:
            if not _failed_condition(exc):
                raise
            existing = self._get(f"jobkey#{job_key}")
            return str(existing["job_id"]) if existing else job_id
        return None

    def set_job_key_instance(self, job_key: str, job_id: str, instance_id: str) -> None:
        self._update_instance(
            f"jobkey#{job_key}",
            "SET job_id = :j, instance_id = :i, #s = :s",
            {":j": {"S": job_id}, ":i": {"S": instance_id}, ":s": {"S": "placed"}},
            {"#s": "status"},
        )

    def mark_job_key_started(self, job_key: str) -> None:
        try:
            self._db.update_item(
                TableName=self._table,
                Key={"pk": {"S": f"jobkey#{job_key}"}},
                UpdateExpression="SET #s = :running",
                ConditionExpression="attribute_exists(pk) AND #s <> :ended",
                ExpressionAttributeNames={"#s": "status"},
                ExpressionAttributeValues={":running": {"S": "running"}, ":ended": {"S": "ended"}},
            )
        except ClientError as exc:
            if not _failed_condition(exc):
                raise

    def record_job_final(self, job_key: str, final: str, payload_key: str | None) -> None:
        values: dict[str, Any] = {
            ":s": {"S": "ended"},
            ":f": {"S": final},
            ":e": {"N": str(time.time())},
            ":p": {"S": payload_key} if payload_key else {"NULL": True},
        }
        self._update_instance(
            f"jobkey#{job_key}",
            "SET #s = :s, #f = :f, #e = :e, #p = :p",
            values,
            {"#s": "status", "#f": "final", "#e": "ended", "#p": "payload_key"},
        )

    def get_job_key(self, job_key: str) -> dict[str, object] | None:
        item = self._get(f"jobkey#{job_key}")
        if item is None:
            return None
        return {
            "job_key": job_key,
            "job_id": item.get("job_id"),
            "instance_id": item.get("instance_id"),
            "status": item.get("status"),
            "final": item.get("final"),
            "payload_key": item.get("payload_key"),
            "submitter": item.get("submitter", ""),
        }

    def forget_job_key(self, job_key: str) -> bool:
        response = self._db.delete_item(
            TableName=self._table, Key={"pk": {"S": f"jobkey#{job_key}"}}, ReturnValues="ALL_OLD"
        )
        return "Attributes" in response

    # --- client leases --------------------------------------------------------------------
    def renew_lease(self, client_id: str, pid: int, lease_seconds: float) -> None:
        self._put(
            {"pk": f"client#{client_id}", "pid": pid, "lease_expires": time.time() + lease_seconds}
        )

    def lease_expiry(self, client_id: str) -> float | None:
        item = self._get(f"client#{client_id}")
        return None if item is None else float(item["lease_expires"])

    def release_lease(self, client_id: str) -> None:
        self._db.delete_item(TableName=self._table, Key={"pk": {"S": f"client#{client_id}"}})

    def allocations_with_expired_lease(self, instance_id: str) -> list[AllocationRecord]:
        now = time.time()
        expired = []
        for allocation in self.list_allocations(instance_id):
            client = self._get(f"client#{allocation.client_id}")
            if client is None or float(client["lease_expires"]) < now:
                expired.append(allocation)
        return expired

    def _put(self, item: dict[str, Any]) -> None:
        self._db.put_item(TableName=self._table, Item=_to_dynamo_item(item))


# --- DynamoDB's typed JSON ------------------------------------------------------------------
def _to_dynamo_value(value: Any) -> dict[str, Any]:
    if value is None:
        return {"NULL": True}
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, int | float | Decimal):
        return {"N": str(_num(value) if not isinstance(value, Decimal) else value)}
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, dict):
        return {"M": {k: _to_dynamo_value(v) for k, v in value.items()}}
    if isinstance(value, list | tuple):
        return {"L": [_to_dynamo_value(v) for v in value]}
    raise TypeError(f"cannot store {type(value).__name__} in DynamoDB: {json.dumps(str(value))}")


def _to_dynamo_item(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _to_dynamo_value(v) for k, v in item.items()}


def _from_dynamo_value(value: dict[str, Any]) -> Any:
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
        return {k: _from_dynamo_value(v) for k, v in raw.items()}
    if kind == "L":
        return [_from_dynamo_value(v) for v in raw]
    raise TypeError(f"unexpected DynamoDB type {kind}")


def _from_dynamo(item: dict[str, Any]) -> dict[str, Any]:
    return {k: _from_dynamo_value(v) for k, v in item.items()}
