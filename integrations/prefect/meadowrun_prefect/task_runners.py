"""A Prefect 3 task runner that runs each task run on a meadowrun instance.

Change one line and a flow's tasks run on meadowrun instances (the embedded local cloud by
default, EC2 with ``host=mr.AllocEC2Instance()``) while everything else about Prefect keeps
working:

```python
import meadowrun_core as mr
from prefect import flow, task
from meadowrun_prefect import MeadowrunTaskRunner

@task
def double(x: int) -> int:
    return 2 * x

@flow(task_runner=MeadowrunTaskRunner(resources=mr.Resources(logical_cpu=1, memory_gb=1)))
def pipeline() -> list[int]:
    return double.map(range(10)).result()
```

How it works, following prefect-dask's ``DaskTaskRunner``: ``submit`` creates the task run in
the flow process (so it shows as Pending at once), waits for upstream futures in a background
event loop, then ships Prefect's task engine with the flow's serialized context to a meadowrun
worker. The engine there reports states to the Prefect API itself, so retries, caching, hooks
and ``allow_failure`` behave exactly as with Prefect's own runners. Its API logs come back with
the result and are sent by the flow process. What the engine cannot report (its worker or
instance died, the job was cancelled) the runner reports from the flow process: the task run
ends Crashed or Cancelled, never stuck Running, and Prefect's ``retries`` rerun it on a fresh
worker.

Per-task resources and deployment, most specific first:

1. ``with meadowrun_options(resources=..., deployment=..., host=...): my_task.submit(...)``
2. task tags such as ``@task(tags=["meadowrun:logical_cpu=4", "meadowrun:memory_gb=8"])``
   (also ``with prefect.tags(...)`` and ``my_task.with_options(tags=[...])``)
3. the runner's ``resources``, ``deployment`` and ``host``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import threading
import uuid
import weakref
from collections.abc import Iterable
from types import CoroutineType
from typing import TYPE_CHECKING, Any, Self, TypeVar, cast, overload

from prefect.client.schemas.objects import FlowRun, RunInput, State
from prefect.context import FlowRunContext
from prefect.futures import PrefectFuture, PrefectFutureList
from prefect.logging.loggers import get_logger
from prefect.task_runners import TaskRunner
from prefect.utilities.engine import emit_task_run_state_change_event
from typing_extensions import ParamSpec

import meadowrun_core as mr
from meadowrun_prefect.flow_settings import FlowSettings
from meadowrun_prefect.futures import (
    PrefectMeadowrunFuture,
    final_state,
    picklable_annotations,
    resolve_futures_to_states,
)
from meadowrun_prefect.loop import BackgroundLoop, Slots, follow
from meadowrun_prefect.options import (
    TAG_PREFIX,
    MeadowrunOptions,
    meadowrun_options,
    resources_from_tags,
)
from meadowrun_prefect.reporting import (
    Call,
    asset_context,
    cancelled_state,
    crash,
    flow_run_failed,
    flush_events,
    new_task_run,
    retry_delay,
    set_state,
)

if TYPE_CHECKING:
    from prefect.tasks import Task

__all__ = [
    "TAG_PREFIX",
    "MeadowrunOptions",
    "MeadowrunTaskRunner",
    "PrefectMeadowrunFuture",
    "final_state",
    "flush_events",
    "meadowrun_options",
    "new_task_run",
    "picklable_annotations",
    "resolve_futures_to_states",
    "resources_from_tags",
    "retry_delay",
]

P = ParamSpec("P")
R = TypeVar("R")

logger = get_logger(__name__)


class MeadowrunTaskRunner(TaskRunner[PrefectMeadowrunFuture[Any]]):
    """Runs each task run of a flow on a meadowrun instance.

    Args:
        host: where to run: ``None`` for ``MEADOWRUN_HOST`` or the local cloud,
            ``mr.AllocEC2Instance(...)``, ``mr.AllocLocalInstance(...)``.
        resources: what each task run asks for (default ``mr.Resources()``).
        deployment: the code and interpreter (default ``mr.Deployment.mirror_local()``).
            The flow's ``PREFECT_*`` settings, ``PREFECT_API_URL`` included, are added to
            its environment variables so the task engine reports to the flow's API.
        max_concurrency: at most this many task runs on instances at once (default: as many
            as the host has room for).
        cancel_timeout: seconds to wait, when cancelling, for jobs to be stopped.

    When the flow ends normally the runner waits for task runs that are still going; when
    it ends with an exception or is cancelled, their jobs are cancelled and the task runs
    end Cancelled.
    """

    def __init__(
        self,
        host: mr.Host | None = None,
        resources: mr.Resources | None = None,
        deployment: mr.Deployment | None = None,
        max_concurrency: int | None = None,
        cancel_timeout: float = 30.0,
    ) -> None:
        if resources is not None and not isinstance(resources, mr.Resources):
            raise TypeError(f"resources must be meadowrun_core.Resources, got {resources!r}")
        if deployment is not None and not isinstance(deployment, mr.Deployment):
            raise TypeError(f"deployment must be meadowrun_core.Deployment, got {deployment!r}")
        if max_concurrency is not None and max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
        self.host = host
        self.resources = resources
        self.deployment = deployment
        self.max_concurrency = max_concurrency
        self.cancel_timeout = cancel_timeout
        super().__init__()  # type: ignore[no-untyped-call]
        self._init_runtime()

    def _init_runtime(self) -> None:
        # The flow engine calls cancel_all() on the flow's runner but runs tasks on its
        # duplicate(): a runner and its duplicates share this set so one reaches the others.
        self._family: weakref.WeakSet[MeadowrunTaskRunner] = weakref.WeakSet([self])
        self._calls: dict[uuid.UUID, tuple[Call, asyncio.Task[State[Any]] | None]] = {}
        self._calls_lock = threading.Lock()
        self._slots = Slots(self.max_concurrency)
        self._flow_settings = FlowSettings()
        self._flow_run: FlowRun | None = None  # the engine's own object: its state is live

    # -- Prefect's TaskRunner interface -------------------------------------------------

    def duplicate(self) -> Self:
        duplicate = type(self)(
            host=self.host,
            resources=self.resources,
            deployment=self.deployment,
            max_concurrency=self.max_concurrency,
            cancel_timeout=self.cancel_timeout,
        )
        duplicate._family = self._family
        self._family.add(duplicate)
        return duplicate

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MeadowrunTaskRunner):
            return False
        return (
            self.host == other.host
            and self.resources == other.resources
            and self.deployment == other.deployment
            and self.max_concurrency == other.max_concurrency
        )

    __hash__ = TaskRunner.__hash__

    def __getstate__(self) -> dict[str, Any]:
        """Pickle settings only: the flow (and so this runner) travels in the serialized
        context to every worker, which only ever calls ``duplicate()`` on it."""
        keep = ("host", "resources", "deployment", "max_concurrency", "cancel_timeout")
        return {name: self.__dict__[name] for name in keep}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.logger = get_logger(f"task_runner.{self.name}")
        self._started = False
        self._init_runtime()

    @overload
    def submit(
        self,
        task: Task[P, CoroutineType[Any, Any, R]],
        parameters: dict[str, Any],
        wait_for: Iterable[PrefectFuture[Any]] | None = None,
        dependencies: dict[str, set[RunInput]] | None = None,
    ) -> PrefectMeadowrunFuture[R]: ...

    @overload
    def submit(
        self,
        task: Task[Any, R],
        parameters: dict[str, Any],
        wait_for: Iterable[PrefectFuture[Any]] | None = None,
        dependencies: dict[str, set[RunInput]] | None = None,
    ) -> PrefectMeadowrunFuture[R]: ...

    def submit(
        self,
        task: Task[Any, Any],
        parameters: dict[str, Any],
        wait_for: Iterable[PrefectFuture[Any]] | None = None,
        dependencies: dict[str, set[RunInput]] | None = None,
    ) -> PrefectMeadowrunFuture[Any]:
        """Create the task run (Pending in the API at once) and start it on an instance as
        soon as its upstream futures are done. Never blocks on upstream work."""
        if not self._started:
            raise RuntimeError("Task runner is not started")  # Prefect's own runners' words
        options = self._flow_settings.options_for(task, self.resources, self.deployment, self.host)
        wait_for_list = list(wait_for) if wait_for else None
        task_run = new_task_run(task, parameters, wait_for_list, dependencies)
        emit_task_run_state_change_event(
            task_run=task_run, initial_state=None, validated_state=cast(State[Any], task_run.state)
        )
        future: concurrent.futures.Future[State[Any]] = concurrent.futures.Future()
        future.set_running_or_notify_cancel()  # only the runner settles it
        call = Call(
            task=task,
            task_run=task_run,
            parameters=parameters,
            wait_for=wait_for_list,
            context={
                **self._flow_settings.serialized_context(),
                "asset_context": asset_context(task, task_run),
            },
            options=options,
            future=future,
        )
        with self._calls_lock:
            self._calls[task_run.id] = (call, None)
            if self._flow_run is None and (flow_ctx := FlowRunContext.get()) is not None:
                self._flow_run = flow_ctx.flow_run
        # the flow's contexts (settings, flow run, tags) follow the task run into the loop
        context = contextvars.copy_context()
        BackgroundLoop.get().call_soon_threadsafe(self._start_call, call, context)
        return PrefectMeadowrunFuture(task_run_id=task_run.id, wrapped_future=future)

    @overload
    def map(
        self,
        task: Task[P, CoroutineType[Any, Any, R]],
        parameters: dict[str, Any],
        wait_for: Iterable[PrefectFuture[Any]] | None = None,
    ) -> PrefectFutureList[PrefectMeadowrunFuture[R]]: ...

    @overload
    def map(
        self,
        task: Task[Any, R],
        parameters: dict[str, Any],
        wait_for: Iterable[PrefectFuture[Any]] | None = None,
    ) -> PrefectFutureList[PrefectMeadowrunFuture[R]]: ...

    def map(
        self,
        task: Task[Any, Any],
        parameters: dict[str, Any],
        wait_for: Iterable[PrefectFuture[Any]] | None = None,
    ) -> PrefectFutureList[PrefectMeadowrunFuture[Any]]:
        return super().map(task, parameters, wait_for)

    def cancel_all(self) -> None:
        """Cancel every unfinished task run of this runner and its duplicates: their jobs
        are stopped (allocations freed) and the task runs end Cancelled."""
        pending: list[concurrent.futures.Future[State[Any]]] = []
        for runner in list(self._family):
            pending.extend(runner._cancel_own())
        self._wait_cancelled(pending)

    def __enter__(self) -> Self:
        super().__enter__()
        return self

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        try:
            if exc_type is None and not flow_run_failed(self._flow_run):
                self._wait_all()
            else:
                # the flow body raised (Prefect's engine has caught it by now, so it shows
                # as the flow run's state, not as exc_type): stop the work still going, as
                # DaskTaskRunner's cluster does when it closes
                self._wait_cancelled(self._cancel_own())
        finally:
            self._flow_settings.forget_context()
            self._flow_run = None
            super().__exit__(exc_type, exc_value, traceback)

    # -- following task runs (all on the background loop) -------------------------------

    def _start_call(self, call: Call, context: contextvars.Context) -> None:
        with self._calls_lock:
            if call.task_run.id not in self._calls:  # cancelled before it got here
                self._settle(call, set_state(call, cancelled_state()))
                return
            task = asyncio.get_running_loop().create_task(
                follow(call, self._slots, self.cancel_timeout), context=context
            )
            self._calls[call.task_run.id] = (call, task)
        task.add_done_callback(lambda done: self._finish(call, done))

    def _finish(self, call: Call, task: asyncio.Task[State[Any]]) -> None:
        with self._calls_lock:
            self._calls.pop(call.task_run.id, None)
        if task.cancelled():
            state = set_state(call, cancelled_state())
        elif task.exception() is not None:
            exc = task.exception()
            assert exc is not None
            logger.error("the task runner failed on task run %s", call.task_run.id, exc_info=exc)
            state = crash(call, f"the task runner failed: {exc!r}", exc)
        else:
            state = task.result()
        self._settle(call, state)

    @staticmethod
    def _settle(call: Call, state: State[Any]) -> None:
        if not call.future.done():
            call.future.set_result(state)

    # -- cancellation and shutdown ------------------------------------------------------

    def _cancel_own(self) -> list[concurrent.futures.Future[State[Any]]]:
        with self._calls_lock:
            calls = list(self._calls.items())
            # calls not yet on the loop: _start_call sees them gone and cancels them
            for task_run_id, (_, task) in calls:
                if task is None:
                    del self._calls[task_run_id]
        loop = BackgroundLoop.get()
        for _, (_call, task) in calls:
            if task is not None:
                loop.call_soon_threadsafe(task.cancel)
        return [call.future for _, (call, _) in calls]

    def _wait_cancelled(self, futures: list[concurrent.futures.Future[State[Any]]]) -> None:
        """Wait for cancelled runs to settle, then for their Cancelled states to reach the
        API: on a raw SIGTERM Prefect kills the process right after the runner exits."""
        if not futures:
            return
        concurrent.futures.wait(futures, timeout=self.cancel_timeout)
        flush_events(timeout=min(self.cancel_timeout, 10.0))

    def _wait_all(self) -> None:
        while True:
            with self._calls_lock:
                futures = [call.future for call, _ in self._calls.values()]
            if not futures:
                return
            concurrent.futures.wait(futures)
