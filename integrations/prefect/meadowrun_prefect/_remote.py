"""What runs on the meadowrun instance: Prefect's own task engine, fed the task run that the
flow process created, so states, retries, caching and hooks behave exactly as with Prefect's
runners. Kept apart from the runner so the worker imports as little as possible."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import meadowrun_core as mr

if TYPE_CHECKING:
    from prefect.client.schemas.objects import State, TaskRun
    from prefect.tasks import Task

log = logging.getLogger(__name__)


def with_retries_left(task: Task[Any, Any], retries_used: int) -> Task[Any, Any]:
    """The task with the retries a dead worker already spent taken off, so Prefect's retry
    budget holds across instances (the engine counts retries from zero in each process)."""
    if retries_used <= 0:
        return task
    delays = task.retry_delay_seconds
    options: dict[str, Any] = {"retries": max(task.retries - retries_used, 0)}
    if isinstance(delays, Sequence) and not isinstance(delays, str) and len(delays) > 1:
        options["retry_delay_seconds"] = list(delays[min(retries_used, len(delays) - 1) :])
    return task.with_options(**options)


@contextlib.contextmanager
def _records_to_client() -> Any:
    """The task's log records reach the client as records at their own level (meadowrun's
    forwarder), not also as console text on stderr that the client could only re-log as a
    stderr line. Prefect's logging setup may have replaced the root's handlers, the worker's
    forwarder included, so one is put back for the run."""
    from prefect.logging.configuration import ensure_logging_setup

    ensure_logging_setup()  # now, not inside the engine, where it would undo what follows
    root = logging.getLogger()
    console = [
        h
        for h in root.handlers
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
    ]
    saved = [h.level for h in console]
    added = None
    if not any(isinstance(h, mr.JobLogForwarder) for h in root.handlers):
        added = mr.JobLogForwarder()
        root.addHandler(added)
    for handler in console:
        handler.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for handler, level in zip(console, saved, strict=True):
            handler.setLevel(level)
        if added is not None:
            root.removeHandler(added)


_sync_client_context: Any = None


def _keep_sync_client() -> None:
    """Open one Prefect API client per worker process and keep it for every later task run,
    as the flow process does for its threads: a new client costs an SSL context and a
    version check, several times a trivial task's own run time."""
    global _sync_client_context
    from prefect.context import SyncClientContext

    if _sync_client_context is None or SyncClientContext.get() is not _sync_client_context:
        _sync_client_context = SyncClientContext()
        _sync_client_context.__enter__()


def run_task_on_instance(
    task: Task[Any, Any],
    task_run: TaskRun,
    parameters: dict[str, Any],
    wait_for: list[Any] | None,
    context: dict[str, Any],
    retries_used: int = 0,
) -> tuple[State[Any], list[dict[str, Any]]]:
    """Run one task run with Prefect's engine; return its final state and its API logs.

    States go to the Prefect API from here as events, as they happen. Logs are collected and
    sent by the flow process instead: Prefect batches API logs every couple of seconds, and
    a reused worker should neither wait for that nor lose them if it is stopped.
    """
    from prefect.events.worker import EventsWorker, should_emit_events
    from prefect.logging.handlers import set_api_log_sink
    from prefect.task_engine import run_task_async, run_task_sync

    logs: list[dict[str, Any]] = []
    state: State[Any]
    set_api_log_sink(logs.append)
    if not task.isasync:
        _keep_sync_client()
    records = _records_to_client()
    records.__enter__()
    try:
        kwargs: dict[str, Any] = dict(
            task=with_retries_left(task, retries_used),
            task_run=task_run,
            parameters=parameters,
            wait_for=wait_for,
            return_type="state",
            context=context,
        )
        if task.isasync:
            state = cast("State[Any]", asyncio.run(run_task_async(**kwargs)))
        else:
            state = cast("State[Any]", run_task_sync(**kwargs))
    finally:
        records.__exit__(None, None, None)
        set_api_log_sink(None)
        # the worker process is reused: make sure this run's state events have left it
        if should_emit_events():
            with contextlib.suppress(Exception):
                EventsWorker.instance().wait_until_empty()
    return state, logs
