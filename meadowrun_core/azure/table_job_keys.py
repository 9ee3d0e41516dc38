"""Keyed jobs and client leases in the Azure Table allocation table (the ``jobkey`` and
``client`` partitions), apart from instance allocation."""

from __future__ import annotations

import time
from typing import Any

from azure.core.exceptions import ResourceExistsError
from azure.data.tables import UpdateMode

from meadowrun_core.azure.table_entities import CLIENT, JOB_KEY, row_key
from meadowrun_core.azure.table_writes import merge_if_present, modify
from meadowrun_core.seams.allocation_table import AllocationRecord


class KeyedJobsAndLeases:
    """Mixed into ``AzureTableAllocationTable``, which sets ``_client`` and the reads."""

    _client: Any

    def _get(self, partition: str, row: str) -> Any:
        raise NotImplementedError

    def list_allocations(self, instance_id: str | None = None) -> list[AllocationRecord]:
        raise NotImplementedError

    # --- keyed jobs -----------------------------------------------------------------------
    def claim_job_key(self, job_key: str, job_id: str, submitter: str = "") -> str | None:
        entity = {
            "PartitionKey": JOB_KEY,
            "RowKey": row_key(job_key),
            "job_key": job_key,
            "job_id": job_id,
            "status": "submitted",
            "created": time.time(),
            "submitter": submitter,
        }
        try:
            self._client.create_entity(entity)
        except ResourceExistsError:
            existing = self._get(JOB_KEY, row_key(job_key))
            return str(existing["job_id"]) if existing is not None else job_id
        return None

    def set_job_key_instance(self, job_key: str, job_id: str, instance_id: str) -> None:
        merge_if_present(
            self._client,
            JOB_KEY,
            row_key(job_key),
            {"job_id": job_id, "instance_id": instance_id, "status": "placed"},
        )

    def mark_job_key_started(self, job_key: str) -> None:
        """Running, unless it has ended already (a late start notice never reopens a job)."""
        entity = self._get(JOB_KEY, row_key(job_key))
        if entity is not None:
            modify(
                self._client,
                entity,
                lambda e: None if e.get("status") == "ended" else {"status": "running"},
            )

    def record_job_final(self, job_key: str, final: str, payload_key: str | None) -> None:
        updates: dict[str, Any] = {"status": "ended", "final": final, "ended": time.time()}
        updates["payload_key"] = payload_key or ""
        merge_if_present(self._client, JOB_KEY, row_key(job_key), updates)

    def get_job_key(self, job_key: str) -> dict[str, object] | None:
        entity = self._get(JOB_KEY, row_key(job_key))
        return None if entity is None else _job_key_row(job_key, entity)

    def find_job_key(self, job_id: str) -> dict[str, object] | None:
        """A query of the job-key partition by job id (not a key): for ``meadowrun logs``."""
        for entity in self._client.query_entities(
            "PartitionKey eq @p and job_id eq @j", parameters={"p": JOB_KEY, "j": job_id}
        ):
            return _job_key_row(entity["job_key"], entity)
        return None

    def forget_job_key(self, job_key: str) -> bool:
        entity = self._get(JOB_KEY, row_key(job_key))
        if entity is None:
            return False
        self._client.delete_entity(JOB_KEY, row_key(job_key))
        return True

    # --- client leases --------------------------------------------------------------------
    def renew_lease(self, client_id: str, pid: int, lease_seconds: float) -> None:
        entity = {
            "PartitionKey": CLIENT,
            "RowKey": row_key(client_id),
            "pid": float(pid),
            "lease_expires": time.time() + lease_seconds,
        }
        self._client.upsert_entity(entity, mode=UpdateMode.REPLACE)

    def lease_expiry(self, client_id: str) -> float | None:
        entity = self._get(CLIENT, row_key(client_id))
        return None if entity is None else float(entity["lease_expires"])

    def release_lease(self, client_id: str) -> None:
        self._client.delete_entity(CLIENT, row_key(client_id))

    def allocations_with_expired_lease(self, instance_id: str) -> list[AllocationRecord]:
        now = time.time()
        expired = []
        for allocation in self.list_allocations(instance_id):
            expiry = self.lease_expiry(allocation.client_id)
            if expiry is None or expiry < now:
                expired.append(allocation)
        return expired


def _job_key_row(job_key: str, entity: Any) -> dict[str, object]:
    return {
        "job_key": job_key,
        "job_id": entity.get("job_id"),
        "instance_id": entity.get("instance_id"),
        "status": entity.get("status"),
        "final": entity.get("final"),
        "payload_key": entity.get("payload_key") or None,
        "submitter": entity.get("submitter", ""),
    }
