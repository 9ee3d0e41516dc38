"""Retry with more memory (Meadowrun's ``retry_with_more_memory``): an attempt that ran out
of memory is run again with twice the memory, up to what the cloud's largest instance type
that suits the job offers. Shared by single jobs (``job_events.run_job``) and maps
(``map_driver``, which runs such tasks again in a wave of bigger slots)."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING

from meadowrun_core import frames
from meadowrun_core.backend import Backend
from meadowrun_core.exceptions import BadInputError, ResourcesNotAvailableError, TaskResult
from meadowrun_core.resources import Resources

if TYPE_CHECKING:
    from meadowrun_core.client.map_driver import MapJob

log = logging.getLogger(__name__)

# how a final event or a map task's failure says the attempt ran out of memory: the agent
# stopped it past its memory (out_of_memory) or the function raised MemoryError (memory)
OUT_OF_MEMORY_KINDS = frozenset({"out_of_memory", "memory"})


def check_retry_with_more_memory(value: object) -> bool:
    if not isinstance(value, bool):
        raise BadInputError(f"retry_with_more_memory must be True or False, got {value!r}")
    return value


def ran_out_of_memory(final: frames.JobOutcome) -> bool:
    """Whether a single job's final event says it ran out of memory."""
    return final.get("status") == "out_of_memory" or (
        final.get("status") == "failed" and final.get("stage") == "memory"
    )


def outcome_of(final: frames.JobOutcome) -> str:
    """A single job attempt's outcome in a few words (for ``Attempt.outcome``)."""
    if ran_out_of_memory(final):
        return "out_of_memory"
    return str(final.get("status", "unknown"))


def more_memory(backend: Backend, resources: Resources) -> Resources | None:
    """``resources`` with twice the memory, or as much more as the largest instance type
    that suits the rest of the request offers; None when no more can be had."""
    doubled = dataclasses.replace(resources, memory_gb=resources.memory_gb * 2)
    if _satisfiable(backend, doubled):
        return doubled
    low, high = resources.memory_gb, doubled.memory_gb  # low fits, high does not
    for _ in range(30):
        middle = (low + high) / 2
        if _satisfiable(backend, dataclasses.replace(resources, memory_gb=middle)):
            low = middle
        else:
            high = middle
    best = round(low, 2)  # (the bisection ends a hair below a round limit)
    if not _satisfiable(backend, dataclasses.replace(resources, memory_gb=best)):
        best = math.floor(low * 100) / 100
    if best <= resources.memory_gb * 1.01:
        return None
    return dataclasses.replace(resources, memory_gb=best)


def _satisfiable(backend: Backend, resources: Resources) -> bool:
    try:
        backend.provider.check_satisfiable(resources)
    except ResourcesNotAvailableError:
        return False
    return True


async def bigger_wave(job: MapJob) -> AsyncGenerator[list[TaskResult], None]:
    """Run the tasks that ran out of memory again, as a map of their own whose slots
    have the more memory worked out when the first of them failed."""
    assert isinstance(job.bigger_resources, Resources)
    ids = sorted(job.memory_retries)
    wave = type(job)(
        job.runtime,
        job.backend,
        job.function_key,
        [job.arguments[i] for i in ids],
        job.bigger_resources,
        job.deployment,
        min(job.target_workers, len(ids)),
        job.max_attempts,
        f"{job.description} ({job.bigger_resources.memory_gb:g} GB)",
    )
    wave.more_memory, wave.progress = True, False
    wave.cache = job.cache.of_tasks(ids) if job.cache is not None else None
    wave.task_timeout, wave.priority, wave.redeploy = (
        job.task_timeout,
        job.priority,
        job.redeploy,
    )
    wave.first_attempts = {k: job.memory_retries[i] + 1 for k, i in enumerate(ids)}
    wave.history = {k: job.history.get(i, ()) for k, i in enumerate(ids)}
    for k, i in enumerate(ids):  # TaskResult.cost: the attempts out of memory count too
        wave.task_costs.carry(k, job.task_costs.pop(i))
    log.info(
        "%s: %d task(s) ran out of memory; running them again with %g GB",
        job.description,
        len(ids),
        job.bigger_resources.memory_gb,
    )
    async for batch in wave.result_batches():
        yield [dataclasses.replace(r, task_id=ids[r.task_id]) for r in batch]
