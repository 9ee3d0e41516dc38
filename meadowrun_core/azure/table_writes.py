"""Optimistic concurrency on Azure Table: read an entity, decide, and write it back only if
its ETag is unchanged (``If-Match``); on a conflict read it again and decide again.

A conflict means another client wrote first (a placement, a heartbeat), never that the write
is impossible, so it is retried, not lost: each retry re-reads the entity and re-checks the
condition (room still free, job still there) against what the other client wrote.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableEntity, UpdateMode

log = logging.getLogger(__name__)

# Conflicts tolerated on one entity before giving up (each one is another client's success,
# so this many in a row means heavy contention, not a lost update).
MAX_CONFLICTS = 200


def etag_of(entity: Any) -> str:
    etag: str = entity.metadata["etag"]
    return etag


def versioned(properties: dict[str, Any], etag: str) -> TableEntity:
    """An entity as read back after our own write: its properties and its new ETag."""
    entity = TableEntity(properties)
    entity._metadata = {"etag": etag, "timestamp": None}
    return entity


def if_unchanged() -> dict[str, Any]:
    return {"match_condition": MatchConditions.IfNotModified}


def conflict_pause(conflicts: int) -> None:
    """A short random pause after a conflict, growing with the conflicts, so racing clients
    spread out instead of colliding again in step."""
    time.sleep(random.uniform(0, min(0.05, 0.001 * 2**conflicts)))


def merge_if_unchanged(client: Any, entity: Any, updates: dict[str, Any]) -> TableEntity | None:
    """Merge ``updates`` into ``entity`` if nobody wrote it since it was read: the entity as
    written (with its new ETag), or None on a conflict or if it is gone."""
    body = {"PartitionKey": entity["PartitionKey"], "RowKey": entity["RowKey"], **updates}
    try:
        response = client.update_entity(
            body, mode=UpdateMode.MERGE, etag=etag_of(entity), **if_unchanged()
        )
    except (ResourceModifiedError, ResourceNotFoundError):
        return None
    return versioned({**entity, **updates}, response["etag"])


def modify(
    client: Any,
    entity: Any,
    change: Callable[[Any], dict[str, Any] | None],
) -> tuple[TableEntity | None, dict[str, Any] | None]:
    """Apply ``change`` (entity -> properties to merge, or None: the condition no longer
    holds) to ``entity`` until a write succeeds against an unchanged ETag; ``entity`` may be
    one already read (say by a listing), saving a read. Returns the entity as written and the
    updates, or (None, None) when the condition failed or the entity is gone."""
    conflicts = 0
    while entity is not None:
        updates = change(entity)
        if updates is None:
            return None, None
        written = merge_if_unchanged(client, entity, updates)
        if written is not None:
            return written, updates
        conflicts += 1
        if conflicts >= MAX_CONFLICTS:
            log.warning(
                "gave up updating %s/%s after %d ETag conflicts in a row",
                entity["PartitionKey"],
                entity["RowKey"],
                conflicts,
            )
            return None, None
        conflict_pause(conflicts)
        try:
            entity = client.get_entity(entity["PartitionKey"], entity["RowKey"])
        except ResourceNotFoundError:
            return None, None
    return None, None


def merge_if_present(client: Any, partition: str, row: str, updates: dict[str, Any]) -> bool:
    """Merge ``updates`` into the entity whatever its ETag (``If-Match: *``), for values set
    outright (a heartbeat, a flag); it still changes the ETag, so a read-modify-write in
    flight re-reads and sees them. False if the entity does not exist."""
    body = {"PartitionKey": partition, "RowKey": row, **updates}
    try:
        client.update_entity(body, mode=UpdateMode.MERGE)
    except ResourceNotFoundError:
        return False
    return True
