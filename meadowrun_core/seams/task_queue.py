"""At-least-once message queues with visibility timeouts (SQS / Azure Storage Queue model).

Each cloud's queue says how large one message may be (``max_message_bytes``) and how long a
writer should gather small writes into one message (``batch_seconds``): the client and agent
read these instead of assuming one cloud's limits, and send anything larger through the
object store (``seams.spill``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class QueueMessage:
    receipt: str
    body: bytes
    receive_count: int


class TaskQueue(Protocol):
    @property
    def max_message_bytes(self) -> int:
        """The largest body ``send_batch`` accepts; larger payloads go through the store."""
        ...

    @property
    def batch_seconds(self) -> float:
        """How long to gather results before sending: each request costs on a cloud."""
        ...

    @property
    def max_wait_seconds(self) -> float:
        """The longest server-side wait of one ``receive`` (long polling)."""
        ...

    @property
    def local(self) -> bool:
        """Calls are quick calls on a file of this machine (the local cloud), which an event
        loop makes itself (``call``, ``receive_waiting``) instead of in a thread."""
        ...

    def create_queue(self, name: str) -> None: ...

    def delete_queue(self, name: str) -> None: ...

    def send_batch(self, name: str, bodies: list[bytes]) -> None: ...

    def receive(
        self, name: str, max_messages: int, visibility_timeout: float, wait_seconds: float
    ) -> list[QueueMessage]:
        """Hide and return up to ``max_messages``; waits up to ``wait_seconds`` for the first."""
        ...

    async def receive_async(
        self, name: str, max_messages: int, visibility_timeout: float, wait_seconds: float
    ) -> list[QueueMessage]:
        """``receive`` from an event loop without blocking it (a cloud's long poll in a
        thread; the local queue waits for a wake-up from its senders)."""
        ...

    def delete(self, name: str, receipts: list[str]) -> None: ...

    def change_visibility(self, name: str, receipts: list[str], timeout: float) -> None: ...


async def call(queues: TaskQueue, function: Callable[..., T], *args: object) -> T:
    """``function(*args)``, a call on ``queues``, from an event loop: in a thread where it
    is a network request, at once where the queue is local. Handing a call to a thread and
    back costs two wake-ups (about 0.05 ms each, much more while the GIL is contended):
    more than a local queue's SQLite transaction, and most of an agent's CPU per map task."""
    if queues.local:
        return function(*args)
    return await asyncio.to_thread(function, *args)


async def receive_waiting(
    queues: TaskQueue, name: str, max_messages: int, visibility_timeout: float, wait: float
) -> list[QueueMessage]:
    """``queues.receive`` with a long poll of ``wait`` seconds, from an event loop."""
    return await queues.receive_async(name, max_messages, visibility_timeout, wait)
