"""Keyed jobs and client leases in the local allocation table (``job_keys`` and ``clients``),
apart from instance allocation."""

from __future__ import annotations

import json
import time

from meadowrun_core.local.allocation_records import allocation_from_row
from meadowrun_core.local.sqlite_db import SqliteDb
from meadowrun_core.seams.allocation_table import AllocationRecord


class KeyedJobsAndLeases:
    """Mixed into ``SqliteAllocationTable``, which opens ``_db``."""

    _db: SqliteDb

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

    def find_job_key(self, job_id: str) -> dict[str, object] | None:
        row = (
            self._db.connection()
            .execute(
                "SELECT * FROM job_keys WHERE job_id = ? ORDER BY created DESC LIMIT 1", (job_id,)
            )
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
        return [allocation_from_row(r) for r in rows]
