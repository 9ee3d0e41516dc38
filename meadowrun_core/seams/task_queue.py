"""At-least-once message queues with visibility timeouts (SQS / Azure Storage Queue model).

Each cloud's queue says how large one message may be (``max_message_bytes``) and how long a
writer should gather small writes into one message (``batch_seconds``): the client and agent
read these instead of assuming one cloud's limits, and send anything larger through the
object store (``seams.spill``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


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

    def create_queue(self, name: str) -> None: ...

    def delete_queue(self, name: str) -> None: ...

    def send_batch(self, name: str, bodies: list[bytes]) -> None: ...

    def receive(
        self, name: str, max_messages: int, visibility_timeout: float, wait_seconds: float
    ) -> list[QueueMessage]:
        """Hide and return up to ``max_messages``; waits up to ``wait_seconds`` for the first."""
        ...

    def delete(self, name: str, receipts: list[str]) -> None: ...

    def change_visibility(self, name: str, receipts: list[str], timeout: float) -> None: ...
