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
import contextlib
import contextvars
import dataclasses
import datetime
import functools
import logging
import threading
import uuid
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from types import CoroutineType
from typing import TYPE_CHECKING, Any, Self, TypeVar, cast, overload

from prefect.client.schemas.objects import (
    RunInput,
    State,
    StateDetails,
    TaskRun,
    TaskRunPolicy,
    TaskRunResult,
)
from prefect.context import FlowRunContext, TagsContext, TaskRunContext, serialize_context
from prefect.futures import PrefectFuture, PrefectFutureList, PrefectWrappedFuture
from prefect.logging.handlers import emit_api_log
from prefect.logging.loggers import get_logger, task_run_logger
from prefect.settings.context import get_current_settings
from prefect.states import AwaitingRetry, Cancelled, Crashed, Failed, Pending
from prefect.task_runners import TaskRunner
from prefect.utilities.annotations import BaseAnnotation, quote
from prefect.utilities.collections import StopVisiting, visit_collection
from prefect.utilities.engine import (
    collect_task_run_inputs_sync,
    emit_task_run_state_change_event,
)
from typing_extensions import ParamSpec

import meadowrun_core as mr
from meadowrun_prefect._remote import run_task_on_instance

if TYPE_CHECKING:
    from prefect.tasks import Task

P = ParamSpec("P")
R = TypeVar("R")

logger = get_logger(__name__)

TAG_PREFIX = "meadowrun:"
_TAG_FIELDS = ("logical_cpu", "memory_gb", "gpus", "gpu_memory", "max_eviction_rate")


# --- per-task options ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MeadowrunOptions:
    """Where and with what one task run runs; ``None`` fields fall back to the runner's."""

    resources: mr.Resources | None = None
    deployment: mr.Deployment | None = None
    host: mr.Host | None = None


_current_options: contextvars.ContextVar[MeadowrunOptions | None] = contextvars.ContextVar(
    "meadowrun_prefect_options", default=None
)


@contextlib.contextmanager
def meadowrun_options(
    *,
    resources: mr.Resources | None = None,
    deployment: mr.Deployment | None = None,
    host: mr.Host | None = None,
) -> Iterator[MeadowrunOptions]:
    """Resources, deployment or host for the tasks submitted inside this block.

    The Prefect counterpart of ``dask.annotate`` / prefect-ray's ``remote_options``::

        with meadowrun_options(resources=mr.Resources(logical_cpu=4, memory_gb=16)):
            big = train.submit(data)
    """
    outer = _current_options.get()
    options = MeadowrunOptions(
        resources=resources or (outer.resources if outer else None),
        deployment=deployment or (outer.deployment if outer else None),
        host=host or (outer.host if outer else None),
    )
    token = _current_options.set(options)
    try:
        yield options
    finally:
        _current_options.reset(token)


def resources_from_tags(tags: Iterable[str], base: mr.Resources) -> mr.Resources:
    """Apply ``meadowrun:<field>=<number>`` tags to ``base``; a bad tag fails the submit."""
    changes: dict[str, float] = {}
    for tag in tags:
        if not tag.startswith(TAG_PREFIX):
            continue
        name, sep, raw = tag[len(TAG_PREFIX):].partition("=")
        if not sep or name not in _TAG_FIELDS:
            raise ValueError(
                f"unknown meadowrun tag {tag!r}: use {TAG_PREFIX}<field>=<number> with a field "
                f"among {', '.join(_TAG_FIELDS)}"
            )
        try:
            changes[name] = float(raw)
        except ValueError:
            raise ValueError(f"meadowrun tag {tag!r} needs a number after '='") from None
    return dataclasses.replace(base, **changes) if changes else base  # type: ignore[arg-type]


# --- futures ---------------------------------------------------------------------------


