"""A map job's queue messages, as the client and the agents both write and read them.

A request message holds a batch of tasks, a result message a batch of results; each body is
signed (and goes through the object store by reference when it is larger than the queue
allows). Every cloud's queue carries the same bodies, and nothing in one is unpickled before
its signature verifies.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Sequence
from typing import Any

from meadowrun_core.seams.object_store import ObjectStore
from meadowrun_core.seams.spill import size_groups, spill, unspill
from meadowrun_core.serialization import Signer, UnauthenticatedDataError

log = logging.getLogger(__name__)

# A task in a message: (task_id, attempt, pickled argument)
TaskTuple = tuple[int, int, bytes]
# A result in a message: (task_id, attempt, ok, payload, failure_kind, slot_job_id, seconds):
# the slot that ran it ("" if none did) and the seconds it ran there, for ``TaskResult.cost``.
# Agents of earlier versions send the first five only.
ResultTuple = tuple[int, int, bool, bytes, str, str, float]

RESULT_FLUSH_COUNT = 500
MAX_TASKS_PER_MESSAGE = 100
# A message that only wakes a long-polling receiver (the map ended); it carries no tasks.
WAKE = b"MRWAKE"
_TUPLE_OVERHEAD = 24  # pickle framing per task or result, for sizing messages


def encode_messages(
    signer: Signer,
    store: ObjectStore | None,
    items: Sequence[TaskTuple] | Sequence[ResultTuple],
    max_count: int,
    max_message_bytes: int,
) -> list[bytes]:
    """Signed message bodies holding ``items`` in order, each within the queue's limit; a
    body still larger than that (one huge argument or result) goes through the store."""
    every: list[TaskTuple | ResultTuple] = list(items)
    groups = size_groups(
        every,
        max_count,
        max_message_bytes - 1024,
        _item_size,
    )
    return [
        spill(
            store,
            signer.sign(pickle.dumps(group, protocol=pickle.HIGHEST_PROTOCOL)),
            max_message_bytes,
        )
        for group in groups
    ]


def _item_size(item: TaskTuple | ResultTuple) -> int:
    """A task's argument or a result's payload, plus framing."""
    payload = item[2] if len(item) == 3 else item[3]
    return len(payload) + _TUPLE_OVERHEAD if isinstance(payload, bytes) else _TUPLE_OVERHEAD


def decode_message(signer: Signer, store: ObjectStore | None, body: bytes) -> list[Any]:
    """The tasks or results of one message body (fetched from the store if it was spilled);
    nothing is unpickled before its signature verifies. A message that is unsigned, tampered
    with or malformed is logged and dropped ([]), never unpickled, and never stops the map;
    every cloud's queue goes through here."""
    try:
        items = pickle.loads(signer.verify(unspill(store, body)))
    except UnauthenticatedDataError as exc:
        reason = str(exc)
    except Exception as exc:  # a spilled object missing or damaged, a bad reference
        reason = f"{type(exc).__name__}: {exc}"
    else:
        if isinstance(items, list) and all(
            isinstance(t, tuple) and len(t) in (3, 5, 7) and isinstance(t[0], int) for t in items
        ):
            return items
        reason = "a signed message of the wrong shape"
    log.warning("dropped a queue message of %d bytes: %s", len(body), reason)
    return []
