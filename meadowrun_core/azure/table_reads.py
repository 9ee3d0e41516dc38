"""Reading the Azure Table allocation table: entities by key or by partition (one partition
per record kind, read consistently), and the queries that only read (instances,
allocations, job history), apart from the ETag-checked writes that change them."""

from __future__ import annotations

from typing import Any

from azure.core.exceptions import ResourceNotFoundError

from meadowrun_core.azure.table_entities import (
    HISTORY,
    INSTANCE,
    LIMITS_ROW,
    allocation_records,
    get_json,
    instance_record,
    plain,
    row_key,
)
from meadowrun_core.seams.allocation_table import AllocationRecord, InstanceRecord


class TableReads:
    """Mixed into ``AzureTableAllocationTable``, which sets ``_client`` (a TableClient)."""

    _client: Any

    # --- entities -------------------------------------------------------------------------
    def _get(self, partition: str, row: str) -> Any:
        """The entity (a ``TableEntity``, its ETag in ``metadata["etag"]``) or None."""
        try:
            return self._client.get_entity(partition, row)
        except ResourceNotFoundError:
            return None

    def _partition(self, partition: str) -> list[Any]:
        """Every entity of one partition (one record kind), across all pages."""
        return list(self._client.query_entities("PartitionKey eq @p", parameters={"p": partition}))

    def _instances(self) -> list[Any]:
        return [e for e in self._partition(INSTANCE) if e["RowKey"] != LIMITS_ROW]

    def _instance_holding(self, job_id: str) -> Any:
        """The instance entity whose running jobs include ``job_id``, or None."""
        for entity in self._instances():
            if job_id in get_json(entity, "running_jobs", {}):
                return entity
        return None

    # --- queries --------------------------------------------------------------------------
    def get_instance(self, instance_id: str) -> InstanceRecord | None:
        entity = self._get(INSTANCE, row_key(instance_id))
        return None if entity is None else instance_record(entity)

    def list_instances(self) -> list[InstanceRecord]:
        return sorted((instance_record(e) for e in self._instances()), key=lambda r: r.created)

    def list_allocations(self, instance_id: str | None = None) -> list[AllocationRecord]:
        if instance_id is not None:
            entity = self._get(INSTANCE, row_key(instance_id))
            records = allocation_records(entity) if entity is not None else []
        else:
            records = [a for e in self._instances() for a in allocation_records(e)]
        return sorted(records, key=lambda a: a.created)

    def job_history(self, limit: int = 100) -> list[dict[str, Any]]:
        rows = [plain(e) for e in self._partition(HISTORY)]
        return sorted(rows, key=lambda r: r["ended"], reverse=True)[:limit]

    def finished_job(self, job_id: str) -> dict[str, Any] | None:
        entity = self._get(HISTORY, row_key(job_id))
        return None if entity is None else plain(entity)
