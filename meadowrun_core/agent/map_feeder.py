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
import contextlib
import logging
import pickle
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from meadowrun_core.map_messages import (
    MAX_TASKS_PER_MESSAGE,
    RESULT_FLUSH_COUNT,
    WAKE,
    ResultTuple,
    TaskTuple,
    decode_message,
    encode_messages,
)
from meadowrun_core.seams.object_store import ObjectStore
from meadowrun_core.seams.task_queue import TaskQueue, call, receive_waiting
from meadowrun_core.serialization import Signer

log = logging.getLogger(__name__)

# While other tasks still run on this instance, a result waits up to this long for theirs,
# so that results finishing close together share one message (issue 18: sending each of
# 200 x 50 ms results alone was 40% of the map's coordinating CPU, agent and client).
HOLD_SECONDS = 0.05


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
    store: ObjectStore | None = None
    pending: deque[Task] = field(default_factory=deque)
    held: dict[str, _Held] = field(default_factory=dict)
    slots: int = 0
    interrupted: bool = False
    _buffer: list[ResultTuple] = field(default_factory=list)
    _first_buffered: float = 0.0  # when the oldest result in the buffer was added
    _out: set[Task] = field(default_factory=set)  # handed to slots, not completed or put back
    _quiet: asyncio.Future[None] | None = None  # resolved when ``_out`` empties
    _done_receipts: list[str] = field(default_factory=list)
    _receiving: asyncio.Task[None] | None = None
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)
    _has_output: asyncio.Event = field(default_factory=asyncio.Event)
    _closed: bool = False
    _flusher: asyncio.Task[None] | None = None
    _last_flush: float = 0.0
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
        self._out.update(tasks)
        return tasks

    def take_spare(self, count: int) -> list[Task]:
        """Up to ``count`` tasks at once, only from those beyond one for every slot here (a
        slot queueing work ahead never leaves another slot waiting)."""
        spare = min(count, len(self.pending) - self.slots)
        tasks = [self.pending.popleft() for _ in range(spare)] if spare > 0 else []
        self._out.update(tasks)
        return tasks

    def put_back(self, tasks: list[Task]) -> None:
        """Tasks a slot took but never started go to the front, for the next slot."""
        self.pending.extendleft(reversed(tasks))
        self._out.difference_update(tasks)
        self._wake_if_quiet()

    async def next_task(self, stopping: asyncio.Event) -> Task | None:
        """The next task for a slot, or None once the slot should stop. One long-polling
        receive runs at a time for all slots; a slot told to stop returns at once, without
        waiting for that receive."""
        while not self.pending:
            if stopping.is_set() or self.interrupted:
                return None
            arrived = self._arrived
            if self._receiving is None:
                self._receiving = asyncio.create_task(self._receive())
            stop_wait = asyncio.ensure_future(stopping.wait())
            arrive_wait = asyncio.ensure_future(arrived.wait())
            try:
                await asyncio.wait([stop_wait, arrive_wait], return_when=asyncio.FIRST_COMPLETED)
            finally:
                stop_wait.cancel()
                arrive_wait.cancel()
        return self.pending.popleft()

    async def _receive(self) -> None:
        """One long poll of the request queue; wakes every waiting slot when it ends."""
        started = time.monotonic()
        wait = self.queues.max_wait_seconds
        try:
            messages = await receive_waiting(
                self.queues,
                self.request_queue,
                max(1, min(10, self.slots)),
                self.visibility_timeout,
                wait,
            )
        except Exception as exc:  # e.g. the queue was deleted as the map ended
            log.debug("receive from %s failed: %s", self.request_queue, exc)
            messages = []
            if not self._closed:
                await asyncio.sleep(1.0)
        try:
            if self._closed or self.interrupted:
                # nobody here takes them any more: hand them straight back
                if messages:
                    await call(
                        self.queues,
                        self.queues.change_visibility,
                        self.request_queue,
                        [m.receipt for m in messages],
                        0,
                    )
                return
            wakes = [m.receipt for m in messages if m.body == WAKE]
            for message in messages:
                if message.body != WAKE:
                    self._accept(message.receipt, message.body, message.receive_count)
            if wakes:
                self._done_receipts.extend(wakes)
            elif not messages and time.monotonic() - started < min(1.0, wait / 2):
                await asyncio.sleep(0.05)  # a queue that answers at once: do not spin
        finally:
            self._receiving = None
            arrived, self._arrived = self._arrived, asyncio.Event()
            arrived.set()

    def _accept(self, receipt: str, body: bytes, receive_count: int) -> None:
        tasks: list[TaskTuple] = decode_message(self.signer, self.store, body)
        if not tasks:  # dropped (see decode_message): delete it, never deliver it again
            self._done_receipts.append(receipt)
            return
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

    def complete(
        self,
        task: Task,
        ok: bool,
        payload: bytes,
        failure_kind: str = "",
        slot: str = "",
        seconds: float = 0.0,
    ) -> None:
        """Buffer a task's result: ``slot`` is the job id of the slot that ran it ("" if none
        did) and ``seconds`` how long it ran there (what ``TaskResult.cost`` prices)."""
        if not self._buffer:
            self._first_buffered = time.monotonic()
        self._buffer.append((task.task_id, task.attempt, ok, payload, failure_kind, slot, seconds))
        self._has_output.set()
        self._out.discard(task)
        self._wake_if_quiet()
        held = task.held
        if held.unfinished.pop(task.task_id, None) is not None and not held.unfinished:
            self.held.pop(held.receipt, None)
            self._done_receipts.append(held.receipt)

    def _wake_if_quiet(self) -> None:
        if not self._out and self._quiet is not None and not self._quiet.done():
            self._quiet.set_result(None)

    async def _hold(self) -> None:
        """Wait until no task runs here any more, or the oldest buffered result is
        ``HOLD_SECONDS`` old: the last results of a map go at once, the others in company."""
        remaining = self._first_buffered + HOLD_SECONDS - time.monotonic()
        if not self._out or not self._buffer or remaining <= 0:
            return
        loop = asyncio.get_running_loop()
        quiet = self._quiet = loop.create_future()
        timer = loop.call_later(remaining, _resolve, quiet)
        try:
            await quiet
        finally:
            timer.cancel()
            self._quiet = None

    async def _flush_loop(self) -> None:
        """Send results as soon as they exist, but at most once per the queue's
        ``batch_seconds`` and, while other tasks still run here, once their results are in or
        the oldest has waited ``HOLD_SECONDS`` (results arriving meanwhile share the next
        message); extend the visibility of held messages every third of the timeout."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._has_output.wait(), self.visibility_timeout / 3)
            wait = self._last_flush + self.queues.batch_seconds - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            await self._hold()
            self._has_output.clear()
            try:
                await self.flush()
                if time.monotonic() - self._last_extend > self.visibility_timeout / 3:
                    self._last_extend = time.monotonic()
                    if self.held:
                        await call(
                            self.queues,
                            self.queues.change_visibility,
                            self.request_queue,
                            list(self.held),
                            self.visibility_timeout,
                        )
            except Exception:
                log.exception("sending results of %s failed; retrying", self.request_queue)
                await asyncio.sleep(1.0)

    async def flush(self) -> None:
        """Send buffered results, then delete the request messages they complete."""
        if self._buffer:
            results, self._buffer = self._buffer, []
            self._last_flush = time.monotonic()
            try:
                bodies = encode_messages(
                    self.signer,
                    self.store,
                    results,
                    RESULT_FLUSH_COUNT,
                    self.queues.max_message_bytes,
                )
                await call(self.queues, self.queues.send_batch, self.result_queue, bodies)
            except BaseException:
                self._buffer[:0] = results  # not sent: keep them for the next flush
                raise
        if self._done_receipts:
            receipts, self._done_receipts = self._done_receipts, []
            await call(self.queues, self.queues.delete, self.request_queue, receipts)

    async def give_back(self) -> None:
        """Return every unfinished task to the queue, attempts unchanged (interruption, or no
        slot left here), so another instance picks them up at once."""
        self.pending.clear()
        self._out.clear()
        self._wake_if_quiet()
        held, self.held = list(self.held.values()), {}
        resend = [t for h in held for t in h.unfinished.values()]
        if resend:
            bodies = encode_messages(
                self.signer,
                self.store,
                resend,
                MAX_TASKS_PER_MESSAGE,
                self.queues.max_message_bytes,
            )
            await call(self.queues, self.queues.send_batch, self.request_queue, bodies)
        await self.flush()
        receipts = [h.receipt for h in held]
        if receipts:
            await call(self.queues, self.queues.delete, self.request_queue, receipts)
        log.info("returned %d unfinished tasks of %s to the queue", len(resend), self.request_queue)

    async def close(self) -> None:
        self._closed = True
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None
        await self.give_back()

    def info(self) -> dict[str, Any]:
        return {"pending": len(self.pending), "held": len(self.held)}


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
