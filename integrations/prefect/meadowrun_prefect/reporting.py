"""State reporting from the flow process: creating task runs as Prefect's engine does, and
recording the states the remote engine could not (its worker died, the job was cancelled,
nothing could start)."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import logging
import threading
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from prefect.client.schemas.objects import (
    FlowRun,
    RunInput,
    State,
    StateDetails,
    TaskRun,
    TaskRunPolicy,
    TaskRunResult,
)
from prefect.context import FlowRunContext, TagsContext, TaskRunContext
from prefect.logging.loggers import get_logger, task_run_logger
from prefect.states import AwaitingRetry, Cancelled, Crashed, Pending
from prefect.utilities.engine import (
    collect_task_run_inputs_sync,
    emit_task_run_state_change_event,
)

import meadowrun_core as mr
from meadowrun_prefect.options import MeadowrunOptions

if TYPE_CHECKING:
    from prefect.tasks import Task

logger = get_logger(__name__)


@dataclasses.dataclass
class Call:
    """One submitted task run and everything needed to (re)start it."""

    task: Task[Any, Any]
    task_run: TaskRun
    parameters: dict[str, Any]
    wait_for: list[Any] | None
    context: dict[str, Any]
    options: MeadowrunOptions
    future: concurrent.futures.Future[State[Any]]
    state_lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)


def set_state(call: Call, state: State[Any], run_count: int | None = None) -> State[Any]:
    """Record a state the remote engine could not (it died, or never started) as the
    engine would: a client-side state change event."""
    with call.state_lock:
        task_run = call.task_run
        last = task_run.state
        assert last is not None
        if state.timestamp <= last.timestamp:
            state.timestamp = last.timestamp + datetime.timedelta(microseconds=1)
        state.state_details.task_run_id = task_run.id
        state.state_details.flow_run_id = task_run.flow_run_id
        task_run.state = state
        task_run.state_id = state.id
        task_run.state_type = state.type
        task_run.state_name = state.name
        if run_count is not None:
            task_run.run_count = max(task_run.run_count, run_count)
        if state.is_final() and task_run.end_time is None:
            task_run.end_time = cast(Any, state.timestamp)
        try:
            emit_task_run_state_change_event(
                task_run=task_run, initial_state=last, validated_state=state
            )
        except Exception:
            logger.exception("could not report state %s of task run %s", state.name, task_run.id)
    return state


def awaiting_retry(call: Call, reason: str, attempt: int) -> float:
    """Put the run in AwaitingRetry as Prefect's engine would; return the delay."""
    delay = retry_delay(call.task, attempt - 1)
    retries = call.task.retries
    set_state(
        call,
        AwaitingRetry(
            scheduled_time=now() + datetime.timedelta(seconds=delay),
            message=f"Task run failed: {reason}; retry {attempt}/{retries}",
        ),
        run_count=attempt,
    )
    run_logger(call).warning(
        "Task run failed: %s - Retry %d/%d will start on a fresh worker in %g s",
        reason,
        attempt,
        retries,
        delay,
    )
    return delay


def crash(call: Call, message: str, exc: BaseException) -> State[Any]:
    if isinstance(exc, mr.TaskException) and exc.remote_traceback:
        run_logger(call).error(
            "Crash detected! %s\nRemote traceback:\n%s", exc.message, exc.remote_traceback
        )
    else:
        run_logger(call).error("Crash detected! %s", message)
    return set_state(call, Crashed(message=f"Task run crashed: {message}", data=exc))


def run_logger(call: Call) -> logging.LoggerAdapter[logging.Logger]:
    return task_run_logger(call.task_run, call.task)


def cancelled_state() -> State[Any]:
    return Cancelled(message="Task run cancelled: its meadowrun job was stopped")


