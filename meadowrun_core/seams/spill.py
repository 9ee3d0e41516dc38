"""Payloads of any size through queues and frames: a body larger than the channel takes is
put in the object store (content-addressed; the body is already signed) and only a small
reference travels. The same code runs on every cloud; only the limits differ (each queue's
``max_message_bytes``, ``FRAME_INLINE_BYTES`` for agent connections)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from meadowrun_core.seams.object_store import DamagedObjectError, ObjectStore, content_key

T = TypeVar("T")

_REFERENCE = b"MRREF1:"
# Job arguments and results above this go through the store, not inside an agent frame.
FRAME_INLINE_BYTES = 1 << 20


def spill(store: ObjectStore | None, body: bytes, limit: int) -> bytes:
    """``body`` itself when it fits in ``limit`` bytes, else a reference to it in ``store``."""
    if len(body) <= limit:
        return body
    if store is None:
        raise ValueError(f"a message of {len(body)} bytes exceeds {limit} and no store is set")
    return _REFERENCE + store.put(body).encode()


def unspill(store: ObjectStore | None, body: bytes) -> bytes:
    """The body a message stands for (still to be verified by the caller)."""
    if not body.startswith(_REFERENCE):
        return body
    key = body[len(_REFERENCE) :].decode()
    if store is None:
        raise ValueError(f"message refers to object {key} but no store is set")
    data = store.get(key)
    if content_key(data) != key:
        raise DamagedObjectError(key, "its bytes do not hash to its key")
    return data


def size_groups(
    items: Sequence[T], max_count: int, max_bytes: int, size: Callable[[T], int]
) -> list[list[T]]:
    """Consecutive groups of at most ``max_count`` items and (unless one item alone is larger)
    ``max_bytes``, so a message stays within its queue's limit or holds a single payload."""
    groups: list[list[T]] = []
    current: list[T] = []
    used = 0
    for item in items:
        n = size(item)
        if current and (len(current) >= max_count or used + n > max_bytes):
            groups.append(current)
            current, used = [], 0
        current.append(item)
        used += n
    if current:
        groups.append(current)
    return groups
