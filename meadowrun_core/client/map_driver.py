"""The client side of a map job.

Tasks go into a request queue in batches; worker slots on allocated instances pull them; results
come back through a result queue. The driver reports each task exactly once (the first success,
or the failure of its last attempt), retries failures up to ``max_num_task_attempts``, and
replaces slots that die or are interrupted while tasks remain.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import time
import uuid
from collections.abc import AsyncGenerator, Callable
from typing import Any

from meadowrun_core import frames
from meadowrun_core.backend import Backend
from meadowrun_core.client.allocation import allocate
from meadowrun_core.client.job_events import damaged_object, run_on_instance
from meadowrun_core.client.map_progress import progress_bar
from meadowrun_core.client.memory_retry import OUT_OF_MEMORY_KINDS, bigger_wave, more_memory
from meadowrun_core.client.payload import repair
from meadowrun_core.client.result_cache import MapCache
from meadowrun_core.client.results import failure_exception
from meadowrun_core.client.runtime import ClientRuntime
from meadowrun_core.client.task_costs import TaskCosts
from meadowrun_core.deployment.spec import PreparedDeployment
from meadowrun_core.exceptions import Attempt, MeadowrunError, TaskResult
from meadowrun_core.map_messages import (
    MAX_TASKS_PER_MESSAGE,
    WAKE,
    TaskTuple,
    decode_message,
    encode_messages,
)
from meadowrun_core.resources import Resources
from meadowrun_core.seams.task_queue import QueueMessage, receive_waiting

log = logging.getLogger(__name__)

TOP_UP_INTERVAL_SECONDS = 0.5
# Received results are never redelivered while the map runs (the queue is deleted at its end),
# so they are not deleted one request at a time; only a map with this many undeleted results
# deletes them (SQS limits in-flight messages per queue to about 120,000).
RESULT_VISIBILITY_SECONDS = 12 * 3600
MAX_UNDELETED_RESULTS = 50_000


def tasks_per_message(num_tasks: int, workers: int) -> int:
    """Batch tiny tasks so queue traffic stays small, but keep ~16 batches per worker so that
    the last batches still balance across workers."""
    return max(1, min(MAX_TASKS_PER_MESSAGE, num_tasks // (workers * 16)))


class MapJob:
    def __init__(
        self,
        runtime: ClientRuntime,
        backend: Backend,
        function_key: str,
        arguments: list[bytes],
        resources: Resources,
        deployment: PreparedDeployment,
        workers: int,
        max_attempts: int,
        description: str,
    ) -> None:
        self.runtime = runtime
        self.backend = backend
        self.function_key = function_key
        self.arguments = arguments
        self.resources = resources
        self.deployment = deployment
        self.target_workers = workers
        self.max_attempts = max_attempts
        self.description = description
        map_id = uuid.uuid4().hex[:12]
        self.map_id = map_id
        self.request_queue = f"mr-{map_id}-requests"
        self.result_queue = f"mr-{map_id}-results"
        self.attempts: dict[int, int] = {}
        self.reported: set[int] = set()
        self.slots: dict[str, asyncio.Task[tuple[frames.Final, bytes]]] = {}
        self.placements: dict[str, Any] = {}
        self.task_costs = TaskCosts(backend, resources)
        self._last_top_up = 0.0
        self._receiving: asyncio.Task[list[Any]] | None = None
        self._undeleted: list[str] = []
        self._repaired: dict[str, int] = {}
        self._healed_tasks: set[int] = set()
        self.redeploy: Callable[[], PreparedDeployment] | None = None
        # a progress bar on stderr: True, False, or None (only when stderr is a terminal)
        self.progress: bool | None = None
        # cache=True: results found before anything ran, and where new successes are stored
        self.cached: list[TaskResult] = []
        self.cache: MapCache | None = None
        self.task_timeout: float | None = None  # seconds a task may run on its worker
        self.priority = 1.0  # the slots' weight in the raffle for room (seams/raffle.py)
        # retry_with_more_memory: tasks out of memory wait for a wave of bigger slots
        self.more_memory = False
        self.first_attempts: dict[int, int] = {}  # a wave's tasks may start past attempt 1
        self.history: dict[int, tuple[Attempt, ...]] = {}  # their earlier attempts
        self.memory_retries: dict[int, int] = {}  # task id -> the attempt out of memory
        self.bigger_resources: Resources | bool | None = False  # False: not worked out yet

    # --- setup and teardown ------------------------------------------------------------
    async def enqueue(self, tasks: list[TaskTuple]) -> None:
        """Tasks in as few messages as balance allows, each within the queue's size limit;
        a large argument travels through the object store (seams.spill)."""
        size = tasks_per_message(len(self.arguments) - len(self.cached), self.target_workers)
        queues = self.backend.queues
        bodies = await asyncio.to_thread(
            encode_messages,
            self.backend.signer,
            self.backend.store,
            tasks,
            size,
            queues.max_message_bytes,
        )
        await asyncio.to_thread(queues.send_batch, self.request_queue, bodies)

    async def start_slots(self, minimum: int) -> None:
        wanted = min(self.target_workers, len(self.arguments) - len(self.reported)) - len(
            self.slots
        )
        if wanted <= 0:
            return
        placements = await allocate(
            self.backend,
            self.resources,
            wanted,
            self.runtime.client_id,
            self.description,
            minimum=min(minimum, wanted),
            job_prefix=f"map-{self.map_id}",
            priority=self.priority,
        )
        header = {
            "kind": "map",
            "deployment": self.deployment.to_json(),
            "map": {
                "request_queue": self.request_queue,
                "result_queue": self.result_queue,
                "function_key": self.function_key,
                "max_attempts": self.max_attempts,
                **({} if self.task_timeout is None else {"task_timeout": self.task_timeout}),
            },
        }
        for placement in placements:
            self.placements[placement.job_id] = placement
            self.slots[placement.job_id] = asyncio.create_task(
                run_on_instance(self.runtime, self.backend, placement, header)
            )

    async def stop_slots(self, kill: bool) -> None:
        for job_id, slot in self.slots.items():
            placement = self.placements[job_id]
            if slot.done() or placement.instance.address is None:
                continue
            conn = await self.runtime.connection(placement.instance, self.backend)
            conn.send(
                frames.Cancel(type="cancel", job_id=job_id, reason="map job cancelled")
                if kill
                else frames.Stop(type="stop", job_id=job_id, reason="map job ended")
            )
        if self.slots:
            await asyncio.wait(list(self.slots.values()), timeout=10)

    # --- the loop -----------------------------------------------------------------------
    async def result_batches(self) -> AsyncGenerator[list[TaskResult], None]:
        """Results as they arrive, a list per receive (crossing threads per batch, not per
        task, keeps the sync API as fast as the async one). One long-polling receive is in
        flight at a time; slot changes are handled while it waits."""
        if self.cached:  # from the result cache: nothing runs (or is launched) for these
            self.reported.update(r.task_id for r in self.cached)
            yield self.cached
            if len(self.reported) == len(self.arguments):
                return
        queues = self.backend.queues
        await asyncio.to_thread(queues.create_queue, self.request_queue)
        await asyncio.to_thread(queues.create_queue, self.result_queue)
        finished = False
        with progress_bar(len(self.arguments), self.description, self.progress) as progress:
            progress.update(len(self.reported))
            try:
                tasks = [
                    (i, self.first_attempts.get(i, 1), a)
                    for i, a in enumerate(self.arguments)
                    if i not in self.reported
                ]
                self.attempts = {task_id: attempt for task_id, attempt, _ in tasks}
                await self.enqueue(tasks)
                await self.start_slots(minimum=1)
                while len(self.reported) < len(self.arguments):
                    if self._receiving is None:
                        self._receiving = asyncio.create_task(self._receive())
                    await asyncio.wait(
                        [self._receiving, *self.slots.values()],
                        timeout=TOP_UP_INTERVAL_SECONDS,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                    if self._receiving.done():
                        decoded, self._receiving = self._receiving.result(), None
                        batch = []
                        for results in decoded:
                            batch.extend(await self.handle(results))
                        if batch:
                            progress.update(len(batch))
                            yield batch
                    await self.check_slots()
                finished = True
            finally:
                await asyncio.shield(self.cleanup(kill=not finished))
        if self.memory_retries:  # this wave's slots are gone: room for bigger ones
            async for batch in bigger_wave(self):
                yield batch

    async def _out_of_memory_retry(self, task_id: int, attempt: int, kind: str) -> bool:
        """With retry_with_more_memory: whether a task that ran out of memory waits for the
        wave of bigger slots (attempts left, and the cloud has more memory to give)."""
        if not self.more_memory or kind not in OUT_OF_MEMORY_KINDS:
            return False
        if attempt >= self.max_attempts:
            return False
        if self.bigger_resources is False:
            self.bigger_resources = await asyncio.to_thread(
                more_memory, self.backend, self.resources
            )
        if self.bigger_resources is None:
            return False
        self.reported.add(task_id)  # done in this wave
        self.memory_retries[task_id] = attempt
        self._record(task_id, attempt, "out_of_memory")
        return True

    def _record(self, task_id: int, attempt: int, outcome: str) -> tuple[Attempt, ...]:
        done = Attempt(attempt, self.resources.memory_gb, outcome)
        history = self.history[task_id] = (*self.history.get(task_id, ()), done)
        return history

    async def _receive(self) -> list[Any]:
        """One long poll of the result queue, decoded (off the event loop's thread)."""
        queues, signer, store = self.backend.queues, self.backend.signer, self.backend.store

        def receive(messages: list[QueueMessage]) -> list[Any]:
            self._undeleted.extend(m.receipt for m in messages)
            if len(self._undeleted) >= MAX_UNDELETED_RESULTS:
                receipts, self._undeleted = self._undeleted, []
                queues.delete(self.result_queue, receipts)
            return [decode_message(signer, store, m.body) for m in messages if m.body != WAKE]

        if queues.local:  # looked at from the loop itself (seams.task_queue.receive_waiting)
            wait = queues.max_wait_seconds
            messages = await receive_waiting(
                queues, self.result_queue, 10, RESULT_VISIBILITY_SECONDS, wait
            )
            return receive(messages)
        return await asyncio.to_thread(
            lambda: receive(
                queues.receive(
                    self.result_queue, 10, RESULT_VISIBILITY_SECONDS, queues.max_wait_seconds
                )
            )
        )

    async def handle(self, results: list[tuple[Any, ...]]) -> list[TaskResult]:
        out: list[TaskResult] = []
        retry: list[TaskTuple] = []
        succeeded: list[tuple[int, bytes]] = []
        for result in results:
            task_id, attempt, ok, payload, kind = result[:5]
            if task_id in self.reported:
                continue  # a duplicate from an at-least-once redelivery
            self.task_costs.add(result, self.placements)
            if ok:
                self.reported.add(task_id)
                value = pickle.loads(payload)
                cost = self.task_costs.pop(task_id)
                tried = self._record(task_id, attempt, "succeeded") if self.more_memory else ()
                out.append(
                    TaskResult(task_id, True, value, None, attempt, cost=cost, attempts=tried)
                )
                succeeded.append((task_id, payload))
                continue
            if attempt < self.attempts[task_id]:
                continue  # a stale failure of an attempt already retried
            if kind == "load" and await self._repaired_blob(task_id, payload):
                # its function was damaged in the store and is replaced: not the task's fault
                self.attempts[task_id] = attempt + 1
                retry.append((task_id, attempt + 1, self.arguments[task_id]))
                continue
            if await self._out_of_memory_retry(task_id, attempt, kind):
                continue
            if attempt < self.max_attempts and kind != "lost":
                log.info("task %d failed on attempt %d (%s); retrying", task_id, attempt, kind)
                if self.more_memory:
                    self._record(task_id, attempt, kind or "failed")
                self.attempts[task_id] = attempt + 1
                retry.append((task_id, attempt + 1, self.arguments[task_id]))
                continue
            self.reported.add(task_id)
            stage = "run" if kind in ("died", "out_of_memory") else kind
            exception = failure_exception(payload, stage, f"task {task_id}, attempt {attempt}")
            if kind in ("died", "lost", "timeout", "out_of_memory"):
                exception.message = (
                    f"task {task_id} attempt {attempt}: {exception.remote_traceback}"
                )
                exception.remote_traceback = ""
            cost = self.task_costs.pop(task_id)
            tried = self._record(task_id, attempt, kind or "failed") if self.more_memory else ()
            out.append(
                TaskResult(task_id, False, None, exception, attempt, cost=cost, attempts=tried)
            )
        if succeeded and self.cache is not None:  # stored before the caller sees them
            await asyncio.to_thread(self.cache.store, succeeded)
        if retry:
            await self.enqueue(retry)
        return out

    async def _repaired_blob(self, task_id: int, payload: bytes) -> bool:
        """Whether a task failed to load because a blob was damaged, now replaced (each task
        is given this second chance once)."""
        damaged = damaged_object({"status": "failed", "stage": "load"}, payload)
        if damaged is None or task_id in self._healed_tasks:
            return False
        self._healed_tasks.add(task_id)
        if damaged not in self._repaired:
            self._repaired[damaged] = 1
            return await asyncio.to_thread(repair, self.backend, damaged)
        return True

    async def check_slots(self) -> None:
        for job_id, slot in list(self.slots.items()):
            if not slot.done():
                continue
            del self.slots[job_id]
            final, payload = slot.result()
            damaged = damaged_object(final, payload)
            if damaged is not None and self._repaired.get(damaged, 0) <= self.target_workers:
                # a blob this client uploaded was damaged in the store: replace it (once; the
                # other slots started before that fail too); the slots started next load it
                self._repaired[damaged] = self._repaired.get(damaged, 0) + 1
                if self._repaired[damaged] > 1:
                    continue
                if await asyncio.to_thread(repair, self.backend, damaged):
                    if self.redeploy is not None:
                        self.deployment = await asyncio.to_thread(self.redeploy)
                    continue
            if final["status"] == "failed" and final.get("stage") == "load":
                raise (
                    failure_exception(payload, "load", f"map worker {job_id}")
                    if payload
                    else (
                        MeadowrunError(
                            f"map worker {job_id} could not load its code: {final.get('message')}"
                        )
                    )
                )
            if final["status"] not in ("stopped",):
                log.warning(
                    "map worker %s ended: %s %s", job_id, final["status"], final.get("message", "")
                )
        outstanding = len(self.arguments) - len(self.reported)
        if (
            outstanding
            and len(self.slots) < min(self.target_workers, outstanding)
            and time.monotonic() - self._last_top_up
            > (0 if not self.slots else TOP_UP_INTERVAL_SECONDS)
        ):
            self._last_top_up = time.monotonic()
            await self.start_slots(minimum=0 if self.slots else 1)

    async def cleanup(self, kill: bool) -> None:
        queues = self.backend.queues
        receiving, self._receiving = self._receiving, None
        try:
            if receiving is not None and not receiving.done():
                # wake our own long poll, so no thread waits on a queue about to go away
                receiving.add_done_callback(_ignore_outcome)
                await asyncio.to_thread(queues.send_batch, self.result_queue, [WAKE])
            await self.stop_slots(kill)
        finally:
            await asyncio.to_thread(queues.delete_queue, self.request_queue)
            await asyncio.to_thread(queues.delete_queue, self.result_queue)


def _ignore_outcome(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: an abandoned receive's failure is of no interest
