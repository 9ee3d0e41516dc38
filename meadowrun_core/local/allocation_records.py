"""Reading the local allocation table: rows decoded into the seam's records, and the queries
that only read (instances, allocations, job history), apart from the transactions that
change them."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from meadowrun_core.local.sqlite_db import SqliteDb
from meadowrun_core.seams.allocation_table import AllocationRecord, InstanceRecord


def instance_from_row(row: sqlite3.Row, running_jobs: int) -> InstanceRecord:
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


def allocation_from_row(row: sqlite3.Row) -> AllocationRecord:
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


class TableReads:
    """Mixed into ``SqliteAllocationTable``, which opens ``_db``."""

    _db: SqliteDb

    def get_instance(self, instance_id: str) -> InstanceRecord | None:
        conn = self._db.connection()
        row = conn.execute(
            "SELECT *, (SELECT COUNT(*) FROM allocations a WHERE a.instance_id = i.instance_id) "
            "AS n FROM instances i WHERE instance_id = ?",
            (instance_id,),
        ).fetchone()
        return None if row is None else instance_from_row(row, row["n"])

    def list_instances(self) -> list[InstanceRecord]:
        conn = self._db.connection()
        rows = conn.execute(
            "SELECT *, (SELECT COUNT(*) FROM allocations a WHERE a.instance_id = i.instance_id) "
            "AS n FROM instances i ORDER BY created"
        ).fetchall()
        return [instance_from_row(r, r["n"]) for r in rows]

    def list_allocations(self, instance_id: str | None = None) -> list[AllocationRecord]:
        conn = self._db.connection()
        if instance_id is None:
            rows = conn.execute("SELECT * FROM allocations ORDER BY created").fetchall()
        else:
            rows = conn.execute(
                "SELECT * FROM allocations WHERE instance_id = ? ORDER BY created", (instance_id,)
            ).fetchall()
        return [allocation_from_row(r) for r in rows]

    def job_history(self, limit: int = 100) -> list[dict[str, Any]]:
        conn = self._db.connection()
        rows = conn.execute(
            "SELECT * FROM job_history ORDER BY ended DESC LIMIT ?", (limit,)
        ).fetchall()
        return [dict(row) for row in rows]

    def finished_job(self, job_id: str) -> dict[str, Any] | None:
        row = (
            self._db.connection()
            .execute("SELECT * FROM job_history WHERE job_id = ? LIMIT 1", (job_id,))
            .fetchone()
        )
        return None if row is None else dict(row)
