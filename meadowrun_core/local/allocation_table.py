"""The allocation table of the local cloud, in SQLite.

Every read-check-write runs inside ``BEGIN IMMEDIATE``, the SQLite equivalent of DynamoDB's
conditional writes: two clients can never both take the last free CPU of an instance. The
schema is in ``allocation_schema.py``, the read-only queries in ``allocation_records.py``, keyed
jobs and client leases in ``allocation_job_keys.py``.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from meadowrun_core.local.allocation_job_keys import KeyedJobsAndLeases
from meadowrun_core.local.allocation_raffle import RaffleEntries
from meadowrun_core.local.allocation_records import TableReads, instance_from_row
from meadowrun_core.local.allocation_schema import open_allocation_db
from meadowrun_core.resources import Resources
from meadowrun_core.seams.allocation_table import (
    INSTANCE_DEAD_AFTER_SECONDS,
    LAUNCH_GRACE_SECONDS,
    InstanceRecord,
    gpus_needed,
    instance_suits,
    normalize_flags,
    room_fits,
)
from meadowrun_core.seams.instance_provider import InstanceType


@dataclass
class _Room:
    """An instance's free room while one transaction places jobs on it."""

    cpu: float
    memory: float
    gpus: float
    custom: dict[str, float]

    def take(self, resources: Resources) -> None:
        self.cpu -= resources.logical_cpu
        self.memory -= resources.memory_gb
        self.gpus -= gpus_needed(resources)
        for key, amount in (resources.custom or {}).items():
            self.custom[key] = self.custom.get(key, 0.0) - amount


def _add_custom(
    conn: sqlite3.Connection, instance_id: str, amounts: dict[str, float], sign: int
) -> None:
    """Take (sign -1) or give back (+1) custom resources, inside the caller's transaction."""
    row = conn.execute(
        "SELECT custom_free FROM instances WHERE instance_id = ?", (instance_id,)
    ).fetchone()
    if row is None:
        return
    free = json.loads(row["custom_free"])
    for key, amount in amounts.items():
        free[key] = free.get(key, 0.0) + sign * amount
    conn.execute(
        "UPDATE instances SET custom_free = ? WHERE instance_id = ?",
        (json.dumps(free), instance_id),
    )


