"""Keyed jobs and client leases in the DynamoDB allocation table (``jobkey#`` and
``client#`` items), apart from instance allocation."""

from __future__ import annotations

import time
from typing import Any

from botocore.exceptions import ClientError

from meadowrun_core.aws.dynamodb_items import (
    failed_condition,
    to_dynamo_item,
)
from meadowrun_core.seams.allocation_table import AllocationRecord


class KeyedJobsAndLeases:
    """Mixed into ``DynamoDbAllocationTable``, which provides the helpers used here."""

    _db: Any
    _table: str

    def _get(self, pk: str) -> dict[str, Any] | None:
        raise NotImplementedError

    def _put(self, item: dict[str, Any]) -> None:
        raise NotImplementedError

    def _update_instance(
        self,
        pk: str,
        expression: str,
        values: dict[str, Any],
        names: dict[str, str] | None = None,
    ) -> bool:
        raise NotImplementedError

    def list_allocations(self, instance_id: str | None = None) -> list[AllocationRecord]:
        raise NotImplementedError

    # --- keyed jobs -----------------------------------------------------------------------
    def claim_job_key(self, job_key: str, job_id: str, submitter: str = "") -> str | None:
        try:
            self._db.put_item(
                TableName=self._table,
                Item=to_dynamo_item(
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
            if not failed_condition(exc):
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
            if not failed_condition(exc):
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

    def find_job_key(self, job_id: str) -> dict[str, object] | None:
        """A scan (job-key items are not indexed by job id): for ``meadowrun logs``, rare."""
        paginator = self._db.get_paginator("scan")
        for page in paginator.paginate(
            TableName=self._table,
            FilterExpression="begins_with(pk, :p) AND job_id = :j",
            ExpressionAttributeValues={":p": {"S": "jobkey#"}, ":j": {"S": job_id}},
            ProjectionExpression="pk",
        ):
            for item in page["Items"]:
                return self.get_job_key(item["pk"]["S"].removeprefix("jobkey#"))
        return None

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
