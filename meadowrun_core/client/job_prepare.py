"""Preparing a function or command job: everything is checked and uploaded before anything is
allocated, then the job (or, for a key that names a job already, a follower of it) is ready to
run or to hand back as a ``JobHandle``."""

from __future__ import annotations

import shlex
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from typing import Any

from meadowrun_core.backend import Backend
from meadowrun_core.client.allocation import check_satisfiable
from meadowrun_core.client.job_events import JobChannel, Submission
from meadowrun_core.client.job_handle import JobHandle
from meadowrun_core.client.job_limits import NO_LIMITS, JobLimits
from meadowrun_core.client.jobs import command_job, function_job
from meadowrun_core.client.keyed_jobs import claim_submission, follow_keyed_job
from meadowrun_core.client.payload import (
    check_deployment,
    check_resources,
    pickle_arguments,
    prepare_deployment,
    upload_function,
)
from meadowrun_core.client.result_cache import (
    ResultCache,
    cached_value,
    check_cache_flag,
    run_and_store,
)
from meadowrun_core.client.runtime import ClientRuntime
from meadowrun_core.deployment.spec import Deployment, PreparedDeployment
from meadowrun_core.exceptions import BadInputError
from meadowrun_core.hosts import Host
from meadowrun_core.resources import Resources


@dataclass(frozen=True)
class JobTarget:
    """Where a job runs and with what, checked before anything is uploaded: its cloud, its
    resources (satisfiable there) and its deployment."""

    runtime: ClientRuntime
    backend: Backend
    resources: Resources
    deployment: Deployment

    def prepare_deployment(self) -> PreparedDeployment:
        """Upload the deployment's code (only what changed) and describe it for the worker."""
        return prepare_deployment(self.backend, self.deployment)


def check_job_target(
    host: Host | None,
    resources: Resources | None,
    deployment: Deployment | None,
    resources_name: str = "resources",
) -> JobTarget:
    """The opening steps every job kind shares: pick the cloud, check the resources (named
    ``resources_name`` in errors) and deployment, and that some instance could hold the job."""
    runtime = ClientRuntime.get()
    backend = runtime.backend(host)
    checked_resources = check_resources(resources, resources_name)
    checked_deployment = check_deployment(deployment)
    check_satisfiable(backend, checked_resources)
    return JobTarget(runtime, backend, checked_resources, checked_deployment)


@dataclass
class PreparedJob:
    runtime: ClientRuntime
    job: Coroutine[Any, Any, Any]
    description: str
    job_key: str | None

    control: JobChannel = field(default_factory=JobChannel)

    def handle(self) -> JobHandle[Any]:
        self.control.follow()  # before it runs (its room is never held: the job id is the handle's)
        return JobHandle(
            self.runtime.submit(self.job), self.description, self.job_key, self.control
        )


def prepare_function_job(
    function: Callable[..., Any] | str,
    host: Host | None,
    resources: Resources | None,
    deployment: Deployment | None,
    args: tuple[Any, ...] | list[Any],
    kwargs: dict[str, Any] | None,
    job_key: str | None = None,
    detach: bool = False,
    detached_timeout: float | None = None,
    cache: bool = False,
    limits: JobLimits = NO_LIMITS,
) -> PreparedJob:
    """Validate and upload everything, then return the coroutine that runs the job (with
    ``cache``: the stored result of the same call, or the job storing its result)."""
    check_cache_flag(cache, job_key)
    target = check_job_target(host, resources, deployment)
    if not isinstance(args, tuple | list):
        raise BadInputError(f"args must be a tuple or list, got {type(args).__name__}")
    arguments = pickle_arguments(tuple(args), dict(kwargs or {}))
    function_ref = upload_function(target.backend, function)
    prepared = target.prepare_deployment()
    description = f"run_function {getattr(function, '__qualname__', function)}"
    results: ResultCache | None = None
    cache_key = ""
    if cache:  # looked up before anything is allocated: a cached call launches nothing
        results = ResultCache.for_call(target.backend, "function", function_ref, prepared)
        cache_key = results.key(arguments)
        found = results.lookup([cache_key])
        if found:
            job = cached_value(found[0], description)
            return PreparedJob(target.runtime, job, description, None)

    def make_job(submission: Submission) -> Coroutine[Any, Any, Any]:
        job = function_job(
            target.runtime,
            target.backend,
            replace(
                submission, priority=limits.priority, retry_with_more_memory=limits.more_memory
            ),
            function_ref,
            arguments,
            target.resources,
            prepared,
            description,
            lambda: target.prepare_deployment().to_json(),
            limits.timeout,
            limits.attempts,
        )
        return job if results is None else run_and_store(results, cache_key, job)

    return _start_or_follow(target, description, (job_key, detach, detached_timeout), make_job)


def prepare_command_job(
    args: str | list[str],
    host: Host | None,
    resources: Resources | None,
    deployment: Deployment | None,
    environment: dict[str, str] | None,
    job_key: str | None = None,
    detach: bool = False,
    detached_timeout: float | None = None,
    limits: JobLimits = NO_LIMITS,
) -> PreparedJob:
    target = check_job_target(host, resources, deployment)
    argv = shlex.split(args) if isinstance(args, str) else [str(a) for a in args]
    if not argv:
        raise BadInputError("run_command needs a command, got an empty one")
    env = {str(k): str(v) for k, v in (environment or {}).items()}
    prepared = target.prepare_deployment()
    description = f"run_command {argv[0]}"
    return _start_or_follow(
        target,
        description,
        (job_key, detach, detached_timeout),
        lambda submission: command_job(
            target.runtime,
            target.backend,
            replace(submission, priority=limits.priority),
            argv,
            target.resources,
            prepared,
            env,
            description,
            limits.timeout,
            limits.attempts,
        ),
    )


def _start_or_follow(
    target: JobTarget,
    description: str,
    keying: tuple[str | None, bool, float | None],
    make_job: Callable[[Submission], Coroutine[Any, Any, Any]],
) -> PreparedJob:
    """The job to run, or, when its key already names a job, a follower of that job."""
    runtime, backend = target.runtime, target.backend
    submission, exists = claim_submission(runtime, backend, *keying)
    if exists:
        assert submission.job_key is not None
        follower = follow_keyed_job(runtime, backend, submission.job_key)
        return PreparedJob(runtime, follower, description, submission.job_key)
    job = make_job(submission)
    return PreparedJob(runtime, job, description, submission.job_key, submission.control)
