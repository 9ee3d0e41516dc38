"""The allocation table of the local cloud, in SQLite.

Every read-check-write runs inside ``BEGIN IMMEDIATE``, the SQLite equivalent of DynamoDB's
conditional writes: two clients can never both take the last free CPU of an instance.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meadowrun_core.local.sqlite_db import SqliteDb
from meadowrun_core.resources import Resources
from meadowrun_core.seams.allocation_table import (
    AllocationRecord,
    InstanceRecord,
    gpus_needed,
    instance_suits,
    normalize_flags,
    room_fits,
)
from meadowrun_core.seams.instance_provider import InstanceType

_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    instance_id TEXT PRIMARY KEY,
    instance_type TEXT NOT NULL,
    cpu_total REAL NOT NULL,
    memory_total REAL NOT NULL,
    cpu_free REAL NOT NULL,
    memory_free REAL NOT NULL,
    address TEXT,
    agent_pid INTEGER,
    price_per_hour REAL NOT NULL,
    prevent_further_allocation INTEGER NOT NULL DEFAULT 0,
    interruption_at REAL,
    created REAL NOT NULL,
    last_heartbeat REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS allocations (
    job_id TEXT PRIMARY KEY,
    instance_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    cpu REAL NOT NULL,
    memory_gb REAL NOT NULL,
    worker_pid INTEGER,
    created REAL NOT NULL,
    description TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS allocations_by_instance ON allocations(instance_id);
CREATE TABLE IF NOT EXISTS clients (
    client_id TEXT PRIMARY KEY,
    pid INTEGER NOT NULL,
    lease_expires REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS job_history (
    job_id TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    instance_type TEXT NOT NULL,
    client_id TEXT NOT NULL,
    description TEXT NOT NULL,
    cpu REAL NOT NULL,
    memory_gb REAL NOT NULL,
    started REAL NOT NULL,
    ended REAL NOT NULL,
    outcome TEXT NOT NULL,
    price_per_hour REAL NOT NULL,
    instance_cpu REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS job_keys (
    job_key TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    instance_id TEXT,
    status TEXT NOT NULL,
    final TEXT,
    payload_key TEXT,
    created REAL NOT NULL,
    ended REAL,
    submitter TEXT NOT NULL DEFAULT ''
);
"""

# Instances that have not written a heartbeat for this long are treated as crashed.
INSTANCE_DEAD_AFTER_SECONDS = 10.0
# An instance that has not registered this long after its launch is treated as failed.
LAUNCH_GRACE_SECONDS = 60.0


# Resource columns beyond CPU and memory (added to tables made by earlier versions).
_INSTANCE_RESOURCE_COLUMNS = {
    "gpus_total": "REAL NOT NULL DEFAULT 0",
    "gpus_free": "REAL NOT NULL DEFAULT 0",
    "gpu_memory_gb": "REAL NOT NULL DEFAULT 0",
    "flags": "TEXT NOT NULL DEFAULT '[]'",
    "arch": "TEXT NOT NULL DEFAULT ''",
    "is_spot": "INTEGER NOT NULL DEFAULT 0",
    "interruption_probability": "REAL NOT NULL DEFAULT 0",
    "custom_total": "TEXT NOT NULL DEFAULT '{}'",
    "custom_free": "TEXT NOT NULL DEFAULT '{}'",
}
_ALLOCATION_RESOURCE_COLUMNS = {
    "gpus": "REAL NOT NULL DEFAULT 0",
    "custom": "TEXT NOT NULL DEFAULT '{}'",
}


def _instance(row: sqlite3.Row, running_jobs: int) -> InstanceRecord:
    return InstanceRecord(
        instance_id=row["instance_id"],
        instance_type=row["instance_type"],
        cpu_total=row["cpu_total"],
        memory_total=row["memory_total"],
        cpu_free=row["cpu_free"],
        memory_free=row["memory_free"],
        address=row["address"],
        agent_pid=row["agent_pid"],
        price_per_hour=row["price_per_hour"],
        prevent_further_allocation=bool(row["prevent_further_allocation"]),
        interruption_at=row["interruption_at"],
        created=row["created"],
        last_heartbeat=row["last_heartbeat"],
        running_jobs=running_jobs,
        gpus_total=row["gpus_total"],
        gpus_free=row["gpus_free"],
        gpu_memory_gb=row["gpu_memory_gb"],
        flags=tuple(json.loads(row["flags"])),
        arch=row["arch"],
        is_spot=bool(row["is_spot"]),
        interruption_probability=row["interruption_probability"],
        custom_total=json.loads(row["custom_total"]),
        custom_free=json.loads(row["custom_free"]),
    )


