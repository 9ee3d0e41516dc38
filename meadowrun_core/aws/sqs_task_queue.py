"""``TaskQueue`` on SQS: standard queues, batched sends, long-poll receives, visibility."""

from __future__ import annotations

import base64
import time
from typing import Any

from meadowrun_core.aws import names
from meadowrun_core.seams.task_queue import QueueMessage

# SQS limits: 10 messages per batch call, 256 KiB per message, 20 s long poll.
_BATCH = 10
MAX_MESSAGE_BYTES = 192 * 1024  # base64 grows a body by 4/3 to SQS's 256 KiB


class SqsTaskQueue:
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
        url = self._url(name)
        for start in range(0, len(bodies), _BATCH):
            chunk = bodies[start : start + _BATCH]
            for body in chunk:
                if len(body) > MAX_MESSAGE_BYTES:
                    raise ValueError(
                        f"a queue message of {len(body)} bytes exceeds what fits in one SQS "
                        "message (192 KiB before base64); send large payloads through the "
                        "object store"
                    )
            response = self._sqs.send_message_batch(
                QueueUrl=url,
                Entries=[
                    {"Id": str(i), "MessageBody": base64.b64encode(body).decode()}
                    for i, body in enumerate(chunk)
                ],
            )
            if response.get("Failed"):
                raise RuntimeError(f"SQS refused messages: {response['Failed']}")

    def receive(
        self, name: str, max_messages: int, visibility_timeout: float, wait_seconds: float
    ) -> list[QueueMessage]:
        url = self._url(name)
        deadline = time.monotonic() + wait_seconds
        while True:
            remaining = max(0.0, deadline - time.monotonic())
            response = self._sqs.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=max(1, min(max_messages, _BATCH)),
                VisibilityTimeout=max(1, round(visibility_timeout)),
                WaitTimeSeconds=min(20, int(remaining)),
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
            if messages or time.monotonic() >= deadline:
                return messages
            time.sleep(min(0.05, remaining))

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
