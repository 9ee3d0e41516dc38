"""Feeds one map job's tasks to the worker slots on this agent.

The feeder receives batches from the job's request queue, hands tasks one at a time to idle
slots, buffers results into the result queue, and deletes a request message only after the
results of all its tasks have been sent: tasks are at least once, and the client reports each
exactly once. Because it knows which task each slot runs, a dead worker's task is reported
precisely, and on an interruption notice every unfinished task is sent back to the queue with
its attempt count unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from meadowrun_core.seams.task_queue import TaskQueue
from meadowrun_core.serialization import Signer

log = logging.getLogger(__name__)

# A task in a message: (task_id, attempt, pickled argument)
TaskTuple = tuple[int, int, bytes]
# A result in a message: (task_id, attempt, ok, payload, failure_kind)
ResultTuple = tuple[int, int, bool, bytes, str]

RESULT_FLUSH_SECONDS = 0.003
RESULT_FLUSH_COUNT = 500


def encode_tasks(signer: Signer, tasks: list[TaskTuple]) -> bytes:
    return signer.sign(pickle.dumps(tasks, protocol=pickle.HIGHEST_PROTOCOL))


def decode_tasks(signer: Signer, body: bytes) -> list[TaskTuple]:
    return list(pickle.loads(signer.verify(body)))


def encode_results(signer: Signer, results: list[ResultTuple]) -> bytes:
    return signer.sign(pickle.dumps(results, protocol=pickle.HIGHEST_PROTOCOL))


def decode_results(signer: Signer, body: bytes) -> list[ResultTuple]:
    return list(pickle.loads(signer.verify(body)))


@dataclass
class _Held:
    receipt: str
    unfinished: dict[int, TaskTuple]


@dataclass(eq=False)
class Task:
    task_id: int
    attempt: int
    argument: bytes
    held: _Held


@dataclass
class MapFeeder:
    queues: TaskQueue
    signer: Signer
    request_queue: str
    result_queue: str
    max_attempts: int
    visibility_timeout: float
    pending: deque[Task] = field(default_factory=deque)
    held: dict[str, _Held] = field(default_factory=dict)
    slots: int = 0
    interrupted: bool = False
    _buffer: list[ResultTuple] = field(default_factory=list)
    _done_receipts: list[str] = field(default_factory=list)
    _receive_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _flusher: asyncio.Task[None] | None = None
    _last_extend: float = field(default_factory=time.monotonic)

    def start(self) -> None:
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_loop())

    async def next_tasks(self, stopping: asyncio.Event, count: int) -> list[Task]:
        """Up to ``count`` tasks for a slot; empty once the slot should stop."""
        first = await self.next_task(stopping)
        if first is None:
            return []
        tasks = [first]
        while self.pending and len(tasks) < count:
            tasks.append(self.pending.popleft())
        return tasks

    def put_back(self, tasks: list[Task]) -> None:
        """Tasks a slot took but never started go to the front, for the next slot."""
        self.pending.extendleft(reversed(tasks))

    async def next_task(self, stopping: asyncio.Event) -> Task | None:
        """The next task for a slot, or None once the slot should stop."""
        while not self.pending:
            if stopping.is_set() or self.interrupted:
                return None
            async with self._receive_lock:
                if self.pending:
                    break
                if stopping.is_set() or self.interrupted:
                    return None  # told to stop while another slot was receiving
                messages = await asyncio.to_thread(
                    self.queues.receive, self.request_queue, 1, self.visibility_timeout, 0.25
                )
                for message in messages:
                    self._accept(message.receipt, message.body, message.receive_count)
        return self.pending.popleft()

    def _accept(self, receipt: str, body: bytes, receive_count: int) -> None:
        tasks = decode_tasks(self.signer, body)
        held = _Held(receipt, {t[0]: t for t in tasks})
        self.held[receipt] = held
        if receive_count > self.max_attempts + 1:
            # Delivered again and again: its instance keeps dying. Stop the loop here.
            for task_id, attempt, _ in tasks:
                self.complete(
                    Task(task_id, attempt, b"", held),
                    False,
                    pickle.dumps((None, f"task lost with its instance {receive_count - 1} times")),
                    "lost",
                )
            return
        for task_id, attempt, argument in tasks:
            self.pending.append(Task(task_id, attempt, argument, held))

    def complete(self, task: Task, ok: bool, payload: bytes, failure_kind: str = "") -> None:
        self._buffer.append((task.task_id, task.attempt, ok, payload, failure_kind))
        held = task.held
        if held.unfinished.pop(task.task_id, None) is not None and not held.unfinished:
            self.held.pop(held.receipt, None)
            self._done_receipts.append(held.receipt)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(RESULT_FLUSH_SECONDS)
            await self.flush()
            if time.monotonic() - self._last_extend > self.visibility_timeout / 3:
                self._last_extend = time.monotonic()
                receipts = list(self.held)
                await asyncio.to_thread(
                    self.queues.change_visibility,
                    self.request_queue,
                    receipts,
                    self.visibility_timeout,
                )

    async def flush(self) -> None:
        """Send buffered results, then delete the request messages they complete."""
        if self._buffer:
            batches = [
                self._buffer[i : i + RESULT_FLUSH_COUNT]
                for i in range(0, len(self._buffer), RESULT_FLUSH_COUNT)
            ]
            self._buffer = []
            bodies = [encode_results(self.signer, batch) for batch in batches]
            await asyncio.to_thread(self.queues.send_batch, self.result_queue, bodies)
        if self._done_receipts:
            receipts, self._done_receipts = self._done_receipts, []
            await asyncio.to_thread(self.queues.delete, self.request_queue, receipts)

    async def give_back(self) -> None:
        """Return every unfinished task to the queue, attempts unchanged (interruption, or no
        slot left here), so another instance picks them up at once."""
        self.pending.clear()
        held, self.held = list(self.held.values()), {}
        resend = [t for h in held for t in h.unfinished.values()]
        if resend:
            await asyncio.to_thread(
                self.queues.send_batch,
                self.request_queue,
                [
                    encode_tasks(self.signer, resend[i : i + 100])
                    for i in range(0, len(resend), 100)
                ],
            )
        await self.flush()
        receipts = [h.receipt for h in held]
        await asyncio.to_thread(self.queues.delete, self.request_queue, receipts)
        log.info("returned %d unfinished tasks of %s to the queue", len(resend), self.request_queue)

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        await self.give_back()

    def info(self) -> dict[str, Any]:
        return {"pending": len(self.pending), "held": len(self.held)}
