"""``TaskQueue`` on Azure Storage Queue: visibility timeouts, redelivery, dequeue counts.

Where Storage Queue differs from SQS, and what this does about it:

- a message holds at most 64 KiB of text, and bodies are binary: bodies are base64 (4/3
  larger), so ``max_message_bytes`` is 47 KiB and the callers spill anything larger
  through the object store (``seams.spill``), exactly as on AWS;
- there is no batch send: each message is one request, sent concurrently;
- deleting or updating a message needs its id *and* its latest pop receipt, so a receipt
  here is ``<message id> <pop receipt>``; updating a message's visibility gives it a new pop
  receipt, which this object remembers per message id, so the receipt the caller holds
  keeps working for ``delete`` and later ``change_visibility`` calls from this process;
- a receive never waits server-side (no long polling): ``receive`` polls, backing off from
  50 ms to 1 s, until a message arrives or ``wait_seconds`` pass.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import logging
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError

from meadowrun_core.seams.task_queue import QueueMessage

log = logging.getLogger(__name__)

# Storage Queue limits: 64 KiB of message text, 32 messages per receive, 7 days' visibility.
MAX_MESSAGE_BYTES = 47 * 1024  # base64 of this stays below 64 KiB, with room to spare
_RECEIVE_MAX = 32
_MAX_VISIBILITY = 7 * 86400
MAX_WAIT_SECONDS = 20.0
_POLL_FIRST, _POLL_LAST = 0.05, 1.0
_SENDERS = 8
_REMEMBERED_RECEIPTS = 65536
_QUEUE_NAME = re.compile(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}")


def queue_name(prefix: str, name: str) -> str:
    """The Storage Queue name of the seam's queue ``name``: ``prefix + name`` when Azure
    accepts it (3-63 lower-case letters, digits and single dashes), else a cleaned-up form
    made unique by a hash of ``name``."""
    full = prefix + name
    if _QUEUE_NAME.fullmatch(full):
        return full
    cleaned = re.sub(r"-+", "-", re.sub(r"[^a-z0-9]", "-", name.lower()))
    digest = hashlib.sha256(name.encode()).hexdigest()[:16]
    room = 61 - len(prefix) - len(digest)
    parts = (prefix.strip("-"), cleaned[:room].strip("-"), digest)
    return "-".join(part for part in parts if part)


def _receipt(message_id: str, pop_receipt: str) -> str:
    return f"{message_id} {pop_receipt}"


def _parse_receipt(receipt: str) -> tuple[str, str]:
    message_id, _, pop_receipt = receipt.partition(" ")
    if not pop_receipt:
        raise ValueError(f"not a Storage Queue receipt (message id and pop receipt): {receipt!r}")
    return message_id, pop_receipt


_GONE_OR_STALE = ("MessageNotFound", "PopReceiptMismatch", "QueueNotFound")


def _gone_or_stale(exc: HttpResponseError) -> bool:
    """A message already deleted, or received again by someone else since (its pop receipt
    changed): at-least-once delivery makes both harmless."""
    code = getattr(exc, "error_code", None)  # a str enum: equal to Azure's code
    return code in _GONE_OR_STALE


def _body(content: str | None) -> bytes:
    """A message's body. Text that is not base64 was not written by us: it is handed on as
    is, so that the reader's signature check drops it (and its receipt deletes it)."""
    try:
        return base64.b64decode(content or "", validate=True)
    except binascii.Error:
        log.warning("a queue message that is not base64 (%d characters)", len(content or ""))
        return (content or "").encode()


