"""The priority raffle's entries in the local allocation table (``raffle``): jobs of every
process sharing this ``MEADOWRUN_HOME`` that wait for room (see seams/raffle.py)."""

from __future__ import annotations

import time

from meadowrun_core.local.sqlite_db import SqliteDb
from meadowrun_core.seams.raffle import RaffleEntry


class RaffleEntries:
    """Mixed into ``SqliteAllocationTable``, which opens ``_db``."""

    _db: SqliteDb

    def raffle_entries(self) -> list[RaffleEntry]:
        rows = (
            self._db.connection()
            .execute(
                "SELECT ticket, priority, expires FROM raffle WHERE expires > ?", (time.time(),)
            )
            .fetchall()
        )
        return [RaffleEntry(r["ticket"], r["priority"], r["expires"]) for r in rows]

    def enter_raffle(self, ticket: str, priority: float, client_id: str, expires: float) -> None:
        with self._db.transaction() as conn:
            conn.execute("DELETE FROM raffle WHERE expires <= ?", (time.time(),))
            conn.execute(
                "INSERT OR REPLACE INTO raffle (ticket, priority, client_id, expires) "
                "VALUES (?, ?, ?, ?)",
                (ticket, priority, client_id, expires),
            )

    def leave_raffle(self, ticket: str) -> None:
        with self._db.transaction() as conn:
            conn.execute("DELETE FROM raffle WHERE ticket = ?", (ticket,))