def flush_events(timeout: float) -> None:
    """Wait (at most ``timeout``) until this process's queued Prefect events are sent."""
    from prefect.events.worker import EventsWorker, should_emit_events

    if not should_emit_events():
        return
    worker = EventsWorker.instance()  # here: it depends on this thread's settings context
    waiter = threading.Thread(target=worker.wait_until_empty, daemon=True)
    waiter.start()
    waiter.join(timeout)


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def retry_delay(task: Task[Any, Any], retries_used: int) -> float:
    """The delay Prefect's engine would wait before retry number ``retries_used + 1``."""
    delays = task.retry_delay_seconds
    if not delays:
        return 0.0
    if isinstance(delays, Sequence):
        return float(delays[min(retries_used, len(delays) - 1)])
    return float(cast(float, delays))


def new_task_run(
    task: Task[Any, Any],
    parameters: Mapping[str, Any],
    wait_for: list[Any] | None,
    dependencies: Mapping[str, set[RunInput]] | None,
) -> TaskRun:
    """The task run, created in the flow process as Prefect's engine creates it, so its
    inputs (the upstream futures) are recorded and it can be reported if the worker dies."""
    flow_ctx = FlowRunContext.get()
    parent_ctx = TaskRunContext.get()
    task_run_id = uuid.uuid4()
    dynamic_key = str(uuid.uuid4())
    task_inputs: dict[str, set[RunInput]] = {
        name: set(collect_task_run_inputs_sync(value)) for name, value in parameters.items()
    }
    if parent_ctx is not None and parent_ctx.task_run is not None:
        task_inputs["__parents__"] = {TaskRunResult(id=parent_ctx.task_run.id)}
    if wait_for:
        task_inputs["wait_for"] = set(collect_task_run_inputs_sync(wait_for))
    for name, extra in (dependencies or {}).items():
        task_inputs[name] = task_inputs.get(name, set()) | extra
    flow_run_id = flow_ctx.flow_run.id if flow_ctx and flow_ctx.flow_run else None
    state: State[Any] = Pending(
        state_details=StateDetails(task_run_id=task_run_id, flow_run_id=flow_run_id)
    )
    created: Any = state.timestamp
    return TaskRun(
        id=task_run_id,
        name=f"{task.name}-{dynamic_key[:3]}",
        flow_run_id=flow_run_id,
        task_key=task.task_key,
        dynamic_key=dynamic_key,
        task_version=task.version,
        empirical_policy=TaskRunPolicy(
            retries=task.retries,
            retry_delay=cast(Any, task.retry_delay_seconds),
            retry_jitter_factor=task.retry_jitter_factor,
        ),
        tags=sorted(set(task.tags).union(TagsContext.get().current_tags or ())),
        task_inputs={name: list(cast(Any, inputs)) for name, inputs in task_inputs.items()},
        expected_start_time=created,
        state_id=state.id,
        state_type=state.type,
        state_name=state.name,
        state=state,
        created=created,
        updated=created,
    )


def asset_context(task: Task[Any, Any], task_run: TaskRun) -> dict[str, Any]:
    """The task run's asset context, built in the flow process as prefect-dask builds it:
    only here are the upstream runs' assets known (the flow run context tracks them), so the
    remote engine can emit ``prefect.asset.referenced`` for them."""
    from prefect.context import AssetContext

    inputs: dict[str, set[Any]] = {
        name: set(values) for name, values in task_run.task_inputs.items()
    }
    context = AssetContext.from_task_and_inputs(
        task=task, task_run_id=task_run.id, task_inputs=inputs, copy_to_child_ctx=True
    )
    serialized: dict[str, Any] = context.serialize()
    return serialized


def flow_run_failed(flow_run: FlowRun | None) -> bool:
    """Whether the flow run's body ended other than successfully: failed, crashed, timed out,
    cancelled, or going to be retried."""
    state = flow_run.state if flow_run is not None else None
    if state is None:
        return False
    if state.is_final():
        return not state.is_completed()
    return state.is_scheduled() or state.name == "Retrying"
