"""Opening a map job: checking its inputs, pickling its arguments and uploading its function
and code before anything is allocated, then the ``MapJob`` that runs it (map_driver.py)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from meadowrun_core.client.job_limits import check_timeout
from meadowrun_core.client.job_prepare import check_job_target
from meadowrun_core.client.map_driver import MapJob
from meadowrun_core.client.memory_retry import check_retry_with_more_memory
from meadowrun_core.client.payload import pickle_task_argument, put_blob, upload_function
from meadowrun_core.client.result_cache import MapCache, check_cache_flag
from meadowrun_core.client.runtime import ClientRuntime
from meadowrun_core.deployment.spec import Deployment
from meadowrun_core.exceptions import BadInputError
from meadowrun_core.hosts import Host
from meadowrun_core.resources import Resources
from meadowrun_core.seams.raffle import check_priority


def prepare_map_job(
    function: Callable[..., Any] | str,
    args: Any,
    host: Host | None,
    resources_per_task: Resources | None,
    deployment: Deployment | None,
    num_concurrent_tasks: int | None,
    max_num_task_attempts: int,
    cache: bool = False,
    timeout: float | None = None,
    priority: float = 1.0,
    retry_with_more_memory: bool = False,
) -> tuple[ClientRuntime, MapJob | None]:
    check_cache_flag(cache)
    more = check_retry_with_more_memory(retry_with_more_memory)
    task_timeout = check_timeout(timeout)
    priority = check_priority(priority)
    target = check_job_target(host, resources_per_task, deployment, "resources_per_task")
    runtime, backend, resources = target.runtime, target.backend, target.resources
    if isinstance(args, str | bytes) or not hasattr(args, "__iter__"):
        raise BadInputError(
            f"args must be an iterable of task arguments, got {type(args).__name__}"
        )
    if not isinstance(max_num_task_attempts, int) or max_num_task_attempts < 1:
        raise BadInputError(f"max_num_task_attempts must be >= 1, got {max_num_task_attempts!r}")
    if num_concurrent_tasks is not None and (
        not isinstance(num_concurrent_tasks, int) or num_concurrent_tasks < 1
    ):
        raise BadInputError(f"num_concurrent_tasks must be >= 1, got {num_concurrent_tasks!r}")
    arguments = [pickle_task_argument(a, i) for i, a in enumerate(args)]
    if not arguments:
        return runtime, None
    function_ref = upload_function(backend, function)
    if "function_key" not in function_ref:
        # map workers load functions by key: store the import path as a tiny signed pickle
        function_ref = {
            "function_key": put_blob(
                backend, backend.signer.dumps(_ImportedFunction(function_ref["function_name"]))
            )
        }
    prepared = target.prepare_deployment()
    description = f"run_map {getattr(function, '__qualname__', function)}"
    # cache=True: looked up before anything is allocated
    map_cache = MapCache.open(backend, function_ref, prepared, arguments) if cache else None
    cached = map_cache.found(description) if map_cache is not None else []
    if num_concurrent_tasks is None:
        fit = math.floor(backend.max_cpu / max(resources.logical_cpu, 1e-9))
        num_concurrent_tasks = max(1, min(len(arguments) - len(cached), fit))
    job = MapJob(
        runtime,
        backend,
        function_ref["function_key"],
        arguments,
        resources,
        prepared,
        num_concurrent_tasks,
        max_num_task_attempts,
        description,
    )
    job.redeploy = target.prepare_deployment
    job.cache, job.cached = map_cache, cached
    job.task_timeout = task_timeout
    job.priority, job.more_memory = priority, more
    return runtime, job


class _ImportedFunction:
    """A picklable stand-in that imports ``package.module.function`` on the worker."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._function: Callable[..., Any] | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._function is None:
            from meadowrun_core.function_names import import_function

            self._function = import_function(self.name)
        return self._function(*args, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        return {"name": self.name, "_function": None}
