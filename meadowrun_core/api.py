"""The public entry points, sync and async. Each validates and uploads everything before
anything is allocated, then hands the work to the client runtime."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any

from meadowrun_core.client.jobs import JobHandle, prepare_command_job, prepare_function_job
from meadowrun_core.client.map_driver import prepare_map_job
from meadowrun_core.client.runtime import ClientRuntime
from meadowrun_core.deployment.spec import Deployment
from meadowrun_core.exceptions import CommandResult, RunMapTasksFailedException, TaskResult
from meadowrun_core.hosts import Host
from meadowrun_core.resources import Resources


def run_function(
    function: Callable[..., Any] | str,
    *,
    host: Host | None = None,
    resources: Resources | None = None,
    deployment: Deployment | None = None,
    args: tuple[Any, ...] | list[Any] = (),
    kwargs: dict[str, Any] | None = None,
    wait_for_result: bool = True,
) -> Any:
    """Run ``function(*args, **kwargs)`` on an instance and return its result.

    With ``wait_for_result=False`` return a ``JobHandle`` at once.
    """
    runtime, job = prepare_function_job(function, host, resources, deployment, args, kwargs)
    if not wait_for_result:
        return JobHandle(runtime.submit(job), f"run_function {function!r}")
    return runtime.run(job)


async def run_function_async(
    function: Callable[..., Any] | str,
    *,
    host: Host | None = None,
    resources: Resources | None = None,
    deployment: Deployment | None = None,
    args: tuple[Any, ...] | list[Any] = (),
    kwargs: dict[str, Any] | None = None,
    wait_for_result: bool = True,
) -> Any:
    runtime, job = prepare_function_job(function, host, resources, deployment, args, kwargs)
    if not wait_for_result:
        return JobHandle(runtime.submit(job), f"run_function {function!r}")
    return await runtime.run_async(job)


def run_command(
    args: str | list[str],
    *,
    host: Host | None = None,
    resources: Resources | None = None,
    deployment: Deployment | None = None,
    environment: dict[str, str] | None = None,
    wait_for_result: bool = True,
) -> CommandResult | JobHandle[CommandResult]:
    """Run a command on an instance; its output is streamed to the ``meadowrun_core.job``
    logger and its exit code returned in a ``CommandResult``."""
    runtime, job = prepare_command_job(args, host, resources, deployment, environment)
    if not wait_for_result:
        return JobHandle(runtime.submit(job), f"run_command {args!r}")
    result: CommandResult = runtime.run(job)
    return result


async def run_command_async(
    args: str | list[str],
    *,
    host: Host | None = None,
    resources: Resources | None = None,
    deployment: Deployment | None = None,
    environment: dict[str, str] | None = None,
    wait_for_result: bool = True,
) -> CommandResult | JobHandle[CommandResult]:
    runtime, job = prepare_command_job(args, host, resources, deployment, environment)
    if not wait_for_result:
        return JobHandle(runtime.submit(job), f"run_command {args!r}")
    result: CommandResult = await runtime.run_async(job)
    return result


def run_map_as_completed(
    function: Callable[..., Any] | str,
    args: Iterable[Any],
    *,
    host: Host | None = None,
    resources_per_task: Resources | None = None,
    deployment: Deployment | None = None,
    num_concurrent_tasks: int | None = None,
    max_num_task_attempts: int = 1,
) -> Iterator[TaskResult]:
    """Yield a ``TaskResult`` per task as each finishes (each task exactly once)."""
    runtime, job = prepare_map_job(
        function, args, host, resources_per_task, deployment, num_concurrent_tasks,
        max_num_task_attempts,
    )
    if job is None:
        return
    results = job.results()
    try:
        while True:
            try:
                yield runtime.run(results.__anext__())
            except StopAsyncIteration:
                return
    finally:
        runtime.run(results.aclose())


async def run_map_as_completed_async(
    function: Callable[..., Any] | str,
    args: Iterable[Any],
    *,
    host: Host | None = None,
    resources_per_task: Resources | None = None,
    deployment: Deployment | None = None,
    num_concurrent_tasks: int | None = None,
    max_num_task_attempts: int = 1,
) -> AsyncIterator[TaskResult]:
    runtime, job = prepare_map_job(
        function, args, host, resources_per_task, deployment, num_concurrent_tasks,
        max_num_task_attempts,
    )
    if job is None:
        return
    results = job.results()
    try:
        while True:
            try:
                yield await runtime.run_async(results.__anext__())
            except StopAsyncIteration:
                return
    finally:
        await runtime.run_async(results.aclose())


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
) -> list[Any]:
    """Run ``function`` on every element of ``args``; results in input order.

    Raises ``RunMapTasksFailedException`` (with every failure's traceback) if any task failed
    after all its attempts.
    """
    return _in_order(
        run_map_as_completed(
            function, args, host=host, resources_per_task=resources_per_task,
            deployment=deployment, num_concurrent_tasks=num_concurrent_tasks,
            max_num_task_attempts=max_num_task_attempts,
        )
    )


async def run_map_async(
    function: Callable[..., Any] | str,
    args: Iterable[Any],
    *,
    host: Host | None = None,
    resources_per_task: Resources | None = None,
    deployment: Deployment | None = None,
    num_concurrent_tasks: int | None = None,
    max_num_task_attempts: int = 1,
) -> list[Any]:
    results = [
        r
        async for r in run_map_as_completed_async(
            function, args, host=host, resources_per_task=resources_per_task,
            deployment=deployment, num_concurrent_tasks=num_concurrent_tasks,
            max_num_task_attempts=max_num_task_attempts,
        )
    ]
    return _in_order(results)


def current_client_id() -> str:
    return ClientRuntime.get().client_id