class PrefectMeadowrunFuture(PrefectWrappedFuture[R, concurrent.futures.Future[State[Any]]]):
    """A Prefect future for a task run on a meadowrun instance.

    The wrapped future always ends with the run's final ``State`` (failures, crashes and
    cancellations included), so ``wait`` never raises and ``result`` raises what Prefect
    would.
    """

    def wait(self, timeout: float | None = None) -> None:
        if self._final_state is not None:
            return
        try:
            state = self._wrapped_future.result(timeout=timeout)
        except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError):
            return
        self._final_state = state

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> R:
        if self._final_state is None:
            try:
                self._final_state = self._wrapped_future.result(timeout=timeout)
            except concurrent.futures.TimeoutError as exc:
                raise TimeoutError(
                    f"Task run {self.task_run_id} did not complete within {timeout} seconds"
                ) from exc
        value: R = self._final_state.result(raise_on_failure=raise_on_failure, _sync=True)  # type: ignore[call-overload]
        return value


# --- the background loop ---------------------------------------------------------------


class _Loop:
    """One daemon event loop per process that follows every task run's job, so a flow of
    thousands of tasks needs no thread per task.

    Jobs are submitted (pickled, uploaded) from one extra thread: that work holds the GIL
    anyway, and it keeps the loop free to follow the runs already going. (Submitting them from
    one thread also sidesteps a race in early meadowrun-core versions.)
    """

    _lock = threading.Lock()
    _loop: asyncio.AbstractEventLoop | None = None
    _submitter: concurrent.futures.ThreadPoolExecutor | None = None

    @classmethod
    def get(cls) -> asyncio.AbstractEventLoop:
        with cls._lock:
            if cls._loop is None or cls._loop.is_closed():
                loop = asyncio.new_event_loop()
                threading.Thread(
                    target=loop.run_forever, name="meadowrun-prefect", daemon=True
                ).start()
                cls._loop = loop
                cls._submitter = concurrent.futures.ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix="meadowrun-prefect-submit"
                )
            return cls._loop

    @classmethod
    def submitter(cls) -> concurrent.futures.ThreadPoolExecutor:
        cls.get()
        assert cls._submitter is not None
        return cls._submitter


# --- the runner ------------------------------------------------------------------------


