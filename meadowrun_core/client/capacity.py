"""Why a job waits for room: a message a user can act on, for integrations that start many
jobs at once (a Dask cluster, nested Prefect tasks) and must say what is missing rather than
hang quietly."""

from __future__ import annotations

from meadowrun_core.backend import Backend
from meadowrun_core.resources import Resources
from meadowrun_core.seams.allocation_table import (
    AllocationRecord,
    gpus_needed,
    instance_suits,
    room_fits,
)


def shortage(backend: Backend, resources: Resources, count: int = 1) -> str | None:
    """None if ``count`` jobs of ``resources`` fit now (on instances with room, or on new ones
    within the launch limit); else what is missing, the limit and how to raise it."""
    instances = backend.table.list_instances()
    placed = 0
    for instance in instances:
        if instance.address is None or instance.prevent_further_allocation:
            continue
        if not instance_suits(instance, resources):
            continue
        cpu, mem, gpus = instance.cpu_free, instance.memory_free, instance.gpus_free
        custom = dict(instance.custom_free)
        while placed < count and room_fits(resources, cpu, mem, gpus, custom):
            placed += 1
            cpu -= resources.logical_cpu
            mem -= resources.memory_gb
            gpus -= gpus_needed(resources)
            for name, amount in (resources.custom or {}).items():
                custom[name] = custom.get(name, 0.0) - amount
    room_cpu = backend.max_cpu - sum(i.cpu_total for i in instances)
    room_mem = backend.max_memory_gb - sum(i.memory_total for i in instances)
    if placed >= count or backend.provider.choices(resources, count - placed, room_cpu, room_mem):
        return None
    jobs = backend.table.list_allocations()
    return (
        f"{count - placed} job(s) of {resources.describe()} wait for room: "
        f"{backend.description} is at its limit, with {max(room_cpu, 0):g} CPU / "
        f"{max(room_mem, 0):g} GB left to launch and {len(jobs)} job(s) running "
        f"({_describe(jobs)}). They start when room frees up; ask for fewer or smaller jobs, "
        f"or {_raise_hint(backend)}"
    )


def _describe(jobs: list[AllocationRecord]) -> str:
    names = [j.description for j in jobs]
    shown = ", ".join(names[:5])
    return shown + (f", and {len(names) - 5} more" if len(names) > 5 else "") or "none"


def _raise_hint(backend: Backend) -> str:
    if backend.instances_are_this_machine:
        return (
            "raise the local cloud's limit with MEADOWRUN_LOCAL_MAX_CPU / "
            "MEADOWRUN_LOCAL_MAX_MEMORY_GB (or AllocLocalInstance(max_cpu=..., max_memory_gb=...))"
        )
    return (
        "raise the host's limit (AllocEC2Instance(max_cpu=..., max_memory_gb=...), or "
        "MEADOWRUN_AWS_MAX_CPU / MEADOWRUN_AWS_MAX_MEMORY_GB)"
    )
