"""The public map entry points, sync and async: ``run_map`` and ``run_map_as_completed``.
Each validates and uploads everything before anything is allocated, then hands the tasks to
the client runtime's map driver."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Iterator
from typing import Any

from meadowrun_core.client.map_driver import MapJob
from meadowrun_core.client.map_prepare import prepare_map_job
from meadowrun_core.client.names import check_function_name
from meadowrun_core.client.runtime import ClientRuntime
from meadowrun_core.deployment.spec import Deployment
from meadowrun_core.exceptions import RunMapTasksFailedException, TaskResult
from meadowrun_core.hosts import Host
from meadowrun_core.resources import Resources


def run_map_as_completed(
    function: Callable[..., Any] | str,
    args: Iterable[Any],
    *,
    host: Host | None = None,
    resources_per_task: Resources | None = None,
    deployment: Deployment | None = None,
    num_concurrent_tasks: int | None = None,
    max_num_task_attempts: int = 1,
    timeout: float | None = None,
    progress: bool | None = None,
    cache: bool = False,
    priority: float = 1.0,
    retry_with_more_memory: bool = False,
) -> Iterator[TaskResult]:
    """Run ``function`` on every element of ``args``; yield a ``TaskResult`` per task as
    each finishes (each task exactly once, in completion order).

    ``function``: a callable or ``"package.module.function"``, called once per element.
    ``args``: the elements; each task is ``function(element)``.
    ``host`` (default None): where to run: ``AllocLocalInstance()`` (the local cloud),
    ``AllocEC2Instance(...)``; None means ``MEADOWRUN_HOST``, else the local cloud.
    ``deployment`` (default None): the interpreter and code the job runs with
    (``Deployment.mirror_local()``, ``git_repo(...)``, ...); None mirrors the caller's code and
    environment.
    ``resources_per_task`` (default None: ``Resources()``, 1 CPU and 2 GB): what each task
    needs; instances are chosen so that several tasks share one where that is cheaper.
    ``num_concurrent_tasks`` (default None: as many as the cloud's CPU limit fits, at most
    one per task):
    at most this many tasks run at the same time; each is a worker slot holding
    ``resources_per_task``, and a slot runs task after task.
    ``max_num_task_attempts`` (default 1): a task that fails is run again, up to this many
    attempts in all, whether its function raised or its worker died (an out-of-memory kill, a
    lost instance); a spot interruption hands the task back without counting an attempt.
    ``timeout`` (default None: no limit): seconds each task may run on its worker; a task
    past it has its worker killed (the slot starts a fresh one) and counts as a failed attempt
    whose exception says it timed out.
    ``progress`` (default None): a progress bar on stderr; None shows it when stderr is a
    terminal, True always, False never. Log records printed meanwhile go above the bar.
    ``cache`` (default False): True skips every task whose function code, argument and
    deployment match an earlier successful task (its stored result comes back with
    ``TaskResult.cached`` True, before anything is launched) and stores each new success as it
    arrives, so a re-run after a crash, a Ctrl-C or a fix runs only what had not succeeded.
    Failures are never stored; results are kept in the cloud's object store for 7 days.
    ``priority`` (default 1.0): the map's weight in the raffle for room while jobs wait at
    the cloud's launch limit: the next to get room (a slot here) is drawn with probability
    proportional to its priority, across every client of the cloud (meadowgrid's raffle).
    ``retry_with_more_memory`` (default False): True runs a task that ran out of memory again
    (within ``max_num_task_attempts``) with twice the memory, up to the largest instance type
    that suits it: such tasks wait for the others, then run on a wave of bigger slots; each
    result's ``attempts`` lists every attempt's memory and outcome.

    A failed task is yielded as a ``TaskResult`` with ``is_success`` False and its
    ``exception``; nothing is raised. Leaving the loop early cancels the remaining tasks.

    Example::

        for r in mr.run_map_as_completed(double, range(10)):
            print(r.task_id, r.result if r.is_success else r.exception)
    """
    runtime, job = _prepare(
        function,
        args,
        host,
        resources_per_task,
        deployment,
        num_concurrent_tasks,
        max_num_task_attempts,
        cache,
        timeout,
        priority,
        retry_with_more_memory,
        progress,
    )
    if job is None:
        return
    batches = job.result_batches()
    try:
        while True:
            try:
                yield from runtime.run(_next(batches))
            except StopAsyncIteration:
                return
    finally:
        runtime.run(batches.aclose())


async def run_map_as_completed_async(
    function: Callable[..., Any] | str,
    args: Iterable[Any],
    *,
    host: Host | None = None,
    resources_per_task: Resources | None = None,
    deployment: Deployment | None = None,
    num_concurrent_tasks: int | None = None,
    max_num_task_attempts: int = 1,
    timeout: float | None = None,
    progress: bool | None = None,
    cache: bool = False,
    priority: float = 1.0,
    retry_with_more_memory: bool = False,
) -> AsyncIterator[TaskResult]:
    """The async twin of ``run_map_as_completed``: ``async for`` over ``TaskResult`` values.

    Parameters as for ``run_map_as_completed``: ``function``, ``args``, ``host`` (default None),
    ``resources_per_task`` (default None), ``deployment`` (default None),
    ``num_concurrent_tasks`` (default None), ``max_num_task_attempts`` (default 1),
    ``timeout`` (default None: seconds each task may run), ``progress`` (default None),
    ``cache`` (default False: reuse stored results of earlier successful tasks),
    ``priority`` (default 1.0: weight in the raffle for room), ``retry_with_more_memory``
    (default False: a task out of memory runs again with twice the memory).

    Example::

        async for r in mr.run_map_as_completed_async(double, range(10)):
            print(r.task_id, r.result)
    """

    # validating, pickling and uploading block: do them off the caller's event loop
    runtime, job = await asyncio.to_thread(
        _prepare,
        function,
        args,
        host,
        resources_per_task,
        deployment,
        num_concurrent_tasks,
        max_num_task_attempts,
        cache,
        timeout,
        priority,
        retry_with_more_memory,
        progress,
    )
    if job is None:
        return
    batches = job.result_batches()
    try:
        while True:
            try:
                for result in await runtime.run_async(_next(batches)):
                    yield result
            except StopAsyncIteration:
                return
    finally:
        await runtime.run_async(batches.aclose())


def _prepare(
    function: Callable[..., Any] | str,
    args: Iterable[Any],
    host: Host | None,
    resources_per_task: Resources | None,
    deployment: Deployment | None,
    num_concurrent_tasks: int | None,
    max_num_task_attempts: int,
    cache: bool,
    timeout: float | None,
    priority: float,
    retry_with_more_memory: bool,
    progress: bool | None,
) -> tuple[ClientRuntime, MapJob | None]:
    """Check, pickle and upload a map before anything is allocated (None: no task)."""
    check_function_name(function, host, deployment)
    runtime, job = prepare_map_job(
        function,
        args,
        host,
        resources_per_task,
        deployment,
        num_concurrent_tasks,
        max_num_task_attempts,
        cache,
        timeout,
        priority,
        retry_with_more_memory,
    )
    if job is not None:
        job.progress = progress
    return runtime, job


async def _next(batches: AsyncGenerator[list[TaskResult], None]) -> list[TaskResult]:
    return await anext(batches)


async def _all(batches: AsyncGenerator[list[TaskResult], None]) -> list[TaskResult]:
    return [result async for batch in batches for result in batch]


def _in_order(results: Iterable[TaskResult], count_hint: int | None = None) -> list[Any]:
    collected = sorted(results, key=lambda r: r.task_id)
    failed = [r for r in collected if not r.is_success]
    if failed:
        raise RunMapTasksFailedException(failed)
    return [r.result for r in collected]


def run_map(
    function: Callable[..., Any] | str,
    args: Iterable[Any],
    *,
    host: Host | None = None,
    resources_per_task: Resources | None = None,
    deployment: Deployment | None = None,
    num_concurrent_tasks: int | None = None,
    max_num_task_attempts: int = 1,
    timeout: float | None = None,
    progress: bool | None = None,
    cache: bool = False,
    priority: float = 1.0,
    retry_with_more_memory: bool = False,
) -> list[Any]:
    """Run ``function`` on every element of ``args`` in parallel; return the results in
    input order.

    ``function``: a callable or ``"package.module.function"``, called once per element.
    ``args``: the elements; each task is ``function(element)``.
    ``host`` (default None): where to run: ``AllocLocalInstance()`` (the local cloud),
    ``AllocEC2Instance(...)``; None means ``MEADOWRUN_HOST``, else the local cloud.
    ``deployment`` (default None): the interpreter and code the job runs with
    (``Deployment.mirror_local()``, ``git_repo(...)``, ...); None mirrors the caller's code and
    environment.
    ``resources_per_task`` (default None: ``Resources()``, 1 CPU and 2 GB): what each task
    needs; instances are chosen so that several tasks share one where that is cheaper.
    ``num_concurrent_tasks`` (default None: as many as the cloud's CPU limit fits, at most
    one per task):
    at most this many tasks run at the same time; each is a worker slot holding
    ``resources_per_task``, and a slot runs task after task.
    ``max_num_task_attempts`` (default 1): a task that fails is run again, up to this many
    attempts in all, whether its function raised or its worker died (an out-of-memory kill, a
    lost instance); a spot interruption hands the task back without counting an attempt.
    ``timeout`` (default None: no limit): seconds each task may run on its worker; a task
    past it has its worker killed (the slot starts a fresh one) and counts as a failed attempt
    whose exception says it timed out.
    ``progress`` (default None): a progress bar on stderr; None shows it when stderr is a
    terminal, True always, False never. Log records printed meanwhile go above the bar.
    ``cache`` (default False): True skips every task whose function code, argument and
    deployment match an earlier successful task (its stored result is used, before anything
    is launched) and stores each new success as it arrives, so a re-run after a crash, a
    Ctrl-C or a fix runs only what had not succeeded. Failures are never stored; results are
    kept in the cloud's object store for 7 days (``meadowrun cache clear`` empties it).
    ``priority`` (default 1.0): the map's weight in the raffle for room while jobs wait at
    the cloud's launch limit (see ``run_map_as_completed``).
    ``retry_with_more_memory`` (default False): a task that ran out of memory is run again
    with twice the memory (see ``run_map_as_completed``).

    Raises ``RunMapTasksFailedException`` (every failed task with its remote traceback) if any
    task failed after all its attempts; the other tasks still ran to the end.

    Example::

        import meadowrun_core as mr
        squares = mr.run_map(lambda x: x * x, range(100), num_concurrent_tasks=8)
        mr.run_map(process, files, resources_per_task=mr.Resources(memory_gb=8),
                   max_num_task_attempts=3, progress=False)
    """
    runtime, job = _prepare(
        function,
        args,
        host,
        resources_per_task,
        deployment,
        num_concurrent_tasks,
        max_num_task_attempts,
        cache,
        timeout,
        priority,
        retry_with_more_memory,
        progress,
    )
    if job is None:
        return []
    batches = job.result_batches()
    try:
        # every batch gathered on the client's loop, the caller woken once: waking it per
        # batch (a thread hand-over under the GIL each) cost a CPU map about 1 ms a task
        return _in_order(runtime.run(_all(batches)))
    finally:
        runtime.run(batches.aclose())


async def run_map_async(
    function: Callable[..., Any] | str,
    args: Iterable[Any],
    *,
    host: Host | None = None,
    resources_per_task: Resources | None = None,
    deployment: Deployment | None = None,
    num_concurrent_tasks: int | None = None,
    max_num_task_attempts: int = 1,
    timeout: float | None = None,
    progress: bool | None = None,
    cache: bool = False,
    priority: float = 1.0,
    retry_with_more_memory: bool = False,
) -> list[Any]:
    """The async twin of ``run_map``: ``await`` it for the results in input order.

    Parameters as for ``run_map``: ``function``, ``args``, ``host`` (default None),
    ``resources_per_task`` (default None), ``deployment`` (default None),
    ``num_concurrent_tasks`` (default None: at most this many tasks at once),
    ``max_num_task_attempts`` (default 1: attempts per task in all), ``timeout`` (default
    None: seconds each task may run), ``progress`` (default None:
    a bar when stderr is a terminal), ``cache`` (default False: reuse stored results of
    earlier successful tasks), ``priority`` (default 1.0: weight in the raffle for room),
    ``retry_with_more_memory`` (default False: a task out of memory runs again with twice the
    memory).

    Example::

        results = await mr.run_map_async(double, range(10), num_concurrent_tasks=2)
    """
    runtime, job = await asyncio.to_thread(
        _prepare,
        function,
        args,
        host,
        resources_per_task,
        deployment,
        num_concurrent_tasks,
        max_num_task_attempts,
        cache,
        timeout,
        priority,
        retry_with_more_memory,
        progress,
    )
    if job is None:
        return []
    batches = job.result_batches()
    try:
        return _in_order(await runtime.run_async(_all(batches)))
    finally:
        await runtime.run_async(batches.aclose())