@dataclasses.dataclass
class _Call:
    """One submitted task run and everything needed to (re)start it."""

    task: Task[Any, Any]
    task_run: TaskRun
    parameters: dict[str, Any]
    wait_for: list[Any] | None
    context: dict[str, Any]
    options: MeadowrunOptions
    future: concurrent.futures.Future[State[Any]]
    state_lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)


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
        self._calls: dict[uuid.UUID, tuple[_Call, asyncio.Task[State[Any]] | None]] = {}
        self._calls_lock = threading.Lock()
        self._semaphore: asyncio.Semaphore | None = None
        self._context_cache: tuple[tuple[Any, ...], dict[str, Any]] | None = None
        self._prefect_env: dict[str, str] | None = None
        self._exposed: set[tuple[int, str]] = set()

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
            raise RuntimeError("The task runner must be started before submitting work.")
        options = self._options_for(task)
        wait_for_list = list(wait_for) if wait_for else None
        task_run = new_task_run(task, parameters, wait_for_list, dependencies)
        emit_task_run_state_change_event(
            task_run=task_run, initial_state=None, validated_state=cast(State[Any], task_run.state)
        )
        future: concurrent.futures.Future[State[Any]] = concurrent.futures.Future()
        future.set_running_or_notify_cancel()  # only the runner settles it
        call = _Call(
            task=task,
            task_run=task_run,
            parameters=parameters,
            wait_for=wait_for_list,
            context=self._serialized_context(),
            options=options,
            future=future,
        )
        with self._calls_lock:
            self._calls[task_run.id] = (call, None)
        # the flow's contexts (settings, flow run, tags) follow the task run into the loop
        context = contextvars.copy_context()
        _Loop.get().call_soon_threadsafe(self._start_call, call, context)
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
            if exc_type is None:
                self._wait_all()
            else:
                self._wait_cancelled(self._cancel_own())
        finally:
            self._context_cache = None
            super().__exit__(exc_type, exc_value, traceback)

    # -- submission helpers -------------------------------------------------------------

    def _options_for(self, task: Task[Any, Any]) -> MeadowrunOptions:
        scoped = _current_options.get() or MeadowrunOptions()
        tags = {*task.tags, *(TagsContext.get().current_tags or ())}
        resources = scoped.resources or resources_from_tags(
            sorted(tags), self.resources or mr.Resources()
        )
        deployment = scoped.deployment or self.deployment or mr.Deployment.mirror_local()
        env = {**self._prefect_environment(), **deployment.environment_variables}
        host = scoped.host or self.host
        self._expose_api(env.get("PREFECT_API_URL"), host)
        return MeadowrunOptions(
            resources=resources,
            deployment=dataclasses.replace(deployment, environment_variables=env),
            host=host,
        )

    def _expose_api(self, api_url: str | None, host: mr.Host | None) -> None:
        """A Prefect API on this machine's loopback (the flow's ephemeral or local server) is
        made reachable at the same URL on cloud instances, through meadowrun's SSH
        connections, so remote task runs report their states to it (a no-op locally)."""
        from urllib.parse import urlsplit

        if not api_url:
            return
        url = urlsplit(api_url)
        if url.hostname not in ("127.0.0.1", "localhost") or url.port is None:
            return
        key = (url.port, repr(host))
        if key not in self._exposed:
            mr.expose_port(url.port, host=host)
            self._exposed.add(key)

    def _prefect_environment(self) -> dict[str, str]:
        """The flow's Prefect settings as environment variables, PREFECT_API_URL included
        (without it the worker would start an API server of its own)."""
        if self._prefect_env is None:
            settings = get_current_settings()
            env = {
                key: value
                for key, value in settings.to_environment_variables(exclude_unset=True).items()
                if key.startswith("PREFECT_")
            }
            if not settings.api.url:
                # ephemeral mode: the flow's client started this server; point workers at it
                from prefect.server.api.server import SubprocessASGIServer

                server = SubprocessASGIServer()
                server.start()
                env["PREFECT_API_URL"] = server.api_url
            self._prefect_env = env
        return self._prefect_env

    def _serialized_context(self) -> dict[str, Any]:
        """Prefect's serialized context, computed once per flow run (as ProcessPool does)."""
        flow_ctx = FlowRunContext.get()
        task_ctx = TaskRunContext.get()
        key = (
            flow_ctx.flow_run.id if flow_ctx and flow_ctx.flow_run else None,
            task_ctx.task_run.id if task_ctx else None,
            tuple(TagsContext.get().current_tags or ()),
        )
        if self._context_cache is None or self._context_cache[0] != key:
            context = serialize_context()
            # The settings travel as PREFECT_* environment variables of the deployment
            # (_prefect_environment), which the worker reads once; rebuilding them from the
            # context for every task run would cost more than a small task itself.
            context["settings_context"] = {}
            self._context_cache = (key, context)
        return self._context_cache[1]

    # -- following task runs (all on the background loop) -------------------------------

    def _start_call(self, call: _Call, context: contextvars.Context) -> None:
        with self._calls_lock:
            if call.task_run.id not in self._calls:  # cancelled before it got here
                self._settle(call, self._set_state(call, _cancelled_state()))
                return
            task = asyncio.get_running_loop().create_task(self._follow(call), context=context)
            self._calls[call.task_run.id] = (call, task)
        task.add_done_callback(lambda done: self._finish(call, done))

    def _finish(self, call: _Call, task: asyncio.Task[State[Any]]) -> None:
        with self._calls_lock:
            self._calls.pop(call.task_run.id, None)
        if task.cancelled():
            state = self._set_state(call, _cancelled_state())
        elif task.exception() is not None:
            exc = task.exception()
            assert exc is not None
            state = self._crash(call, f"the task runner failed: {exc!r}", exc)
        else:
            state = task.result()
        self._settle(call, state)

    @staticmethod
    def _settle(call: _Call, state: State[Any]) -> None:
        if not call.future.done():
            call.future.set_result(state)

    async def _follow(self, call: _Call) -> State[Any]:
        """Wait for upstream runs, then run on an instance until the run has a final
        state, restarting it on a fresh worker while Prefect's retries allow."""
        try:
            parameters = await resolve_futures_to_states(call.parameters)
            wait_for = await resolve_futures_to_states(call.wait_for) if call.wait_for else None
            attempt = 0
            while True:
                try:
                    async with self._slot():
                        state, logs = await self._run_once(call, parameters, wait_for, attempt)
                    for log in logs:
                        emit_api_log(log)
                    return state
                except mr.TaskException as exc:
                    # the engine itself failed on the worker (it reports task failures as
                    # states): unpicklable arguments or result, a broken environment, ...
                    return self._crash(call, f"the task engine failed on the worker: {exc}", exc)
                except (mr.WorkerDiedError, mr.JobCancelledError) as exc:
                    reason = f"its meadowrun worker or instance died: {exc}"
                    if attempt >= call.task.retries:
                        return self._crash(call, reason, exc)
                    attempt += 1
                    await asyncio.sleep(self._awaiting_retry(call, reason, attempt))
                except mr.MeadowrunError as exc:
                    # nothing ran: impossible resources, bad deployment, ...
                    self._run_logger(call).error("Could not start the task run: %s", exc)
                    return self._set_state(
                        call, Failed(message=f"meadowrun could not run the task: {exc}", data=exc)
                    )
        except asyncio.CancelledError:
            return self._set_state(call, _cancelled_state())

    async def _run_once(
        self,
        call: _Call,
        parameters: dict[str, Any],
        wait_for: list[Any] | None,
        attempt: int,
    ) -> tuple[State[Any], list[dict[str, Any]]]:
        task_run = call.task_run.model_copy()
        kwargs = dict(
            task=call.task,
            task_run=task_run,
            parameters=parameters,
            wait_for=wait_for,
            context=call.context,
            retries_used=attempt,
        )
        # pickling and uploading happen in a thread so the loop keeps following other runs;
        # shielded so that a cancel arriving meanwhile still reaches the job once it exists
        submit = functools.partial(
            contextvars.copy_context().run,
            mr.run_function,
            run_task_on_instance,
            kwargs=kwargs,
            host=call.options.host,
            resources=call.options.resources,
            deployment=call.options.deployment,
            wait_for_result=False,
        )
        launch = asyncio.get_running_loop().run_in_executor(_Loop.submitter(), submit)
        try:
            handle: mr.JobHandle[Any] = await asyncio.shield(launch)
        except asyncio.CancelledError:
            launch.add_done_callback(_cancel_launched)
            raise
        try:
            result: tuple[State[Any], list[dict[str, Any]]] = await handle
        except asyncio.CancelledError:
            # report Cancelled only once the job is stopped and its allocation freed
            try:
                await asyncio.to_thread(handle.cancel, wait=True, timeout=self.cancel_timeout)
            except TimeoutError:
                logger.warning("meadowrun job of task run %s was slow to stop", call.task_run.id)
            raise
        return result

    @contextlib.asynccontextmanager
    async def _slot(self) -> Any:
        if self.max_concurrency is None:
            yield
            return
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.max_concurrency)
        async with self._semaphore:
            yield

    # -- reporting what the engine could not ---------------------------------------------

    def _set_state(
        self, call: _Call, state: State[Any], run_count: int | None = None
    ) -> State[Any]:
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
                logger.exception(
                    "could not report state %s of task run %s", state.name, task_run.id
                )
        return state

    def _awaiting_retry(self, call: _Call, reason: str, attempt: int) -> float:
        """Put the run in AwaitingRetry as Prefect's engine would; return the delay."""
        delay = retry_delay(call.task, attempt - 1)
        retries = call.task.retries
        self._set_state(
            call,
            AwaitingRetry(
                scheduled_time=_now() + datetime.timedelta(seconds=delay),
                message=f"Task run failed: {reason}; retry {attempt}/{retries}",
            ),
            run_count=attempt,
        )
        self._run_logger(call).warning(
            "Task run failed: %s - Retry %d/%d will start on a fresh worker in %g s",
            reason,
            attempt,
            retries,
            delay,
        )
        return delay

    def _crash(self, call: _Call, message: str, exc: BaseException) -> State[Any]:
        if isinstance(exc, mr.TaskException) and exc.remote_traceback:
            self._run_logger(call).error(
                "Crash detected! %s\nRemote traceback:\n%s", exc.message, exc.remote_traceback
            )
        else:
            self._run_logger(call).error("Crash detected! %s", message)
        return self._set_state(call, Crashed(message=f"Task run crashed: {message}", data=exc))

    def _run_logger(self, call: _Call) -> logging.LoggerAdapter[logging.Logger]:
        return task_run_logger(call.task_run, call.task)

    # -- cancellation and shutdown ------------------------------------------------------

    def _cancel_own(self) -> list[concurrent.futures.Future[State[Any]]]:
        with self._calls_lock:
            calls = list(self._calls.items())
            # calls not yet on the loop: _start_call sees them gone and cancels them
            for task_run_id, (_, task) in calls:
                if task is None:
                    del self._calls[task_run_id]
        loop = _Loop.get()
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


