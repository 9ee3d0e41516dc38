"""The two kinds of single job, a function and a command: the header each sends to its
instance (run and followed by ``job_events.run_job``)."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

from meadowrun_core.backend import Backend
from meadowrun_core.client.job_events import Submission, run_job
from meadowrun_core.client.runtime import ClientRuntime
from meadowrun_core.deployment.spec import PreparedDeployment
from meadowrun_core.exceptions import CommandResult
from meadowrun_core.resources import Resources


def caller_cwd() -> str:
    """The caller's working directory with symlinks resolved (resolved once per directory:
    every job sends it)."""
    return _resolved(os.getcwd())


@functools.lru_cache(maxsize=64)
def _resolved(path: str) -> str:
    return os.path.realpath(path)


async def function_job(
    runtime: ClientRuntime,
    backend: Backend,
    submission: Submission,
    function_ref: dict[str, str],
    arguments: bytes,
    resources: Resources,
    deployment: PreparedDeployment,
    description: str,
    redeploy: Callable[[], dict[str, Any]] | None = None,
    timeout: float | None = None,
    attempts: int = 1,
) -> Any:
    header: dict[str, Any] = {
        "kind": "function",
        "deployment": deployment.to_json(),
        "caller_cwd": caller_cwd(),  # run in its mirror, as commands do
        **function_ref,
    }
    if timeout is not None:
        header["timeout"] = timeout
    return await run_job(
        runtime, backend, submission, resources, description, header, arguments, redeploy, attempts
    )


async def command_job(
    runtime: ClientRuntime,
    backend: Backend,
    submission: Submission,
    args: list[str],
    resources: Resources,
    deployment: PreparedDeployment,
    environment: dict[str, str],
    description: str,
    timeout: float | None = None,
    attempts: int = 1,
) -> CommandResult:
    header: dict[str, Any] = {
        "kind": "command",
        "deployment": deployment.to_json(),
        "args": args,
        "environment": environment,
        "caller_cwd": caller_cwd(),
    }
    if timeout is not None:
        header["timeout"] = timeout
    result: CommandResult = await run_job(
        runtime, backend, submission, resources, description, header, attempts=attempts
    )
    return result
