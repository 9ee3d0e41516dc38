"""A map job's slot: a worker fed tasks by the map's feeder on this instance (one feeder per
map, shared by its slots here) until none are left or the slot is stopped."""

from __future__ import annotations

import asyncio
import logging
import pickle
import time
from collections import deque

from meadowrun_core import frames
from meadowrun_core.agent.job_setup import CodeLoadError, prepare_worker, worker_gone
from meadowrun_core.agent.map_feeder import MapFeeder, Task
from meadowrun_core.agent.running_job import RunningJob
from meadowrun_core.agent.state import AgentState
from meadowrun_core.agent.worker_pool import WorkerDiedError, WorkerProcess

log = logging.getLogger(__name__)


async def run_map_slot(
    state: AgentState, job: RunningJob, header: frames.RunMap
) -> frames.JobOutcome:
    """Run tasks until the feeder has none left for this slot; the slot's outcome."""
    spec = header["map"]
    feeder = _feeder(state, spec)
    feeder.slots += 1
    worker: WorkerProcess | None = None
    in_flight: list[Task] = []
    pace = _BatchPace()
    try:
        worker = await prepare_worker(state, job, header["deployment"])
        call: frames.CallBatch = {
            "type": "call_batch",
            "function_key": spec["function_key"],
            "pid_file": str(state.folders.pid_file(job.job_id)),
        }
        timeout = spec.get("task_timeout")
        while in_flight := await feeder.next_tasks(job.stopping, pace.size):
            # the worker streams one reply per task, so a death pins down its task
            await worker.send(state.signer, call, pickle.dumps([t.argument for t in in_flight]))
            pace.restart()
            batches = deque([len(in_flight)])  # sizes of the batches sent, oldest first
            while in_flight:
                # a second batch queued behind the running one while this instance has tasks
                # to spare: the worker starts it as it replies, with no gap between batches
                if (
                    len(batches) == 1
                    and not job.stopping.is_set()
                    and (ahead := feeder.take_spare(pace.size))
                ):
                    await worker.send(state.signer, call, pickle.dumps([t.argument for t in ahead]))
                    in_flight.extend(ahead)
                    batches.append(len(ahead))
                try:
                    # the worker runs a batch's tasks in turn: each is timed from the reply
                    # before it (or the batch's sending)
                    reply, payload = await _receive(worker, state, timeout)
                except TimeoutError:
                    assert timeout is not None
                    why = f"timed out: ran past its timeout of {timeout:g} s; worker killed"
                    failure = pickle.dumps((None, why))
                    task = in_flight.pop(0)
                    feeder.complete(task, False, failure, "timeout", job.job_id, pace.record())
                    log.info(
                        "%s: task %d timed out after %g s; %d unstarted task(s) handed back",
                        job.job_id,
                        task.task_id,
                        timeout,
                        len(in_flight),
                    )
                    feeder.put_back(in_flight)  # not started: for the next worker
                    in_flight = []
                    batches.clear()
                    state.pool.discard(worker)  # kills it: the task may be stuck anywhere
                    worker = None
                    worker = await prepare_worker(state, job, header["deployment"])
                    continue
                task = in_flight.pop(0)
                kind = "" if reply["ok"] else reply["stage"]
                slot_seconds = pace.record(reply.get("seconds"))
                feeder.complete(task, reply["ok"], payload, kind, job.job_id, slot_seconds)
                batches[0] -= 1
                if not batches[0]:
                    batches.popleft()
                    worker.drain_output()
        state.pool.release(worker)
        if feeder.interrupted:
            return {"status": "interrupted", "message": "instance interruption notice"}
        return {"status": "stopped"}
    except CodeLoadError as exc:
        return {"status": "failed", "stage": "load", "message": _failure_text(exc.failure)}
    except WorkerDiedError as exc:
        died: frames.JobOutcome = (
            worker_gone(state, job, worker, exc)
            if worker
            else {"status": "died", "message": str(exc)}
        )
        if in_flight and job.end_status != "interrupted":
            # (an interruption's tasks went back to the queue, attempts unchanged, before
            # the kill: see reconciler.handle_interruption)
            running, *not_started = in_flight
            message = pickle.dumps((None, died["message"]))
            how = "out_of_memory" if died["status"] == "out_of_memory" else "died"
            feeder.complete(running, False, message, how, job.job_id, pace.record())
            feeder.put_back(not_started)
        return died
    finally:
        feeder.slots -= 1
        if feeder.slots == 0:
            state.feeders.pop(spec["request_queue"], None)
            await feeder.close()
            if job.end_status == "lease_expired":
                state.queues.delete_queue(spec["request_queue"])
                state.queues.delete_queue(spec["result_queue"])


async def _receive(
    worker: WorkerProcess, state: AgentState, timeout: float | None
) -> tuple[frames.Result, bytes]:
    """The worker's next task result; TimeoutError past ``timeout`` seconds."""
    if timeout is None:
        return await worker.receive(state.signer)
    return await asyncio.wait_for(worker.receive(state.signer), timeout)


def _feeder(state: AgentState, spec: frames.MapSpec) -> MapFeeder:
    """The map's feeder on this instance, started with its first slot here."""
    feeder = state.feeders.get(spec["request_queue"])
    if feeder is None:
        feeder = MapFeeder(
            state.queues,
            state.signer,
            spec["request_queue"],
            spec["result_queue"],
            spec["max_attempts"],
            state.settings.visibility_timeout_seconds,
            store=state.store,
        )
        state.feeders[spec["request_queue"]] = feeder
        feeder.start()
    return feeder


class _BatchPace:
    """How many tasks to hand a worker at once: about 5 ms of work, so tiny tasks share a
    frame while long ones go one by one and stay balanced across workers.

    Sized by the worker's own measure of each task, not by the time between its replies:
    on a machine with more processes than cores the replies come late whatever the tasks
    cost, and sizing by them shrank batches to one task, which made more frames, more
    context switches and later replies again (64 one-slot instances on 2 cores fell from
    30,000 to 2,000 tasks/s; issue 18)."""

    TARGET_SECONDS = 0.005
    MAX_TASKS = 64

    def __init__(self) -> None:
        self.size = 1
        self._last = time.perf_counter()
        self._mean: float | None = None

    def record(self, task_seconds: float | None = None) -> float:
        """A task's reply came, with the worker's ``task_seconds`` for it if it said: the
        seconds since the previous reply (or since the batch was sent), which is how long
        the task held the slot."""
        now = time.perf_counter()
        elapsed, self._last = now - self._last, now
        ran = elapsed if task_seconds is None else task_seconds
        self._mean = ran if self._mean is None else 0.8 * self._mean + 0.2 * ran
        self.size = max(1, min(self.MAX_TASKS, int(self.TARGET_SECONDS / max(self._mean, 1e-6))))
        return elapsed

    def restart(self) -> None:
        self._last = time.perf_counter()


def _failure_text(failure: bytes) -> str:
    try:
        return str(pickle.loads(failure)[1])
    except Exception:
        return "code could not be loaded"
