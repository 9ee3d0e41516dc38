"""The two kinds of single job, a function and a command: the header each sends to its
instance (run and followed by ``job_events.run_job``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from meadowrun_core.backend import Backend
from meadowrun_core.client.job_events import Submission, run_job
from meadowrun_core.client.runtime import ClientRuntime
from meadowrun_core.deployment.spec import PreparedDeployment
from meadowrun_core.exceptions import CommandResult
from meadowrun_core.resources import Resources


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
) -> Any:
    header = {
        "kind": "function",
        "deployment": deployment.to_json(),
        "caller_cwd": os.path.realpath(os.getcwd()),  # run in its mirror, as commands do
        **function_ref,
    }
    return await run_job(
        runtime, backend, submission, resources, description, header, arguments, redeploy
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
) -> CommandResult:
    header = {
        "kind": "command",
        "deployment": deployment.to_json(),
        "args": args,
        "environment": environment,
        "caller_cwd": os.path.realpath(os.getcwd()),
    }
    result: CommandResult = await run_job(
        runtime, backend, submission, resources, description, header
    )
    return result
