"""The priority raffle's entries in the DynamoDB allocation table (``raffle#`` items, kind
``raffle`` on the sparse index): jobs of every client of the account waiting for room (see
seams/raffle.py). Readers ignore expired entries and delete them (a client that died while
waiting leaves one behind)."""

from __future__ import annotations

import time
from typing import Any

from meadowrun_core.seams.raffle import RAFFLE_ENTRY_SECONDS, RaffleEntry


class RaffleEntries:
    """Mixed into ``DynamoDbAllocationTable``, which provides the helpers used here."""

    _db: Any
    _table: str

    def _kind(self, kind: str) -> list[dict[str, Any]]:
        raise NotImplementedError

    def raffle_entries(self) -> list[RaffleEntry]:
        now = time.time()
        entries = [
            RaffleEntry(i["pk"].removeprefix("raffle#"), float(i["priority"]), float(i["expires"]))
            for i in self._kind("raffle")
        ]
        for entry in entries:
            if entry.expires < now - RAFFLE_ENTRY_SECONDS:  # long gone: its client died
                self.leave_raffle(entry.ticket)
        return [e for e in entries if e.expires > now]

    def enter_raffle(self, ticket: str, priority: float, client_id: str, expires: float) -> None:
        self._db.put_item(
            TableName=self._table,
            Item={
                "pk": {"S": f"raffle#{ticket}"},
                "kind": {"S": "raffle"},
                "priority": {"N": repr(float(priority))},
                "client_id": {"S": client_id},
                "expires": {"N": repr(float(expires))},
            },
        )

    def leave_raffle(self, ticket: str) -> None:
        self._db.delete_item(TableName=self._table, Key={"pk": {"S": f"raffle#{ticket}"}})
