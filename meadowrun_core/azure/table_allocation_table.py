"""``AllocationTable`` on Azure Table, with ETag optimistic concurrency instead of
transactions or conditional expressions.

A job's allocation lives inside its instance's entity (its ``running_jobs``), so placing a
job is one read-check-write of that entity: the write carries the ETag it read (``If-Match``)
and fails if anyone wrote in between, in which case the entity is read again and the room
checked again (``table_writes.modify``); racing clients therefore never over-allocate.
Launching charges the cloud-wide launch limit (the ``!limits`` row) and records the instance
in one entity group transaction, atomic because both live in the ``instance`` partition;
removing an instance gives its capacity back the same way. Entity shapes are in
``table_entities.py``, reads in ``table_reads.py``, keyed jobs and client leases in
``table_job_keys.py``, the priority raffle in ``table_raffle.py``.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

from azure.core.exceptions import ResourceExistsError
from azure.data.tables import TableTransactionError, UpdateMode

from meadowrun_core.azure.table_entities import (
    INSTANCE,
    LIMITS_ROW,
    get_json,
    history_entity,
    instance_record,
    job_entry,
    new_instance_entity,
    put_json,
    row_key,
)
from meadowrun_core.azure.table_job_keys import KeyedJobsAndLeases
from meadowrun_core.azure.table_raffle import RaffleEntries
from meadowrun_core.azure.table_reads import TableReads
from meadowrun_core.azure.table_writes import (
    MAX_CONFLICTS,
    conflict_pause,
    etag_of,
    if_unchanged,
    merge_if_present,
    modify,
)
from meadowrun_core.exceptions import BadInputError
from meadowrun_core.resources import Resources
from meadowrun_core.seams.allocation_table import (
    InstanceRecord,
    gpus_needed,
    room_fits,
    split_dead,
    takes_jobs,
)
from meadowrun_core.seams.instance_provider import InstanceType

log = logging.getLogger(__name__)

TABLE_NAME = "meadowrun"
_TABLE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]{2,62}")
# A VM may take minutes to boot, install meadowrun and register: a launching record older
# than this is considered dead.
VM_LAUNCH_GRACE_SECONDS = 600.0


def _amount(value: float) -> float:
    """Free room as stored: rounded, so that adding and taking back never drifts."""
    return round(value, 9)


class AzureTableAllocationTable(TableReads, KeyedJobsAndLeases, RaffleEntries):
    def __init__(
        self,
        table_service: Any,
        table_name: str = TABLE_NAME,
        launch_grace_seconds: float = VM_LAUNCH_GRACE_SECONDS,
    ) -> None:
        """``table_service``: an ``azure.data.tables.TableServiceClient``."""
        if not _TABLE_NAME.fullmatch(table_name):
            raise BadInputError(
                f"invalid Azure table name {table_name!r}: use 3 to 63 letters and digits, "
                "starting with a letter"
            )
        self._service = table_service
        self._table = table_name
        self._client = table_service.get_table_client(table_name)
        self._launch_grace = launch_grace_seconds

    def create(self) -> bool:
        """Create the table if it does not exist; whether this call did."""
        try:
            self._service.create_table(self._table)
        except ResourceExistsError:
            return False
        return True

    # --- allocation -----------------------------------------------------------------------
    def allocate_on_existing(
        self, job_ids: list[str], resources: Resources, client_id: str, description: str
    ) -> dict[str, str]:
        placed = self.place_on_existing(job_ids, resources, client_id, description)
        return {job_id: record.instance_id for job_id, record in placed.items()}

    def place_on_existing(
        self, job_ids: list[str], resources: Resources, client_id: str, description: str
    ) -> dict[str, InstanceRecord]:
        """One query for the instances, then one ETag-checked write per job placed (more on
        a conflict); the entity written is the next job's starting point, so jobs placed on
        one instance cost no re-read."""
        placed: dict[str, InstanceRecord] = {}
        now = time.time()
        for entity in self._instances():
            record = instance_record(entity)
            if not takes_jobs(record, resources, now):
                continue
            current = entity
            for job_id in job_ids:
                if job_id in placed:
                    continue
                current = self._try_allocate(
                    current, job_id, resources, client_id, description, now
                )
                if current is None:
                    break  # full (as read again after any conflict): the next instance
                placed[job_id] = instance_record(current)
            if len(placed) == len(job_ids):
                break
        return placed

    def _try_allocate(
        self,
        entity: Any,
        job_id: str,
        resources: Resources,
        client_id: str,
        description: str,
        now: float,
    ) -> Any:
        gpus = gpus_needed(resources)
        custom = dict(resources.custom or {})

        def take_room(current: Any) -> dict[str, Any] | None:
            record = instance_record(current)
            jobs = get_json(current, "running_jobs", {})
            if (
                record.prevent_further_allocation
                or job_id in jobs
                or not room_fits(
                    resources,
                    record.cpu_free,
                    record.memory_free,
                    record.gpus_free,
                    record.custom_free,
                )
            ):
                return None
            jobs[job_id] = job_entry(client_id, resources, now, description)
            updates: dict[str, Any] = {
                "cpu_free": _amount(record.cpu_free - resources.logical_cpu),
                "memory_free": _amount(record.memory_free - resources.memory_gb),
            }
            if gpus:
                updates["gpus_free"] = _amount(record.gpus_free - gpus)
            if custom:
                free = dict(record.custom_free)
                put_json(
                    updates,
                    "custom_free",
                    {k: _amount(v - custom.get(k, 0.0)) for k, v in free.items()},
                )
            return put_json(updates, "running_jobs", jobs)

        written, _ = modify(self._client, entity, take_room)
        return written

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
        entity = new_instance_entity(
            instance_id, instance_type, job_ids, resources, client_id, description, now
        )
        cpu, memory = float(instance_type.logical_cpu), float(instance_type.memory_gb)
        if cpu > max_cpu or memory > max_memory_gb:
            return False  # past the limit even on an account with nothing running
        for conflicts in range(1, MAX_CONFLICTS + 1):
            limits = self._get(INSTANCE, LIMITS_ROW)
            cpu_used = float(limits["cpu_used"]) if limits is not None else 0.0
            memory_used = float(limits["memory_used"]) if limits is not None else 0.0
            if cpu_used + cpu > max_cpu + 1e-9 or memory_used + memory > max_memory_gb + 1e-9:
                return False
            counter = {
                "PartitionKey": INSTANCE,
                "RowKey": LIMITS_ROW,
                "cpu_used": _amount(cpu_used + cpu),
                "memory_used": _amount(memory_used + memory),
            }
            charge: tuple[Any, ...] = (
                ("create", counter)  # the account's first launch creates the counter
                if limits is None
                else (
                    "update",
                    counter,
                    {"mode": UpdateMode.MERGE, "etag": etag_of(limits), **if_unchanged()},
                )
            )
            try:
                self._client.submit_transaction([charge, ("create", entity)])
            except TableTransactionError as exc:
                if exc.index == 1 and exc.status_code == 409:
                    return False  # this instance id is recorded already
                if exc.index != 0 or exc.status_code not in (409, 412):
                    raise
                conflict_pause(conflicts)  # another launch charged the limit first
                continue
            return True
        log.warning("gave up recording instance %s after %d conflicts", instance_id, conflicts)
        return False

    def deallocate(self, job_id: str, outcome: str) -> bool:
        entity = self._instance_holding(job_id)
        return entity is not None and self._deallocate(entity, job_id, outcome) is not None

    def _deallocate(self, entity: Any, job_id: str, outcome: str) -> Any:
        """Free ``job_id``'s room and record its history: the instance entity as written, or
        None if the job was not there (someone else freed it first)."""
        freed: dict[str, Any] = {}

        def give_back(current: Any) -> dict[str, Any] | None:
            jobs = get_json(current, "running_jobs", {})
            job = jobs.pop(job_id, None)
            if job is None:
                return None
            freed.clear()
            freed.update(job)
            updates: dict[str, Any] = {
                "cpu_free": _amount(float(current["cpu_free"]) + float(job["cpu"])),
                "memory_free": _amount(float(current["memory_free"]) + float(job["memory_gb"])),
            }
            if float(job.get("gpus", 0.0)):
                gpus_free = float(current.get("gpus_free", 0.0))
                updates["gpus_free"] = _amount(gpus_free + float(job["gpus"]))
            if job.get("custom"):
                free = get_json(current, "custom_free", {})
                for key, amount in job["custom"].items():
                    free[key] = _amount(float(free.get(key, 0.0)) + float(amount))
                put_json(updates, "custom_free", free)
            return put_json(updates, "running_jobs", jobs)

        written, _ = modify(self._client, entity, give_back)
        if written is not None:
            history = history_entity(job_id, written, freed, outcome, time.time())
            self._client.upsert_entity(history, mode=UpdateMode.REPLACE)
        return written

    def set_worker_pid(self, job_id: str, pid: int) -> None:
        entity = self._instance_holding(job_id)

        def set_pid(current: Any) -> dict[str, Any] | None:
            jobs = get_json(current, "running_jobs", {})
            if job_id not in jobs:
                return None
            jobs[job_id]["worker_pid"] = pid
            return put_json({}, "running_jobs", jobs)

        if entity is not None:
            modify(self._client, entity, set_pid)

    # --- instances ------------------------------------------------------------------------
    def _set(self, instance_id: str, updates: dict[str, Any]) -> bool:
        return merge_if_present(self._client, INSTANCE, row_key(instance_id), updates)

    def register_instance(self, instance_id: str, address: str, agent_pid: int) -> None:
        self._set(
            instance_id,
            {"address": address, "agent_pid": float(agent_pid), "last_heartbeat": time.time()},
        )

    def heartbeat(self, instance_id: str) -> InstanceRecord | None:
        if not self._set(instance_id, {"last_heartbeat": time.time()}):
            return None
        return self.get_instance(instance_id)

    def remove_instance_if_idle(self, instance_id: str) -> bool:
        for conflicts in range(1, MAX_CONFLICTS + 1):
            entity = self._get(INSTANCE, row_key(instance_id))
            if entity is None:
                return True
            if get_json(entity, "running_jobs", {}):
                return False
            if self._delete_instance(entity):
                return True
            conflict_pause(conflicts)  # it changed since read: look again
        return False

    def _delete_instance(self, entity: Any) -> bool:
        """Delete an instance entity, if unchanged since read, and give its capacity back to
        the launch limit, atomically; False if the instance changed (or went) meanwhile."""
        for conflicts in range(1, MAX_CONFLICTS + 1):
            operations: list[tuple[Any, ...]] = [
                ("delete", entity, {"etag": etag_of(entity), **if_unchanged()})
            ]
            limits = self._get(INSTANCE, LIMITS_ROW)
            if limits is not None:
                counter = {
                    "PartitionKey": INSTANCE,
                    "RowKey": LIMITS_ROW,
                    "cpu_used": _amount(float(limits["cpu_used"]) - float(entity["cpu_total"])),
                    "memory_used": _amount(
                        float(limits["memory_used"]) - float(entity["memory_total"])
                    ),
                }
                options = {"mode": UpdateMode.MERGE, "etag": etag_of(limits), **if_unchanged()}
                operations.append(("update", counter, options))
            try:
                self._client.submit_transaction(operations)
            except TableTransactionError as exc:
                if exc.index == 0 and exc.status_code in (404, 412):
                    return False
                if exc.index != 1 or exc.status_code != 412:
                    raise
                conflict_pause(conflicts)  # a launch charged the limit meanwhile
                continue
            return True
        return False

    def remove_instance(self, instance_id: str, outcome: str) -> None:
        """Free every job on the instance (their history kept), then delete it; jobs placed
        on it meanwhile are freed too."""
        for conflicts in range(1, MAX_CONFLICTS + 1):
            entity = self._get(INSTANCE, row_key(instance_id))
            if entity is None:
                return
            jobs = list(get_json(entity, "running_jobs", {}))
            for job_id in jobs:
                entity = self._deallocate(entity, job_id, outcome) or entity
            if not jobs and self._delete_instance(entity):
                return
            if not jobs:
                conflict_pause(conflicts)
        log.warning("gave up removing instance %s after %d conflicts", instance_id, conflicts)

    def remove_dead_instances(self) -> tuple[list[str], list[InstanceRecord]]:
        dead, alive = split_dead(self.list_instances(), time.time(), self._launch_grace)
        for instance_id in dead:
            self.remove_instance(instance_id, "instance died")
        return dead, alive

    def set_prevent_further_allocation(self, instance_id: str) -> None:
        self._set(instance_id, {"prevent_further_allocation": True})

    def request_interruption(self, instance_id: str, delay_seconds: float) -> None:
        if not self._set(instance_id, {"interruption_at": time.time() + delay_seconds}):
            raise KeyError(f"no instance {instance_id!r} in the allocation table")