class SqliteAllocationTable(TableReads, KeyedJobsAndLeases, RaffleEntries):
    """``AllocationTable`` for one ``MEADOWRUN_HOME``, shared by every process using it."""

    def __init__(self, path: Path) -> None:
        self._db = open_allocation_db(path)

    # --- allocation -------------------------------------------------------------------
    def allocate_on_existing(
        self, job_ids: list[str], resources: Resources, client_id: str, description: str
    ) -> dict[str, str]:
        placed = self.place_on_existing(job_ids, resources, client_id, description)
        return {job_id: record.instance_id for job_id, record in placed.items()}

    def place_on_existing(
        self, job_ids: list[str], resources: Resources, client_id: str, description: str
    ) -> dict[str, InstanceRecord]:
        placed: dict[str, str] = {}
        now = time.time()
        with self._db.transaction() as conn:
            rows = conn.execute(
                "SELECT *, (SELECT COUNT(*) FROM allocations a "
                "WHERE a.instance_id = i.instance_id) AS n FROM instances i "
                "WHERE address IS NOT NULL AND prevent_further_allocation = 0 "
                "AND last_heartbeat > ? AND cpu_free >= ? AND memory_free >= ? AND gpus_free >= ?",
                (
                    now - INSTANCE_DEAD_AFTER_SECONDS,
                    resources.logical_cpu,
                    resources.memory_gb,
                    gpus_needed(resources),
                ),
            ).fetchall()
            records = {
                record.instance_id: record
                for record in (instance_from_row(r, r["n"]) for r in rows)
                if instance_suits(record, resources)
            }
            free = {
                iid: _Room(r.cpu_free, r.memory_free, r.gpus_free, dict(r.custom_free))
                for iid, r in records.items()
            }
            for job_id in job_ids:
                fitting = [
                    (iid, room)
                    for iid, room in free.items()
                    if room_fits(resources, room.cpu, room.memory, room.gpus, room.custom)
                ]
                if not fitting:
                    break
                # best fit: the instance left with the least spare room, as Meadowrun does
                iid, room = min(
                    fitting,
                    key=lambda f: (
                        (f[1].cpu - resources.logical_cpu) * 2 + (f[1].memory - resources.memory_gb)
                    ),
                )
                room.take(resources)
                self._insert_allocation(conn, job_id, iid, client_id, resources, description, now)
                placed[job_id] = iid
        # each instance's state after this transaction, without reading it again
        jobs_placed = Counter(placed.values())
        after = {
            iid: replace(
                records[iid],
                cpu_free=free[iid].cpu,
                memory_free=free[iid].memory,
                gpus_free=free[iid].gpus,
                custom_free=dict(free[iid].custom),
                running_jobs=records[iid].running_jobs + count,
            )
            for iid, count in jobs_placed.items()
        }
        return {job_id: after[iid] for job_id, iid in placed.items()}

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
        with self._db.transaction() as conn:
            used_cpu, used_mem = conn.execute(
                "SELECT COALESCE(SUM(cpu_total), 0), COALESCE(SUM(memory_total), 0) FROM instances"
            ).fetchone()
            if (
                used_cpu + instance_type.logical_cpu > max_cpu + 1e-9
                or used_mem + instance_type.memory_gb > max_memory_gb + 1e-9
            ):
                return False
            custom = json.dumps(dict(instance_type.custom))
            conn.execute(
                "INSERT INTO instances (instance_id, instance_type, cpu_total, memory_total, "
                "cpu_free, memory_free, price_per_hour, created, last_heartbeat, gpus_total, "
                "gpus_free, gpu_memory_gb, flags, arch, is_spot, interruption_probability, "
                "custom_total, custom_free) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    instance_id,
                    instance_type.name,
                    instance_type.logical_cpu,
                    instance_type.memory_gb,
                    instance_type.logical_cpu,
                    instance_type.memory_gb,
                    instance_type.price_per_hour,
                    now,
                    now,
                    instance_type.gpus,
                    instance_type.gpus,
                    instance_type.gpu_memory_gb,
                    json.dumps(list(normalize_flags(instance_type.flags))),
                    instance_type.arch,
                    int(instance_type.is_spot),
                    instance_type.interruption_probability,
                    custom,
                    custom,
                ),
            )
            for job_id in job_ids:
                self._insert_allocation(
                    conn, job_id, instance_id, client_id, resources, description, now
                )
        return True

    @staticmethod
    def _insert_allocation(
        conn: sqlite3.Connection,
        job_id: str,
        instance_id: str,
        client_id: str,
        resources: Resources,
        description: str,
        now: float,
    ) -> None:
        gpus = gpus_needed(resources)
        custom = dict(resources.custom or {})
        conn.execute(
            "UPDATE instances SET cpu_free = cpu_free - ?, memory_free = memory_free - ?, "
            "gpus_free = gpus_free - ? WHERE instance_id = ?",
            (resources.logical_cpu, resources.memory_gb, gpus, instance_id),
        )
        if custom:
            _add_custom(conn, instance_id, custom, -1)
        conn.execute(
            "INSERT INTO allocations (job_id, instance_id, client_id, cpu, memory_gb, created, "
            "description, gpus, custom) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                job_id,
                instance_id,
                client_id,
                resources.logical_cpu,
                resources.memory_gb,
                now,
                description,
                gpus,
                json.dumps(custom),
            ),
        )

    def deallocate(self, job_id: str, outcome: str) -> bool:
        with self._db.transaction() as conn:
            return self._deallocate(conn, job_id, outcome)

    @staticmethod
    def _deallocate(conn: sqlite3.Connection, job_id: str, outcome: str) -> bool:
        row = conn.execute(
            "SELECT a.*, i.instance_type, i.price_per_hour, i.cpu_total FROM allocations a "
            "LEFT JOIN instances i ON a.instance_id = i.instance_id WHERE a.job_id = ?",
            (job_id,),
        ).fetchone()
        if row is None:
            return False
        conn.execute("DELETE FROM allocations WHERE job_id = ?", (job_id,))
        conn.execute(
            "UPDATE instances SET cpu_free = cpu_free + ?, memory_free = memory_free + ?, "
            "gpus_free = gpus_free + ? WHERE instance_id = ?",
            (row["cpu"], row["memory_gb"], row["gpus"], row["instance_id"]),
        )
        custom = json.loads(row["custom"])
        if custom:
            _add_custom(conn, row["instance_id"], custom, 1)
        conn.execute(
            "INSERT INTO job_history VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                job_id,
                row["instance_id"],
                row["instance_type"] or "?",
                row["client_id"],
                row["description"],
                row["cpu"],
                row["memory_gb"],
                row["created"],
                time.time(),
                outcome,
                row["price_per_hour"] or 0.0,
                row["cpu_total"] or 1.0,
            ),
        )
        return True

    def set_worker_pid(self, job_id: str, pid: int) -> None:
        with self._db.transaction() as conn:
            conn.execute("UPDATE allocations SET worker_pid = ? WHERE job_id = ?", (pid, job_id))

    # --- instances ----------------------------------------------------------------------
    def register_instance(self, instance_id: str, address: str, agent_pid: int) -> None:
        with self._db.transaction() as conn:
            conn.execute(
                "UPDATE instances SET address = ?, agent_pid = ?, last_heartbeat = ? "
                "WHERE instance_id = ?",
                (address, agent_pid, time.time(), instance_id),
            )

    def heartbeat(self, instance_id: str) -> InstanceRecord | None:
        with self._db.transaction() as conn:
            conn.execute(
                "UPDATE instances SET last_heartbeat = ? WHERE instance_id = ?",
                (time.time(), instance_id),
            )
        return self.get_instance(instance_id)

    def remove_instance_if_idle(self, instance_id: str) -> bool:
        """Leave the table only if nothing is allocated here (checked in the same transaction)."""
        with self._db.transaction() as conn:
            (n,) = conn.execute(
                "SELECT COUNT(*) FROM allocations WHERE instance_id = ?", (instance_id,)
            ).fetchone()
            if n:
                return False
            conn.execute("DELETE FROM instances WHERE instance_id = ?", (instance_id,))
            return True

    def remove_instance(self, instance_id: str, outcome: str) -> None:
        with self._db.transaction() as conn:
            for (job_id,) in conn.execute(
                "SELECT job_id FROM allocations WHERE instance_id = ?", (instance_id,)
            ).fetchall():
                self._deallocate(conn, job_id, outcome)
            conn.execute("DELETE FROM instances WHERE instance_id = ?", (instance_id,))

    def remove_dead_instances(self) -> tuple[list[str], list[InstanceRecord]]:
        """Drop instances whose agent stopped heartbeating (crashed), freeing their room.

        A launching instance (no address yet) gets ``LAUNCH_GRACE_SECONDS`` to register.
        """
        now = time.time()
        with self._db.transaction() as conn:
            dead = [
                row["instance_id"]
                for row in conn.execute(
                    "SELECT instance_id FROM instances WHERE (address IS NOT NULL AND "
                    "last_heartbeat < ?) OR (address IS NULL AND created < ?)",
                    (now - INSTANCE_DEAD_AFTER_SECONDS, now - LAUNCH_GRACE_SECONDS),
                )
            ]
            for instance_id in dead:
                for (job_id,) in conn.execute(
                    "SELECT job_id FROM allocations WHERE instance_id = ?", (instance_id,)
                ).fetchall():
                    self._deallocate(conn, job_id, "instance died")
                conn.execute("DELETE FROM instances WHERE instance_id = ?", (instance_id,))
        return dead, self.list_instances()

    def set_prevent_further_allocation(self, instance_id: str) -> None:
        with self._db.transaction() as conn:
            conn.execute(
                "UPDATE instances SET prevent_further_allocation = 1 WHERE instance_id = ?",
                (instance_id,),
            )

    def request_interruption(self, instance_id: str, delay_seconds: float) -> None:
        with self._db.transaction() as conn:
            cur = conn.execute(
                "UPDATE instances SET interruption_at = ? WHERE instance_id = ?",
                (time.time() + delay_seconds, instance_id),
            )
            if cur.rowcount == 0:
                raise KeyError(f"no instance {instance_id!r} in the local cloud")