# --- helpers ---------------------------------------------------------------------------


def flush_events(timeout: float) -> None:
    """Wait (at most ``timeout``) until this process's queued Prefect events are sent."""
    from prefect.events.worker import EventsWorker, should_emit_events

    if not should_emit_events():
        return
    worker = EventsWorker.instance()  # here: it depends on this thread's settings context
    waiter = threading.Thread(target=worker.wait_until_empty, daemon=True)
    waiter.start()
    waiter.join(timeout)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _cancelled_state() -> State[Any]:
    return Cancelled(message="Task run cancelled: its meadowrun job was stopped")


def _cancel_launched(launch: asyncio.Future[mr.JobHandle[Any]]) -> None:
    if not launch.cancelled() and launch.exception() is None:
        launch.result().cancel()


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


async def resolve_futures_to_states(expr: Any) -> Any:
    """``expr`` with every Prefect future replaced by its final state, once it has one.

    States pickle (futures do not), and the remote engine resolves them exactly as it
    resolves futures: their results, or UpstreamTaskError unless ``allow_failure``.
    """
    futures: dict[int, PrefectFuture[Any]] = {}

    def collect(item: Any, context: dict[str, Any]) -> Any:
        if isinstance(context.get("annotation"), quote):
            raise StopVisiting
        if isinstance(item, PrefectFuture):
            futures[id(item)] = item
        return item

    visit_collection(expr, visit_fn=collect, return_data=False, max_depth=-1, context={})
    if not futures:
        return picklable_annotations(expr)
    states: dict[int, State[Any]] = {}
    for key, future in futures.items():
        states[key] = await final_state(future)

    def replace(item: Any, context: dict[str, Any]) -> Any:
        if isinstance(context.get("annotation"), quote):
            raise StopVisiting
        if isinstance(item, PrefectFuture):
            return states[id(item)]
        return item

    resolved = visit_collection(
        expr, visit_fn=replace, return_data=True, max_depth=-1, context={}
    )
    return picklable_annotations(resolved)


class _PicklableAnnotation:
    """Unpickles as the Prefect annotation it stands for. Prefect's annotations (tuple
    subclasses) do not survive pickling: ``allow_failure(x)`` comes back as
    ``allow_failure((x,))``, which would hand the task a tuple."""

    def __init__(self, annotation_type: type[Any], value: Any) -> None:
        self.annotation_type = annotation_type
        self.value = value

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.annotation_type, (self.value,))


def picklable_annotations(expr: Any) -> Any:
    def swap(item: Any) -> Any:
        if isinstance(item, BaseAnnotation):
            return _PicklableAnnotation(type(item), picklable_annotations(item.unwrap()))
        return item

    return visit_collection(expr, visit_fn=swap, return_data=True, max_depth=-1)


async def final_state(future: PrefectFuture[Any]) -> State[Any]:
    if isinstance(future, PrefectMeadowrunFuture):
        # shielded: giving up on a downstream run must not cancel the upstream one
        wrapped: concurrent.futures.Future[State[Any]] = future.wrapped_future
        return await asyncio.shield(asyncio.wrap_future(wrapped))
    await asyncio.to_thread(future.wait)
    return future.state
