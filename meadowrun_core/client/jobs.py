"""Running one job (a function or a command) on an allocated instance."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import pickle
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from meadowrun_core.client.allocation import Placement, allocate
from meadowrun_core.client.payload import (
    check_deployment,
    check_resources,
    pickle_arguments,
    prepare_deployment,
    upload_function,
)
from meadowrun_core.client.results import raise_for_final
from meadowrun_core.client.runtime import ClientRuntime
from meadowrun_core.deployment.spec import Deployment, PreparedDeployment
from meadowrun_core.exceptions import BadInputError, CommandResult
from meadowrun_core.hosts import Host
from meadowrun_core.local.backend import LocalBackend
from meadowrun_core.resources import Resources

job_log = logging.getLogger("meadowrun_core.job")
T = TypeVar("T")


class OutputLogger:
    """Logs a job's remote stdout and stderr line by line, prefixed with the job id."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self._partial: dict[str, bytes] = {}

    def write(self, stream: str, data: bytes) -> None:
        buffered = self._partial.get(stream, b"") + data
        *lines, rest = buffered.split(b"\n")
        self._partial[stream] = rest
        for line in lines:
            self._emit(stream, line)

    def flush(self) -> None:
        for stream, rest in self._partial.items():
            if rest:
                self._emit(stream, rest)
        self._partial.clear()

    def _emit(self, stream: str, line: bytes) -> None:
        level = logging.INFO if stream == "stdout" else logging.WARNING
        job_log.log(level, "[%s] %s", self.job_id, line.decode(errors="replace"))


async def run_on_instance(
    runtime: ClientRuntime,
    backend: LocalBackend,
    placement: Placement,
    header: dict[str, Any],
    blob: bytes = b"",
    on_output: Callable[[str, bytes], None] | None = None,
) -> tuple[dict[str, Any], bytes]:
    """Start a job on its instance and follow it to its final event."""
    assert placement.instance.address is not None
    try:
        conn = await runtime.connection(placement.instance.address, backend)
    except OSError as exc:
        backend.table.deallocate(placement.job_id, "instance unreachable")
        return {"type": "final", "job_id": placement.job_id, "status": "disconnected",
                "message": f"cannot reach instance {placement.instance.instance_id}: {exc}"}, b""
    events = conn.register(placement.job_id)
    logger = OutputLogger(placement.job_id)
    header = {**header, "type": "run", "job_id": placement.job_id}
    try:
        conn.send(header, blob)
        while True:
            event, payload = await events.get()
            if event["type"] == "output":
                (on_output or logger.write)(event["stream"], payload)
            elif event["type"] == "final":
                return event, payload
            elif event["type"] == "disconnected":
                return {"type": "final", "job_id": placement.job_id, "status": "disconnected",
                        "message": f"instance {placement.instance.instance_id} went away"}, b""
    except asyncio.CancelledError:
        conn.send({"type": "cancel", "job_id": placement.job_id, "reason": "cancelled by caller"})
        raise
    finally:
        logger.flush()
        conn.unregister(placement.job_id)


class JobHandle(Generic[T]):
    """A job started with ``wait_for_result=False``: wait on it, poll it, or cancel it."""

    def __init__(self, future: concurrent.futures.Future[T], description: str) -> None:
        self._future = future
        self.description = description

    def done(self) -> bool:
        return self._future.done()

    def result(self, timeout: float | None = None) -> T:
        return self._future.result(timeout)

    def cancel(self) -> bool:
        """Stop the job on its instance (its allocation is freed) and mark the handle cancelled."""
        return self._future.cancel()

    def cancelled(self) -> bool:
        return self._future.cancelled()

    def __await__(self) -> Any:
        return asyncio.wrap_future(self._future).__await__()

    def __repr__(self) -> str:
        state = "done" if self.done() else "running"
        return f"<JobHandle {self.description} {state}>"


async def function_job(
    runtime: ClientRuntime,
    backend: LocalBackend,
    function_ref: dict[str, str],
    arguments: bytes,
    resources: Resources,
    deployment: PreparedDeployment,
    description: str,
) -> Any:
    (placement,) = await allocate(backend, resources, 1, runtime.client_id, description)
    header = {"kind": "function", "deployment": deployment.to_json(), **function_ref}
    final, payload = await run_on_instance(runtime, backend, placement, header, arguments)
    if final["status"] == "succeeded":
        return pickle.loads(payload)
    raise_for_final(final, payload)


async def command_job(
    runtime: ClientRuntime,
    backend: LocalBackend,
    args: list[str],
    resources: Resources,
    deployment: PreparedDeployment,
    environment: dict[str, str],
    description: str,
) -> CommandResult:
    (placement,) = await allocate(backend, resources, 1, runtime.client_id, description)
    header = {"kind": "command", "deployment": deployment.to_json(), "args": args,
              "environment": environment}
    final, payload = await run_on_instance(runtime, backend, placement, header)
    if final["status"] == "exited":
        return CommandResult(final["return_code"], placement.job_id)
    if final["status"] == "failed_to_start":
        raise BadInputError(final["message"])
    raise_for_final(final, payload)
    raise AssertionError("unreachable")


def prepare_function_job(
    function: Callable[..., Any] | str,
    host: Host | None,
    resources: Resources | None,
    deployment: Deployment | None,
    args: tuple[Any, ...] | list[Any],
    kwargs: dict[str, Any] | None,
) -> tuple[ClientRuntime, Any]:
    """Validate and upload everything, then return the coroutine that runs the job."""
    runtime = ClientRuntime.get()
    backend = runtime.backend(host)
    checked_resources = check_resources(resources)
    checked_deployment = check_deployment(deployment)
    from meadowrun_core.client.allocation import check_satisfiable

    check_satisfiable(backend, checked_resources)
    if not isinstance(args, tuple | list):
        raise BadInputError(f"args must be a tuple or list, got {type(args).__name__}")
    arguments = pickle_arguments(tuple(args), dict(kwargs or {}))
    function_ref = upload_function(backend, function)
    prepared = prepare_deployment(backend, checked_deployment)
    description = f"run_function {getattr(function, '__qualname__', function)}"
    return runtime, function_job(
        runtime, backend, function_ref, arguments, checked_resources, prepared, description
    )


def prepare_command_job(
    args: str | list[str],
    host: Host | None,
    resources: Resources | None,
    deployment: Deployment | None,
    environment: dict[str, str] | None,
) -> tuple[ClientRuntime, Any]:
    runtime = ClientRuntime.get()
    backend = runtime.backend(host)
    checked_resources = check_resources(resources)
    checked_deployment = check_deployment(deployment)
    from meadowrun_core.client.allocation import check_satisfiable

    check_satisfiable(backend, checked_resources)
    if isinstance(args, str):
        import shlex

        argv = shlex.split(args)
    else:
        argv = [str(a) for a in args]
    if not argv:
        raise BadInputError("run_command needs a command, got an empty one")
    env = {str(k): str(v) for k, v in (environment or {}).items()}
    prepared = prepare_deployment(backend, checked_deployment)
    return runtime, command_job(
        runtime, backend, argv, checked_resources, prepared, env, f"run_command {argv[0]}"
    )
