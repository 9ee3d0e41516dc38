"""``TaskQueue`` on SQS: standard queues, batched sends, long-poll receives, visibility.

Every receive waits server-side (long polling, up to 20 s per request), so an idle queue
costs about three requests a minute instead of a busy loop; writers gather results for
``batch_seconds`` because each request is billed."""

from __future__ import annotations

import asyncio
import base64
import math
from typing import Any

from meadowrun_core.aws import names
from meadowrun_core.seams.task_queue import QueueMessage

# SQS limits: 10 messages and 256 KiB per batch call, 256 KiB per message, 20 s long poll.
_BATCH = 10
_BATCH_CALL_BYTES = 256 * 1024 - 4096  # leave room for the request's other fields
MAX_MESSAGE_BYTES = 192 * 1024 - 1024  # base64 grows a body by 4/3 to SQS's 256 KiB
MAX_WAIT_SECONDS = 20.0


def _encoded(body: bytes) -> str:
    return base64.b64encode(body).decode()


class SqsTaskQueue:
    max_message_bytes = MAX_MESSAGE_BYTES
    batch_seconds = 0.25
    max_wait_seconds = MAX_WAIT_SECONDS
    local = False  # every call is a request: made in a thread

    def __init__(self, sqs: Any, prefix: str = "meadowrun-") -> None:
        self._sqs = sqs
        self._prefix = prefix
        self._urls: dict[str, str] = {}

    def _url(self, name: str) -> str:
        url = self._urls.get(name)
        if url is None:
            url = self._sqs.get_queue_url(QueueName=self._prefix + name)["QueueUrl"]
            self._urls[name] = url
        return url

    def create_queue(self, name: str) -> None:
        response = self._sqs.create_queue(
            QueueName=self._prefix + name,
            tags={names.TAG_KEY: names.TAG_VALUE},
        )
        self._urls[name] = response["QueueUrl"]

    def delete_queue(self, name: str) -> None:
        self._sqs.delete_queue(QueueUrl=self._url(name))
        self._urls.pop(name, None)

    def send_batch(self, name: str, bodies: list[bytes]) -> None:
        """As few SendMessageBatch calls as SQS's limits (10 messages, 256 KiB) allow."""
        url = self._url(name)
        encoded = []
        for body in bodies:
            if len(body) > MAX_MESSAGE_BYTES:
                raise ValueError(
                    f"a queue message of {len(body)} bytes exceeds max_message_bytes "
                    f"({MAX_MESSAGE_BYTES}); send it through the object store (seams.spill)"
                )
            encoded.append(_encoded(body))
        call: list[str] = []
        size = 0
        for text in encoded:
            if call and (len(call) == _BATCH or size + len(text) > _BATCH_CALL_BYTES):
                self._send(url, call)
                call, size = [], 0
            call.append(text)
            size += len(text)
        if call:
            self._send(url, call)

    def _send(self, url: str, texts: list[str]) -> None:
        response = self._sqs.send_message_batch(
            QueueUrl=url,
            Entries=[{"Id": str(i), "MessageBody": text} for i, text in enumerate(texts)],
        )
        if response.get("Failed"):
            raise RuntimeError(f"SQS refused messages: {response['Failed']}")

    def receive(
        self, name: str, max_messages: int, visibility_timeout: float, wait_seconds: float
    ) -> list[QueueMessage]:
        """One long-polling request per 20 s of ``wait_seconds`` (whole seconds, as SQS
        counts them); below one second, a single short poll."""
        url = self._url(name)
        remaining = max(0, math.ceil(wait_seconds - 1e-9))
        while True:
            wait = min(int(MAX_WAIT_SECONDS), remaining)
            response = self._sqs.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=max(1, min(max_messages, _BATCH)),
                VisibilityTimeout=max(1, round(visibility_timeout)),
                WaitTimeSeconds=wait,
                MessageSystemAttributeNames=["ApproximateReceiveCount"],
            )
            messages = [
                QueueMessage(
                    receipt=m["ReceiptHandle"],
                    body=base64.b64decode(m["Body"]),
                    receive_count=int(m["Attributes"]["ApproximateReceiveCount"]),
                )
                for m in response.get("Messages", [])
            ]
            remaining -= wait
            if messages or remaining <= 0:
                return messages

    async def receive_async(
        self, name: str, max_messages: int, visibility_timeout: float, wait_seconds: float
    ) -> list[QueueMessage]:
        """A long poll from an event loop: in a thread, it is a network request."""
        return await asyncio.to_thread(
            self.receive, name, max_messages, visibility_timeout, wait_seconds
        )

    def delete(self, name: str, receipts: list[str]) -> None:
        url = self._url(name)
        for start in range(0, len(receipts), _BATCH):
            chunk = receipts[start : start + _BATCH]
            self._sqs.delete_message_batch(
                QueueUrl=url,
                Entries=[{"Id": str(i), "ReceiptHandle": r} for i, r in enumerate(chunk)],
            )

    def change_visibility(self, name: str, receipts: list[str], timeout: float) -> None:
        url = self._url(name)
        for start in range(0, len(receipts), _BATCH):
            chunk = receipts[start : start + _BATCH]
            self._sqs.change_message_visibility_batch(
                QueueUrl=url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": r, "VisibilityTimeout": max(0, round(timeout))}
                    for i, r in enumerate(chunk)
                ],
            )