def _allocation(row: sqlite3.Row) -> AllocationRecord:
    return AllocationRecord(
        job_id=row["job_id"],
        instance_id=row["instance_id"],
        client_id=row["client_id"],
        cpu=row["cpu"],
        memory_gb=row["memory_gb"],
        worker_pid=row["worker_pid"],
        created=row["created"],
        description=row["description"],
        gpus=row["gpus"],
        custom=json.loads(row["custom"]),
    )


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


class SqliteAllocationTable:
    """``AllocationTable`` for one ``MEADOWRUN_HOME``, shared by every process using it."""

    def __init__(self, path: Path) -> None:
        self._db = SqliteDb(path, _SCHEMA)
        self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        """Bring a state directory made by an earlier version up to this schema. Checked
        and changed in one write transaction: processes opening a new home at the same time
        would otherwise both add the same column (``duplicate column name``)."""
        wanted = {
            "job_keys": {"submitter": "TEXT NOT NULL DEFAULT ''"},
            "instances": _INSTANCE_RESOURCE_COLUMNS,
            "allocations": _ALLOCATION_RESOURCE_COLUMNS,
        }

        def missing(conn: sqlite3.Connection) -> list[tuple[str, str, str]]:
            found = []
            for table, columns in wanted.items():
                have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
                found += [(table, n, kind) for n, kind in columns.items() if n not in have]
            return found

        if not missing(self._db.connection()):
            return  # the common case: no write lock taken
        with self._db.transaction() as conn:
            for table, name, kind in missing(conn):
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")

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
                "SELECT *, 0 AS n FROM instances "
                "WHERE address IS NOT NULL AND prevent_further_allocation = 0 "
                "AND last_heartbeat > ? AND cpu_free >= ? AND memory_free >= ? AND gpus_free >= ?",
                (
                    now - INSTANCE_DEAD_AFTER_SECONDS,
                    resources.logical_cpu,
                    resources.memory_gb,
                    gpus_needed(resources),
                ),
            ).fetchall()
            free = {
                record.instance_id: _Room(
                    record.cpu_free,
                    record.memory_free,
                    record.gpus_free,
                    dict(record.custom_free),
                )
                for record in (_instance(r, 0) for r in rows)
                if instance_suits(record, resources)
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
        records = {iid: self.get_instance(iid) for iid in set(placed.values())}
        return {j: r for j, iid in placed.items() if (r := records[iid]) is not None}

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

    def remove_dead_instances(self) -> list[str]:
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
        return dead

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

    def get_instance(self, instance_id: str) -> InstanceRecord | None:
        conn = self._db.connection()
        row = conn.execute(
            "SELECT *, (SELECT COUNT(*) FROM allocations a WHERE a.instance_id = i.instance_id) "
            "AS n FROM instances i WHERE instance_id = ?",
            (instance_id,),
        ).fetchone()
        return None if row is None else _instance(row, row["n"])

    def list_instances(self) -> list[InstanceRecord]:
        conn = self._db.connection()
        rows = conn.execute(
            "SELECT *, (SELECT COUNT(*) FROM allocations a WHERE a.instance_id = i.instance_id) "
            "AS n FROM instances i ORDER BY created"
        ).fetchall()
        return [_instance(r, r["n"]) for r in rows]

    def list_allocations(self, instance_id: str | None = None) -> list[AllocationRecord]:
        conn = self._db.connection()
        if instance_id is None:
            rows = conn.execute("SELECT * FROM allocations ORDER BY created").fetchall()
        else:
            rows = conn.execute(
                "SELECT * FROM allocations WHERE instance_id = ? ORDER BY created", (instance_id,)
            ).fetchall()
        return [_allocation(r) for r in rows]

    def job_history(self, limit: int = 100) -> list[dict[str, Any]]:
        conn = self._db.connection()
        rows = conn.execute(
            "SELECT * FROM job_history ORDER BY ended DESC LIMIT ?", (limit,)
        ).fetchall()
        return [dict(row) for row in rows]

    # --- keyed jobs: found again by a caller-chosen key from any process -----------------
    def claim_job_key(self, job_key: str, job_id: str, submitter: str = "") -> str | None:
        """Reserve ``job_key`` for ``job_id``; if taken, return the job id holding it.

        ``submitter`` is the client sending the job: if its lease lapses before the job has
        started, the job never will."""
        with self._db.transaction() as conn:
            row = conn.execute(
                "SELECT job_id FROM job_keys WHERE job_key = ?", (job_key,)
            ).fetchone()
            if row is not None:
                return str(row["job_id"])
            conn.execute(
                "INSERT INTO job_keys (job_key, job_id, status, created, submitter) "
                "VALUES (?, ?, 'submitted', ?, ?)",
                (job_key, job_id, time.time(), submitter),
            )
            return None

    def set_job_key_instance(self, job_key: str, job_id: str, instance_id: str) -> None:
        with self._db.transaction() as conn:
            conn.execute(
                "UPDATE job_keys SET job_id = ?, instance_id = ?, status = 'placed' "
                "WHERE job_key = ? AND status = 'submitted'",
                (job_id, instance_id, job_key),
            )

    def mark_job_key_started(self, job_key: str) -> None:
        """Called by the agent once the job runs on its instance."""
        with self._db.transaction() as conn:
            conn.execute(
                "UPDATE job_keys SET status = 'running' WHERE job_key = ? AND status != 'ended'",
                (job_key,),
            )

    def record_job_final(self, job_key: str, final: str, payload_key: str | None) -> None:
        with self._db.transaction() as conn:
            conn.execute(
                "UPDATE job_keys SET status = 'ended', final = ?, payload_key = ?, ended = ? "
                "WHERE job_key = ?",
                (final, payload_key, time.time(), job_key),
            )

    def get_job_key(self, job_key: str) -> dict[str, object] | None:
        row = (
            self._db.connection()
            .execute("SELECT * FROM job_keys WHERE job_key = ?", (job_key,))
            .fetchone()
        )
        return None if row is None else dict(row)

    def forget_job_key(self, job_key: str) -> bool:
        with self._db.transaction() as conn:
            return conn.execute("DELETE FROM job_keys WHERE job_key = ?", (job_key,)).rowcount > 0

    def object_references(self) -> tuple[set[str], float | None]:
        """What garbage collection keeps: the object keys of kept keyed-job outcomes, and when
        the oldest live job began (an allocation, or a keyed job not ended yet)."""
        conn = self._db.connection()
        keys: set[str] = set()
        for row in conn.execute("SELECT final, payload_key FROM job_keys WHERE status = 'ended'"):
            if row["payload_key"]:
                keys.add(row["payload_key"])
            try:
                output_key = json.loads(row["final"] or "{}").get("output_key")
            except ValueError:
                output_key = None
            if isinstance(output_key, str):
                keys.add(output_key)
        oldest = conn.execute(
            "SELECT MIN(t) FROM (SELECT MIN(created) AS t FROM allocations UNION ALL "
            "SELECT MIN(created) FROM job_keys WHERE status != 'ended')"
        ).fetchone()[0]
        return keys, None if oldest is None else float(oldest)

    # --- client leases --------------------------------------------------------------------
    def renew_lease(self, client_id: str, pid: int, lease_seconds: float) -> None:
        with self._db.transaction() as conn:
            conn.execute(
                "INSERT INTO clients (client_id, pid, lease_expires) VALUES (?, ?, ?) "
                "ON CONFLICT(client_id) DO UPDATE SET lease_expires = excluded.lease_expires",
                (client_id, pid, time.time() + lease_seconds),
            )

    def lease_expiry(self, client_id: str) -> float | None:
        row = (
            self._db.connection()
            .execute("SELECT lease_expires FROM clients WHERE client_id = ?", (client_id,))
            .fetchone()
        )
        return None if row is None else float(row["lease_expires"])

    def release_lease(self, client_id: str) -> None:
        with self._db.transaction() as conn:
            conn.execute("DELETE FROM clients WHERE client_id = ?", (client_id,))

    def allocations_with_expired_lease(self, instance_id: str) -> list[AllocationRecord]:
        """Allocations on this instance whose client's lease lapsed (or never existed)."""
        conn = self._db.connection()
        rows = conn.execute(
            "SELECT a.* FROM allocations a LEFT JOIN clients c ON a.client_id = c.client_id "
            "WHERE a.instance_id = ? AND (c.lease_expires IS NULL OR c.lease_expires < ?)",
            (instance_id, time.time()),
        ).fetchall()
        return [_allocation(r) for r in rows]
