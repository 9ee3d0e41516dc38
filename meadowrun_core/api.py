"""The public entry points, sync and async. Each validates and uploads everything before
anything is allocated, then hands the work to the client runtime.

Here: one function or command, and exposing a port of this machine to instances. Map jobs
are in ``api_maps.py`` and keyed jobs (attach, status, cancel) in ``api_keyed_jobs.py``;
their entry points are imported here too, so ``meadowrun_core.api`` names every one."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from meadowrun_core.api_keyed_jobs import (
    attach_job,
    cancel_job,
    forget_job,
    job_info,
    job_status,
    wait_job_async,
)
from meadowrun_core.api_maps import (
    run_map,
    run_map_as_completed,
    run_map_as_completed_async,
    run_map_async,
)
from meadowrun_core.client.job_handle import JobHandle
from meadowrun_core.client.job_limits import NO_LIMITS, JobLimits
from meadowrun_core.client.job_prepare import (
    PreparedJob,
    prepare_command_job,
    prepare_function_job,
)
from meadowrun_core.client.names import check_function_name
from meadowrun_core.client.runtime import ClientRuntime
from meadowrun_core.deployment.spec import Deployment
from meadowrun_core.exceptions import BadInputError, CommandResult
from meadowrun_core.hosts import Host
from meadowrun_core.resources import Resources

__all__ = [
    "attach_job",
    "cancel_job",
    "current_client_id",
    "expose_port",
    "forget_job",
    "job_info",
    "job_status",
    "run_command",
    "run_command_async",
    "run_function",
    "run_function_async",
    "run_map",
    "run_map_as_completed",
    "run_map_as_completed_async",
    "run_map_async",
    "wait_job_async",
]


def run_function(
    function: Callable[..., Any] | str,
    *,
    host: Host | None = None,
    resources: Resources | None = None,
    deployment: Deployment | None = None,
    args: tuple[Any, ...] | list[Any] = (),
    kwargs: dict[str, Any] | None = None,
    wait_for_result: bool = True,
    max_num_task_attempts: int = 1,
    timeout: float | None = None,
    priority: float = 1.0,
    job_key: str | None = None,
    detach: bool = False,
    detached_timeout: float | None = None,
    cache: bool = False,
    retry_with_more_memory: bool = False,
) -> Any:
    """Run ``function(*args, **kwargs)`` on an instance and return its result.

    ``function``: a callable (pickled with cloudpickle) or a name ``"package.module.function"``
    that the worker imports from the deployed code.
    ``host`` (default None): where to run: ``AllocLocalInstance()`` (the local cloud),
    ``AllocEC2Instance(...)``; None means ``MEADOWRUN_HOST``, else the local cloud.
    ``deployment`` (default None): the interpreter and code the job runs with
    (``Deployment.mirror_local()``, ``git_repo(...)``, ...); None mirrors the caller's code and
    environment.
    ``resources`` (default None: ``Resources()``, 1 CPU and 2 GB): what the job needs.
    ``args`` (default ()) and ``kwargs`` (default None): the arguments to call it with.
    ``wait_for_result`` (default True): False returns a ``JobHandle`` at once (``.result()``,
    ``.done()``, ``.cancel()``).
    ``max_num_task_attempts`` (default 1): a job whose function raised or whose worker died
    (also out of memory) or that timed out is run again, up to this many attempts in
    all; the last attempt's outcome is returned or raised, and each retry is logged (INFO, on
    ``meadowrun_core.client.job_events``) with the attempt and why it failed. Not with
    ``job_key``.
    ``timeout`` (default None: no limit): seconds the job may run, counted from when its
    call starts on its instance (waiting for an instance and preparing the deployment
    there do not count); past it the job is killed, its allocation freed, and
    ``JobTimeoutError`` raised (by ``JobHandle.result()`` too).
    ``priority`` (default 1.0): the job's weight in the raffle for room while jobs wait at
    the cloud's launch limit: the next job to get room is drawn with probability
    proportional to its priority, across every client of the cloud (meadowgrid's raffle).
    ``job_key`` (default None): a name for the job that any process can find it by
    (``attach_job``, ``job_status``, ``cancel_job``, ``meadowrun logs KEY``); submitting a key
    that exists follows that job instead of starting another.
    ``detach`` (default False): True lets the job outlive this process (needs ``job_key``).
    ``detached_timeout`` (default None: 24 hours): seconds a detached job may run.
    ``cache`` (default False): True returns the stored result of an earlier successful call
    with the same function code, arguments and deployment without running (or launching)
    anything, and stores this call's result otherwise; failures are never stored. Not with
    ``job_key``. Results are kept in the cloud's object store for 7 days
    (``meadowrun cache clear`` empties it).
    ``retry_with_more_memory`` (default False): True runs an attempt that ran out of memory
    again (within ``max_num_task_attempts``) with twice the memory, up to the largest
    instance type that suits the job; ``JobHandle.attempts`` lists each attempt's memory and
    outcome, and a final ``OutOfMemoryError`` names the memory of every attempt.

    Its stdout and stderr stream back while it runs (logged on ``meadowrun_core.job``). An
    exception it raises is raised here as ``TaskException`` with the remote traceback.

    Example::

        import meadowrun_core as mr
        mr.run_function(sum, args=([1, 2, 3],))                       # -> 6
        mr.run_function(train, resources=mr.Resources(logical_cpu=4, memory_gb=16))
        handle = mr.run_function(train, wait_for_result=False)
        handle.result()
    """
    limits = JobLimits.check(
        timeout, max_num_task_attempts, job_key, priority, retry_with_more_memory
    )
    check_function_name(function, host, deployment)
    prepared = prepare_function_job(
        function,
        host,
        resources,
        deployment,
        args,
        kwargs,
        job_key,
        detach,
        detached_timeout,
        cache=cache,
        limits=limits,
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
    max_num_task_attempts: int = 1,
    timeout: float | None = None,
    priority: float = 1.0,
    job_key: str | None = None,
    detach: bool = False,
    detached_timeout: float | None = None,
    cache: bool = False,
    retry_with_more_memory: bool = False,
) -> Any:
    """The async twin of ``run_function``: ``await`` it for the result.

    Parameters as for ``run_function``: ``function``, ``host`` (default None), ``resources``
    (default None), ``deployment`` (default None), ``args`` (default ()), ``kwargs`` (default
    None), ``wait_for_result`` (default True: False returns a ``JobHandle``, itself awaitable),
    ``max_num_task_attempts`` (default 1), ``timeout`` (default None: no limit; past it
    ``JobTimeoutError``), ``priority`` (default 1.0: weight in the raffle for room),
    ``job_key`` (default None), ``detach`` (default False),
    ``detached_timeout`` (default None), ``cache`` (default False: True returns a stored result
    of the same call, see ``run_function``), ``retry_with_more_memory`` (default False: an
    attempt out of memory is followed by one with twice the memory).

    Example::

        result = await mr.run_function_async(sum, args=([1, 2, 3],))
    """
    limits = JobLimits.check(
        timeout, max_num_task_attempts, job_key, priority, retry_with_more_memory
    )
    # validating, pickling and uploading block: do them off the caller's event loop
    prepared = await asyncio.to_thread(
        _prepare_function,
        function,
        host,
        resources,
        deployment,
        args,
        kwargs,
        job_key,
        detach,
        detached_timeout,
        cache,
        limits,
    )
    if not wait_for_result:
        return prepared.handle()
    return await prepared.runtime.run_async(prepared.job)


def _prepare_function(
    function: Callable[..., Any] | str,
    host: Host | None,
    resources: Resources | None,
    deployment: Deployment | None,
    args: tuple[Any, ...] | list[Any],
    kwargs: dict[str, Any] | None,
    job_key: str | None,
    detach: bool,
    detached_timeout: float | None,
    cache: bool = False,
    limits: JobLimits = NO_LIMITS,
) -> PreparedJob:
    check_function_name(function, host, deployment)
    return prepare_function_job(
        function,
        host,
        resources,
        deployment,
        args,
        kwargs,
        job_key,
        detach,
        detached_timeout,
        cache=cache,
        limits=limits,
    )


def run_command(
    args: str | list[str],
    *,
    host: Host | None = None,
    resources: Resources | None = None,
    deployment: Deployment | None = None,
    environment: dict[str, str] | None = None,
    wait_for_result: bool = True,
    max_num_task_attempts: int = 1,
    timeout: float | None = None,
    priority: float = 1.0,
    job_key: str | None = None,
    detach: bool = False,
    detached_timeout: float | None = None,
) -> CommandResult | JobHandle[CommandResult]:
    """Run a command on an instance and return its ``CommandResult`` (``.return_code``).

    ``args``: the command, a list (``["python", "train.py"]``) or a string split as a shell
    would (no shell runs it). It runs in the mirror of the caller's working directory.
    ``host`` (default None): where to run: ``AllocLocalInstance()`` (the local cloud),
    ``AllocEC2Instance(...)``; None means ``MEADOWRUN_HOST``, else the local cloud.
    ``deployment`` (default None): the interpreter and code the job runs with
    (``Deployment.mirror_local()``, ``git_repo(...)``, ...); None mirrors the caller's code and
    environment.
    ``resources`` (default None: ``Resources()``): what the command needs.
    ``environment`` (default None): extra environment variables for the command.
    ``wait_for_result`` (default True): False returns a ``JobHandle`` at once (``.result()``,
    ``.done()``, ``.cancel()``).
    ``max_num_task_attempts`` (default 1): a job whose command exited with a non-zero code
    or whose worker died (also out of memory) or that timed out is run again, up to this many
    attempts in all; the last attempt's outcome is returned or raised, and each retry is
    logged (INFO, on ``meadowrun_core.client.job_events``) with the attempt and why it
    failed. Not with ``job_key``.
    ``timeout`` (default None: no limit): seconds the job may run, counted from when its
    process starts on its instance (waiting for an instance and preparing the deployment
    there do not count); past it the job is killed, its allocation freed, and
    ``JobTimeoutError`` raised (by ``JobHandle.result()`` too).
    ``priority`` (default 1.0): the job's weight in the raffle for room while jobs wait at
    the cloud's launch limit: the next job to get room is drawn with probability
    proportional to its priority, across every client of the cloud (meadowgrid's raffle).
    ``job_key`` (default None): a name for the job that any process can find it by
    (``attach_job``, ``job_status``, ``cancel_job``, ``meadowrun logs KEY``); submitting a key
    that exists follows that job instead of starting another.
    ``detach`` (default False): True lets the job outlive this process (needs ``job_key``).
    ``detached_timeout`` (default None: 24 hours): seconds a detached job may run.

    Its output streams back to the ``meadowrun_core.job`` logger while it runs; a non-zero exit
    code is returned, not raised.

    Example::

        result = mr.run_command(["python", "train.py", "--epochs", "3"])
        assert result.return_code == 0
    """
    limits = JobLimits.check(timeout, max_num_task_attempts, job_key, priority)
    prepared = prepare_command_job(
        args, host, resources, deployment, environment, job_key, detach, detached_timeout, limits
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
    max_num_task_attempts: int = 1,
    timeout: float | None = None,
    priority: float = 1.0,
    job_key: str | None = None,
    detach: bool = False,
    detached_timeout: float | None = None,
) -> CommandResult | JobHandle[CommandResult]:
    """The async twin of ``run_command``: ``await`` it for the ``CommandResult``.

    Parameters as for ``run_command``: ``args``, ``host`` (default None), ``resources`` (default
    None), ``deployment`` (default None), ``environment`` (default None), ``wait_for_result``
    (default True), ``max_num_task_attempts`` (default 1), ``timeout`` (default None: no
    limit; past it ``JobTimeoutError``), ``priority`` (default 1.0: weight in the raffle for
    room), ``job_key`` (default None), ``detach`` (default False), ``detached_timeout``
    (default None).

    Example::

        result = await mr.run_command_async("python train.py")
    """
    limits = JobLimits.check(timeout, max_num_task_attempts, job_key, priority)
    prepared = await asyncio.to_thread(  # off the caller's event loop: it uploads code
        prepare_command_job,
        args,
        host,
        resources,
        deployment,
        environment,
        job_key,
        detach,
        detached_timeout,
        limits,
    )
    if not wait_for_result:
        return prepared.handle()
    result: CommandResult = await prepared.runtime.run_async(prepared.job)
    return result


def current_client_id() -> str:
    return ClientRuntime.get().client_id


def expose_port(port: int, *, host: Host | None = None) -> None:
    """Let jobs on ``host``'s instances reach a service of this machine at the same address:
    their ``127.0.0.1:port`` leads to this machine's ``127.0.0.1:port`` (e.g. a Prefect API
    server that the flow process runs). On the local cloud the instances are this machine, so
    nothing is needed; on a cloud it is a reverse forward over the SSH connection to each
    instance, so no port of this machine is opened to the network.

    ``port``: the port, 1 to 65535. ``host`` (default None: the default host).

    Example::

        mr.expose_port(4200, host=mr.AllocEC2Instance("us-east-1"))
    """
    if not 0 < port < 65536:
        raise BadInputError(f"expose_port({port}): a port is a number from 1 to 65535")
    runtime = ClientRuntime.get()
    runtime.run(runtime.backend(host).expose(port))
