"""The priority raffle's entries in the Azure Table allocation table (the ``raffle``
partition): jobs of every client of the account waiting for room (see seams/raffle.py).
Readers ignore expired entries and delete long-expired ones (a client that died while
waiting leaves one behind)."""

from __future__ import annotations

import time
from typing import Any

from azure.data.tables import UpdateMode

from meadowrun_core.azure.table_entities import RAFFLE, row_key
from meadowrun_core.seams.raffle import RAFFLE_ENTRY_SECONDS, RaffleEntry


class RaffleEntries:
    """Mixed into ``AzureTableAllocationTable``, which sets ``_client`` and the reads."""

    _client: Any

    def _partition(self, partition: str) -> list[Any]:
        raise NotImplementedError

    def raffle_entries(self) -> list[RaffleEntry]:
        now = time.time()
        entries = [
            RaffleEntry(e["ticket"], float(e["priority"]), float(e["expires"]))
            for e in self._partition(RAFFLE)
        ]
        for entry in entries:
            if entry.expires < now - RAFFLE_ENTRY_SECONDS:  # long gone: its client died
                self.leave_raffle(entry.ticket)
        return [e for e in entries if e.expires > now]

    def enter_raffle(self, ticket: str, priority: float, client_id: str, expires: float) -> None:
        entity = {
            "PartitionKey": RAFFLE,
            "RowKey": row_key(ticket),
            "ticket": ticket,
            "priority": float(priority),
            "client_id": client_id,
            "expires": float(expires),
        }
        self._client.upsert_entity(entity, mode=UpdateMode.REPLACE)

    def leave_raffle(self, ticket: str) -> None:
        self._client.delete_entity(RAFFLE, row_key(ticket))
