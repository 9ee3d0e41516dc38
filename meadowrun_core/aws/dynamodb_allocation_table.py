"""``AllocationTable`` on DynamoDB, with conditional writes instead of transactions.

One table holds every record, told apart by the ``pk`` prefix: ``instance#``, ``client#``,
``history#``, ``jobkey#``, ``raffle#`` and the single ``limits`` item. A job's allocation
lives inside its instance's item (``running_jobs`` map), so placing it is one conditional
``update_item`` that checks and subtracts the free capacity atomically, as Meadowrun did;
launching an instance is one transaction that also charges the cloud-wide launch limit. The
table's shape is ``dynamodb_schema.py``, its reads ``dynamodb_reads.py``, keyed jobs and
client leases ``dynamodb_job_keys.py``, and its items ``dynamodb_items.py``.
"""

from __future__ import annotations

import time
from typing import Any

from botocore.exceptions import ClientError

from meadowrun_core.aws import names
from meadowrun_core.aws.dynamodb_items import (
    failed_condition,
    from_dynamo,
    history_item,
    instance_record,
    job_entry,
    new_instance_item,
    to_dynamo_item,
    to_dynamo_value,
)
from meadowrun_core.aws.dynamodb_job_keys import KeyedJobsAndLeases
from meadowrun_core.aws.dynamodb_raffle import RaffleEntries
from meadowrun_core.aws.dynamodb_reads import TableReads
from meadowrun_core.aws.dynamodb_schema import create_table
from meadowrun_core.resources import Resources
from meadowrun_core.seams.allocation_table import (
    InstanceRecord,
    gpus_needed,
    room_fits,
    split_dead,
    takes_jobs,
)
from meadowrun_core.seams.instance_provider import InstanceType

_LIMITS = "limits"

# An EC2 instance may take minutes to boot, install meadowrun and register (the local
# cloud's agents take a second): a launching record older than this is considered dead.
EC2_LAUNCH_GRACE_SECONDS = 600.0


