"""Reading the DynamoDB allocation table: items by key, by kind (the sparse index) or by
scan, and the queries that only read (instances, allocations, job history), apart from the
conditional writes that change them."""

from __future__ import annotations

from typing import Any

from meadowrun_core.aws.dynamodb_items import allocation_records, from_dynamo, instance_record
from meadowrun_core.aws.dynamodb_schema import BY_KIND
from meadowrun_core.seams.allocation_table import AllocationRecord, InstanceRecord


class TableReads:
    """Mixed into ``DynamoDbAllocationTable``, which sets ``_db`` and ``_table``."""

    _db: Any
    _table: str

    # --- items ----------------------------------------------------------------------------
    def _get(self, pk: str) -> dict[str, Any] | None:
        response = self._db.get_item(
            TableName=self._table, Key={"pk": {"S": pk}}, ConsistentRead=True
        )
        item = response.get("Item")
        return None if item is None else from_dynamo(item)

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
            items.extend(from_dynamo(item) for item in page["Items"])
        return items

    def _kind(self, kind: str) -> list[dict[str, Any]]:
        """Every item of one kind (instance, history) from the sparse index on ``kind``: a
        Query that reads only those items, not the whole table. Index reads are eventually
        consistent; callers that must see the latest state re-read the item by key."""
        items: list[dict[str, Any]] = []
        paginator = self._db.get_paginator("query")
        for page in paginator.paginate(
            TableName=self._table,
            IndexName=BY_KIND,
            KeyConditionExpression="#k = :k",
            ExpressionAttributeNames={"#k": "kind"},
            ExpressionAttributeValues={":k": {"S": kind}},
        ):
            items.extend(from_dynamo(item) for item in page["Items"])
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

    # --- queries --------------------------------------------------------------------------
    def get_instance(self, instance_id: str) -> InstanceRecord | None:
        item = self._get(f"instance#{instance_id}")
        return None if item is None else instance_record(item)

    def list_instances(self) -> list[InstanceRecord]:
        return sorted((instance_record(i) for i in self._kind("instance")), key=lambda r: r.created)

    def list_allocations(self, instance_id: str | None = None) -> list[AllocationRecord]:
        if instance_id is not None:
            item = self._get(f"instance#{instance_id}")
            records = allocation_records(item) if item else []
        else:
            records = [a for item in self._kind("instance") for a in allocation_records(item)]
        return sorted(records, key=lambda a: a.created)

    def job_history(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = [{**i, "job_id": i["pk"].removeprefix("history#")} for i in self._kind("history")]
        return sorted(rows, key=lambda r: r["ended"], reverse=True)[:limit]

    def finished_job(self, job_id: str) -> dict[str, Any] | None:
        item = self._get(f"history#{job_id}")
        return None if item is None else {**item, "job_id": job_id}
