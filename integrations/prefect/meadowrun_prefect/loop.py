"""Following task runs on one background event loop per process: wait for upstream runs,
submit the meadowrun job (without blocking the loop), and restart it on a fresh worker while
Prefect's retries allow."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from typing import Any

from prefect.client.schemas.objects import State
from prefect.logging.handlers import emit_api_log
from prefect.logging.loggers import get_logger
from prefect.states import Failed

import meadowrun_core as mr
from meadowrun_prefect._remote import run_task_on_instance
from meadowrun_prefect.futures import resolve_futures_to_states
from meadowrun_prefect.reporting import (
    Call,
    awaiting_retry,
    cancelled_state,
    crash,
    run_logger,
    set_state,
)

logger = get_logger(__name__)


class BackgroundLoop:
    """One daemon event loop per process that follows every task run's job, so a flow of
    thousands of tasks needs no thread per task. Jobs are pickled and uploaded by
    ``mr.run_function_async`` off this loop, which stays free to follow the runs going."""

    _lock = threading.Lock()
    _loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def get(cls) -> asyncio.AbstractEventLoop:
        with cls._lock:
            if cls._loop is None or cls._loop.is_closed():
                loop = asyncio.new_event_loop()
                threading.Thread(
                    target=loop.run_forever, name="meadowrun-prefect", daemon=True
                ).start()
                cls._loop = loop
            return cls._loop


class Slots:
    """At most ``limit`` task runs on instances at once (no limit: None)."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self._semaphore: asyncio.Semaphore | None = None

    @contextlib.asynccontextmanager
    async def __call__(self) -> AsyncIterator[None]:
        if self.limit is None:
            yield
            return
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.limit)
        async with self._semaphore:
            yield


async def follow(call: Call, slots: Slots, cancel_timeout: float) -> State[Any]:
    """Wait for upstream runs, then run on an instance until the run has a final state,
    restarting it on a fresh worker while Prefect's retries allow."""
    try:
        parameters = await resolve_futures_to_states(call.parameters)
        wait_for = await resolve_futures_to_states(call.wait_for) if call.wait_for else None
        attempt = 0
        while True:
            try:
                async with slots():
                    state, logs = await run_once(
                        call, parameters, wait_for, attempt, cancel_timeout
                    )
                for log in logs:
                    emit_api_log(log)
                return state
            except mr.TaskException as exc:
                # the engine itself failed on the worker (it reports task failures as
                # states): unpicklable arguments or result, a broken environment, ...
                return crash(call, f"the task engine failed on the worker: {exc}", exc)
            except (mr.WorkerDiedError, mr.JobCancelledError) as exc:
                reason = f"its meadowrun worker or instance died: {exc}"
                if attempt >= call.task.retries:
                    return crash(call, reason, exc)
                attempt += 1
                await asyncio.sleep(awaiting_retry(call, reason, attempt))
            except mr.MeadowrunError as exc:
                # nothing ran: impossible resources, bad deployment, ...
                run_logger(call).error("Could not start the task run: %s", exc)
                return set_state(
                    call, Failed(message=f"meadowrun could not run the task: {exc}", data=exc)
                )
    except asyncio.CancelledError:
        return set_state(call, cancelled_state())


async def run_once(
    call: Call,
    parameters: dict[str, Any],
    wait_for: list[Any] | None,
    attempt: int,
    cancel_timeout: float,
) -> tuple[State[Any], list[dict[str, Any]]]:
    """One attempt of the task run in a meadowrun job; cancelling it stops the job."""
    kwargs = dict(
        task=call.task,
        task_run=call.task_run.model_copy(),
        parameters=parameters,
        wait_for=wait_for,
        context=call.context,
        retries_used=attempt,
    )
    # pickling and uploading happen off this loop (run_function_async); shielded so that a
    # cancel arriving meanwhile still reaches the job once it exists
    launch = asyncio.ensure_future(
        mr.run_function_async(
            run_task_on_instance,
            kwargs=kwargs,
            host=call.options.host,
            resources=call.options.resources,
            deployment=call.options.deployment,
            wait_for_result=False,
        )
    )
    try:
        handle: mr.JobHandle[Any] = await asyncio.shield(launch)
    except asyncio.CancelledError:
        launch.add_done_callback(_cancel_launched)
        raise
    try:
        result: tuple[State[Any], list[dict[str, Any]]] = await _warn_while_waiting(call, handle)
    except asyncio.CancelledError:
        # report Cancelled only once the job is stopped and its allocation freed
        try:
            await asyncio.to_thread(handle.cancel, wait=True, timeout=cancel_timeout)
        except TimeoutError:
            logger.warning("meadowrun job of task run %s was slow to stop", call.task_run.id)
        raise
    return result


def _cancel_launched(launch: asyncio.Future[mr.JobHandle[Any]]) -> None:
    if not launch.cancelled() and launch.exception() is None:
        launch.result().cancel()


START_WARNING_SECONDS = 5.0


async def _warn_while_waiting(call: Call, handle: mr.JobHandle[Any]) -> Any:
    """The job's outcome. If it waits for room longer than ``START_WARNING_SECONDS`` (e.g.
    nested task runs that fill the local cloud, each parent holding its room while it waits
    for its children), say at WARNING what waits, for what, the limit and how to raise it."""
    outcome = asyncio.ensure_future(handle)
    try:
        done, _ = await asyncio.wait({outcome}, timeout=START_WARNING_SECONDS)
        if not done and handle.job_id is None:
            why = await asyncio.to_thread(_shortage, call)
            if why is not None:
                parents = call.task_run.task_inputs.get("__parents__") or []
                nested = (
                    f" It was submitted from inside task run {getattr(parents[0], 'id', '?')}, "
                    "which keeps "
                    "its own room while it waits for it."
                    if parents
                    else ""
                )
                run_logger(call).warning(
                    "Task run has waited %.0f s for room to start: %s.%s",
                    START_WARNING_SECONDS,
                    why,
                    nested,
                )
        return await outcome
    finally:
        outcome.cancel()


def _shortage(call: Call) -> str | None:
    try:
        return mr.capacity_shortage(call.options.resources, call.options.host)
    except Exception:  # only an explanation: never let it fail the task run
        logger.debug("could not tell why task run %s waits", call.task_run.id, exc_info=True)
        return None