class StorageQueueTaskQueue:
    max_message_bytes = MAX_MESSAGE_BYTES
    batch_seconds = 0.25
    max_wait_seconds = MAX_WAIT_SECONDS
    local = False  # every call is a request: made in a thread

    def __init__(self, queue_service: Any, prefix: str = "meadowrun-") -> None:
        """``queue_service``: an ``azure.storage.queue.QueueServiceClient``."""
        self._service = queue_service
        self._prefix = prefix
        self._clients: dict[str, Any] = {}
        # message id -> its latest pop receipt, after our own visibility updates
        self._latest: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def _client(self, name: str) -> Any:
        client = self._clients.get(name)
        if client is None:
            client = self._service.get_queue_client(queue_name(self._prefix, name))
            self._clients[name] = client
        return client

    def create_queue(self, name: str) -> None:
        with contextlib.suppress(ResourceExistsError):
            # the seam's name and the time: the manager finds the jobs using it and its age
            metadata = {"meadowrun": "true", "name": name, "created": f"{time.time():.0f}"}
            self._client(name).create_queue(metadata=metadata)

    def delete_queue(self, name: str) -> None:
        with contextlib.suppress(ResourceNotFoundError):
            self._client(name).delete_queue()
        self._clients.pop(name, None)

    def send_batch(self, name: str, bodies: list[bytes]) -> None:
        """One request per message (Storage Queue has no batch send), concurrently."""
        for body in bodies:
            if len(body) > MAX_MESSAGE_BYTES:
                raise ValueError(
                    f"a queue message of {len(body)} bytes exceeds max_message_bytes "
                    f"({MAX_MESSAGE_BYTES}); send it through the object store (seams.spill)"
                )
        client = self._client(name)
        texts = [base64.b64encode(body).decode() for body in bodies]
        self._each(lambda text: client.send_message(text), texts)

    def receive(
        self, name: str, max_messages: int, visibility_timeout: float, wait_seconds: float
    ) -> list[QueueMessage]:
        """Polls until a message arrives or ``wait_seconds`` pass (at least one request)."""
        client = self._client(name)
        deadline = time.monotonic() + max(0.0, wait_seconds)
        pause = _POLL_FIRST
        while True:
            received = client.receive_messages(
                messages_per_page=max(1, min(max_messages, _RECEIVE_MAX)),
                max_messages=max(1, min(max_messages, _RECEIVE_MAX)),
                visibility_timeout=min(_MAX_VISIBILITY, max(1, math.ceil(visibility_timeout))),
            )
            messages = [
                QueueMessage(
                    receipt=_receipt(m.id, m.pop_receipt),
                    body=_body(m.content),
                    receive_count=int(m.dequeue_count),
                )
                for m in received
            ]
            left = deadline - time.monotonic()
            if messages or left <= 0:
                return messages
            time.sleep(min(pause, left))
            pause = min(_POLL_LAST, pause * 2)

    async def receive_async(
        self, name: str, max_messages: int, visibility_timeout: float, wait_seconds: float
    ) -> list[QueueMessage]:
        """A long poll from an event loop: in a thread, it is a network request."""
        return await asyncio.to_thread(
            self.receive, name, max_messages, visibility_timeout, wait_seconds
        )

    def delete(self, name: str, receipts: list[str]) -> None:
        client = self._client(name)

        def delete_one(receipt: str) -> None:
            message_id, pop_receipt = self._current(receipt)
            try:
                client.delete_message(message_id, pop_receipt)
            except HttpResponseError as exc:
                if not _gone_or_stale(exc):
                    raise
                log.debug("message %s was gone or received again: not deleted", message_id)
            with self._lock:
                self._latest.pop(message_id, None)

        self._each(delete_one, receipts)

    def change_visibility(self, name: str, receipts: list[str], timeout: float) -> None:
        client = self._client(name)
        seconds = min(_MAX_VISIBILITY, max(0, round(timeout)))

        def update_one(receipt: str) -> None:
            message_id, pop_receipt = self._current(receipt)
            try:
                updated = client.update_message(message_id, pop_receipt, visibility_timeout=seconds)
            except HttpResponseError as exc:
                if not _gone_or_stale(exc):
                    raise
                log.debug("message %s was gone or received again: visibility kept", message_id)
                return
            with self._lock:
                self._latest[message_id] = updated.pop_receipt
                self._latest.move_to_end(message_id)
                while len(self._latest) > _REMEMBERED_RECEIPTS:
                    self._latest.popitem(last=False)

        self._each(update_one, receipts)

    def _current(self, receipt: str) -> tuple[str, str]:
        """The message id and the latest pop receipt this process knows for it."""
        message_id, pop_receipt = _parse_receipt(receipt)
        with self._lock:
            return message_id, self._latest.get(message_id, pop_receipt)

    def _each(self, action: Callable[[str], object], items: Iterable[str]) -> None:
        """``action`` on every item, concurrently when there are several; the first error
        is raised once all have run."""
        items = list(items)
        if len(items) <= 1:
            for item in items:
                action(item)
            return
        with ThreadPoolExecutor(min(_SENDERS, len(items))) as pool:
            for future in [pool.submit(action, item) for item in items]:
                future.result()
