"""At-least-once message queues with visibility timeouts (SQS / Azure Storage Queue model)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class QueueMessage:
    receipt: str
    body: bytes
    receive_count: int


class TaskQueue(Protocol):
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