class DynamoDbAllocationTable(TableReads, KeyedJobsAndLeases, RaffleEntries):
    def __init__(
        self,
        dynamodb: Any,
        table_name: str = names.TABLE_NAME,
        launch_grace_seconds: float = EC2_LAUNCH_GRACE_SECONDS,
    ) -> None:
        self._db = dynamodb
        self._table = table_name
        self._launch_grace = launch_grace_seconds

    def create(self) -> bool:
        """Create the table if it does not exist; whether this call did."""
        return create_table(self._db, self._table)

    # --- allocation -----------------------------------------------------------------------
    def allocate_on_existing(
        self, job_ids: list[str], resources: Resources, client_id: str, description: str
    ) -> dict[str, str]:
        placed = self.place_on_existing(job_ids, resources, client_id, description)
        return {job_id: record.instance_id for job_id, record in placed.items()}

    def place_on_existing(
        self, job_ids: list[str], resources: Resources, client_id: str, description: str
    ) -> dict[str, InstanceRecord]:
        """One Query for the instances, then one conditional update per job placed (which
        re-checks the room atomically and answers with the instance's new state)."""
        placed: dict[str, InstanceRecord] = {}
        now = time.time()
        for record in self.list_instances():
            if not takes_jobs(record, resources, now):
                continue
            current: InstanceRecord | None = record
            for job_id in job_ids:
                if job_id in placed:
                    continue
                if current is None or not room_fits(
                    resources,
                    current.cpu_free,
                    current.memory_free,
                    current.gpus_free,
                    current.custom_free,
                ):
                    break  # full as far as the index knows: the next instance
                current = self._try_allocate(
                    record.instance_id, job_id, resources, client_id, description, now
                )
                if current is None:
                    break  # full (or changed under us): the next instance
                placed[job_id] = current
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
    ) -> InstanceRecord | None:
        gpus = gpus_needed(resources)
        custom = dict(resources.custom or {})
        job = to_dynamo_value(job_entry(client_id, resources, now, description))
        sets = [
            "cpu_free = cpu_free - :c",
            "memory_free = memory_free - :m",
            "running_jobs.#j = :job",
        ]
        conditions = [
            "cpu_free >= :c",
            "memory_free >= :m",
            "prevent_further_allocation = :f",
            "attribute_not_exists(running_jobs.#j)",
        ]
        names: dict[str, str] = {"#j": job_id}
        values: dict[str, Any] = {
            ":c": {"N": str(resources.logical_cpu)},
            ":m": {"N": str(resources.memory_gb)},
            ":f": {"BOOL": False},
            ":job": job,
        }
        if gpus:
            sets.append("gpus_free = gpus_free - :g")
            conditions.append("gpus_free >= :g")
            values[":g"] = {"N": str(gpus)}
        for i, (key, amount) in enumerate(sorted(custom.items())):
            names[f"#c{i}"] = key
            values[f":c{i}"] = {"N": str(amount)}
            sets.append(f"custom_free.#c{i} = custom_free.#c{i} - :c{i}")
            conditions.append(f"custom_free.#c{i} >= :c{i}")
        try:
            response = self._db.update_item(
                TableName=self._table,
                Key={"pk": {"S": f"instance#{instance_id}"}},
                UpdateExpression="SET " + ", ".join(sets),
                ConditionExpression=" AND ".join(conditions),
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
                ReturnValues="ALL_NEW",
            )
        except ClientError as exc:
            if failed_condition(exc):
                return None
            raise
        return instance_record(from_dynamo(response["Attributes"]))

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
        item = new_instance_item(
            instance_id, instance_type, job_ids, resources, client_id, description, now
        )
        if instance_type.logical_cpu > max_cpu or instance_type.memory_gb > max_memory_gb:
            return False  # past the limit even on an account with nothing running
        try:
            self._db.transact_write_items(
                TransactItems=[
                    {  # the account's launch counter, created by the first launch
                        "Update": {
                            "TableName": self._table,
                            "Key": {"pk": {"S": _LIMITS}},
                            "UpdateExpression": "SET cpu_used = if_not_exists(cpu_used, :zero) "
                            "+ :c, memory_used = if_not_exists(memory_used, :zero) + :m",
                            "ConditionExpression": "attribute_not_exists(cpu_used) OR "
                            "(cpu_used <= :max_c AND memory_used <= :max_m)",
                            "ExpressionAttributeValues": {
                                ":zero": {"N": "0"},
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
                            "Item": to_dynamo_item(item),
                            "ConditionExpression": "attribute_not_exists(pk)",
                        }
                    },
                ]
            )
        except ClientError as exc:
            if failed_condition(exc):
                return False
            raise
        return True

    def deallocate(self, job_id: str, outcome: str) -> bool:
        item = self._instance_holding(job_id)
        if item is None:
            return False
        return self._deallocate(item, job_id, item["running_jobs"][job_id], outcome)

    def _deallocate(
        self, item: dict[str, Any], job_id: str, job: dict[str, Any], outcome: str
    ) -> bool:
        sets = ["cpu_free = cpu_free + :c", "memory_free = memory_free + :m"]
        names: dict[str, str] = {"#j": job_id}
        values: dict[str, Any] = {
            ":c": {"N": str(job["cpu"])},
            ":m": {"N": str(job["memory_gb"])},
        }
        if float(job.get("gpus", 0)):
            sets.append("gpus_free = gpus_free + :g")
            values[":g"] = {"N": str(job["gpus"])}
        for i, (key, amount) in enumerate(sorted(job.get("custom", {}).items())):
            names[f"#c{i}"] = key
            values[f":c{i}"] = {"N": str(amount)}
            sets.append(f"custom_free.#c{i} = custom_free.#c{i} + :c{i}")
        try:
            self._db.update_item(
                TableName=self._table,
                Key={"pk": {"S": item["pk"]}},
                UpdateExpression="SET " + ", ".join(sets) + " REMOVE running_jobs.#j",
                ConditionExpression="attribute_exists(running_jobs.#j)",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
            )
        except ClientError as exc:
            if failed_condition(exc):
                return False  # someone else freed it first
            raise
        self._put(history_item(job_id, item, job, outcome, time.time()))
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
            if failed_condition(exc):
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
            if failed_condition(exc):
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

    def remove_dead_instances(self) -> tuple[list[str], list[InstanceRecord]]:
        dead, alive = split_dead(self.list_instances(), time.time(), self._launch_grace)
        for instance_id in dead:
            self.remove_instance(instance_id, "instance died")
        return dead, alive

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

    def _put(self, item: dict[str, Any]) -> None:
        self._db.put_item(TableName=self._table, Item=to_dynamo_item(item))
