"""The public entry points, sync and async. Each validates and uploads everything before
anything is allocated, then hands the work to the client runtime."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Iterator
from typing import Any

from meadowrun_core.client.jobs import (
    JobHandle,
    JobNotFoundError,
    follow_keyed_job,
    keyed_job_state,
    prepare_command_job,
    prepare_function_job,
)
from meadowrun_core.client.map_driver import prepare_map_job
from meadowrun_core.client.names import check_function_name
from meadowrun_core.client.runtime import ClientRuntime
from meadowrun_core.deployment.spec import Deployment
from meadowrun_core.exceptions import (
    BadInputError,
    CommandResult,
    RunMapTasksFailedException,
    TaskResult,
)
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
    job_key: str | None = None,
    detach: bool = False,
    detached_timeout: float | None = None,
) -> Any:
    """Run ``function(*args, **kwargs)`` on an instance and return its result.

    With ``wait_for_result=False`` return a ``JobHandle`` at once. ``job_key`` names the job so
    any process can find it (``attach_job``, ``cancel_job``); submitting a key that exists
    follows the existing job instead of starting another. ``detach=True`` lets the job outlive
    this process (for at most ``detached_timeout`` seconds, default a day).
    """
    check_function_name(function, host, deployment)
    prepared = prepare_function_job(
        function, host, resources, deployment, args, kwargs, job_key, detach, detached_timeout
    )
    if not wait_for_result:
        return prepared.handle()
    return prepared.runtime.run(prepared.job)


async def run_function_async(
    function: Callable[..., Any] | str,
    *,
    host: Host | None = None,
    resources: Resources | None = None,
    deployment: Deployment | None = None,
    args: tuple[Any, ...] | list[Any] = (),
    kwargs: dict[str, Any] | None = None,
    wait_for_result: bool = True,
    job_key: str | None = None,
    detach: bool = False,
    detached_timeout: float | None = None,
) -> Any:
    check_function_name(function, host, deployment)
    prepared = prepare_function_job(
        function, host, resources, deployment, args, kwargs, job_key, detach, detached_timeout
    )
    if not wait_for_result:
        return prepared.handle()
    return await prepared.runtime.run_async(prepared.job)


def run_command(
    args: str | list[str],
    *,
    host: Host | None = None,
    resources: Resources | None = None,
    deployment: Deployment | None = None,
    environment: dict[str, str] | None = None,
    wait_for_result: bool = True,
    job_key: str | None = None,
    detach: bool = False,
    detached_timeout: float | None = None,
) -> CommandResult | JobHandle[CommandResult]:
    """Run a command on an instance; its output is streamed to the ``meadowrun_core.job``
    logger and its exit code returned in a ``CommandResult``. ``job_key``/``detach`` as for
    ``run_function``."""
    prepared = prepare_command_job(
        args, host, resources, deployment, environment, job_key, detach, detached_timeout
    )
    if not wait_for_result:
        return prepared.handle()
    result: CommandResult = prepared.runtime.run(prepared.job)
    return result


async def run_command_async(
    args: str | list[str],
    *,
    host: Host | None = None,
    resources: Resources | None = None,
    deployment: Deployment | None = None,
    environment: dict[str, str] | None = None,
    wait_for_result: bool = True,
    job_key: str | None = None,
    detach: bool = False,
    detached_timeout: float | None = None,
) -> CommandResult | JobHandle[CommandResult]:
    prepared = prepare_command_job(
        args, host, resources, deployment, environment, job_key, detach, detached_timeout
    )
    if not wait_for_result:
        return prepared.handle()
    result: CommandResult = await prepared.runtime.run_async(prepared.job)
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
    check_function_name(function, host, deployment)
    runtime, job = prepare_map_job(
        function,
        args,
        host,
        resources_per_task,
        deployment,
        num_concurrent_tasks,
        max_num_task_attempts,
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
) -> AsyncIterator[TaskResult]:
    check_function_name(function, host, deployment)
    runtime, job = prepare_map_job(
        function,
        args,
        host,
        resources_per_task,
        deployment,
        num_concurrent_tasks,
        max_num_task_attempts,
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


async def _next(batches: AsyncGenerator[list[TaskResult], None]) -> list[TaskResult]:
    return await anext(batches)


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
            function,
            args,
            host=host,
            resources_per_task=resources_per_task,
            deployment=deployment,
            num_concurrent_tasks=num_concurrent_tasks,
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
            function,
            args,
            host=host,
            resources_per_task=resources_per_task,
            deployment=deployment,
            num_concurrent_tasks=num_concurrent_tasks,
            max_num_task_attempts=max_num_task_attempts,
        )
    ]
    return _in_order(results)


def current_client_id() -> str:
    return ClientRuntime.get().client_id


def expose_port(port: int, *, host: Host | None = None) -> None:
    """Let jobs on ``host``'s instances reach a service of this machine at the same address:
    their ``127.0.0.1:port`` leads to this machine's ``127.0.0.1:port`` (e.g. a Prefect API
    server that the flow process runs). On the local cloud the instances are this machine, so
    nothing is needed; on a cloud it is a reverse forward over the SSH connection to each
    instance, so no port of this machine is opened to the network."""
    if not 0 < port < 65536:
        raise BadInputError(f"expose_port({port}): a port is a number from 1 to 65535")
    runtime = ClientRuntime.get()
    runtime.run(runtime.backend(host).expose(port))


# --- keyed jobs: find, follow and cancel a job from any process ------------------------------
OutputCallback = Callable[[str, bytes], None]


def attach_job(
    job_key: str, *, host: Host | None = None, on_output: OutputCallback | None = None
) -> JobHandle[Any]:
    """A handle on the job named ``job_key``. Its output, from the start, goes to
    ``on_output(stream, data)`` or else is logged. ``result()`` raises ``JobNotFoundError``
    if no such job exists. Cancelling the handle cancels the job."""
    runtime = ClientRuntime.get()
    backend = runtime.backend(host)
    future = runtime.submit(follow_keyed_job(runtime, backend, job_key, on_output))
    return _KeyedJobHandle(future, f"job {job_key}", job_key, host)


class _KeyedJobHandle(JobHandle[Any]):
    """A follower of a keyed job: cancelling it cancels the job everywhere."""

    def __init__(self, future: Any, description: str, job_key: str, host: Host | None) -> None:
        super().__init__(future, description, job_key)
        self._host = host

    def cancel(self, wait: bool = False, timeout: float = 10.0) -> bool:
        cancel_job(self.job_key or "", host=self._host, timeout=timeout if wait else 0.0)
        return super().cancel()


async def wait_job_async(
    job_key: str, *, host: Host | None = None, on_output: OutputCallback | None = None
) -> Any:
    """Wait for the job named ``job_key`` and return its value (or raise its error).

    Cancelling this coroutine stops waiting but leaves the job running."""
    runtime = ClientRuntime.get()
    backend = runtime.backend(host)
    return await runtime.run_async(follow_keyed_job(runtime, backend, job_key, on_output))


def job_status(job_key: str, *, host: Host | None = None) -> str:
    """``unknown``; ``pending`` (submitted, not yet running on an instance); ``running``; or
    how it ended (``succeeded``, ``exited``, ``failed``, ``cancelled``, ``died``, ...).
    Reads the table only; cheap."""
    return str(job_info(job_key, host=host)["status"])


def job_info(job_key: str, *, host: Host | None = None) -> dict[str, Any]:
    """Status (as ``job_status``), ``job_id`` (the prefix of its output lines) and
    ``instance_id`` of the job named ``job_key``."""
    backend = ClientRuntime.get().backend(host)
    try:
        row = keyed_job_state(backend, job_key)
    except JobNotFoundError:
        return {"status": "unknown", "job_id": None, "instance_id": None}
    if row["status"] == "ended":
        status = str(json.loads(str(row["final"]))["status"])
    else:
        status = "running" if row["status"] == "running" else "pending"
    job_id = row["job_id"] if row["job_id"] != "pending" else None
    return {"status": status, "job_id": job_id, "instance_id": row["instance_id"]}


def cancel_job(job_key: str, *, host: Host | None = None, timeout: float = 10.0) -> bool:
    """Stop the job named ``job_key`` and free its allocation. True if it was running."""
    runtime = ClientRuntime.get()
    backend = runtime.backend(host)

    async def cancel() -> bool:
        row = backend.table.get_job_key(job_key)
        if row is None or row["status"] == "ended" or not row["instance_id"]:
            return False
        instance = backend.table.get_instance(str(row["instance_id"]))
        if instance is None or instance.address is None:
            return False
        conn = await runtime.connection(instance, backend)
        conn.send({"type": "cancel", "job_id": row["job_id"], "reason": "cancel_job"})
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            current = backend.table.get_job_key(job_key)
            if current is None or current["status"] == "ended":
                return True
            await asyncio.sleep(0.02)
        return True

    return runtime.run(cancel())


def forget_job(job_key: str, *, host: Host | None = None) -> bool:
    """Delete the stored record (and outcome) of a keyed job."""
    return ClientRuntime.get().backend(host).table.forget_job_key(job_key)
