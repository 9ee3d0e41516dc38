"""Per-task resources, deployment and host: ``meadowrun_options`` blocks and
``meadowrun:`` task tags."""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterable, Iterator

import meadowrun_core as mr

TAG_PREFIX = "meadowrun:"
_TAG_FIELDS = ("logical_cpu", "memory_gb", "gpus", "gpu_memory", "max_eviction_rate")


@dataclasses.dataclass(frozen=True)
class MeadowrunOptions:
    """Where and with what one task run runs; ``None`` fields fall back to the runner's."""

    resources: mr.Resources | None = None
    deployment: mr.Deployment | None = None
    host: mr.Host | None = None


_current_options: contextvars.ContextVar[MeadowrunOptions | None] = contextvars.ContextVar(
    "meadowrun_prefect_options", default=None
)


@contextlib.contextmanager
def meadowrun_options(
    *,
    resources: mr.Resources | None = None,
    deployment: mr.Deployment | None = None,
    host: mr.Host | None = None,
) -> Iterator[MeadowrunOptions]:
    """Resources, deployment or host for the tasks submitted inside this block.

    The Prefect counterpart of ``dask.annotate`` / prefect-ray's ``remote_options``::

        with meadowrun_options(resources=mr.Resources(logical_cpu=4, memory_gb=16)):
            big = train.submit(data)
    """
    outer = _current_options.get()
    options = MeadowrunOptions(
        resources=resources or (outer.resources if outer else None),
        deployment=deployment or (outer.deployment if outer else None),
        host=host or (outer.host if outer else None),
    )
    token = _current_options.set(options)
    try:
        yield options
    finally:
        _current_options.reset(token)


def resources_from_tags(tags: Iterable[str], base: mr.Resources) -> mr.Resources:
    """Apply ``meadowrun:<field>=<number>`` tags to ``base``; a bad tag fails the submit."""
    changes: dict[str, float] = {}
    for tag in tags:
        if not tag.startswith(TAG_PREFIX):
            continue
        name, sep, raw = tag[len(TAG_PREFIX) :].partition("=")
        if not sep or name not in _TAG_FIELDS:
            raise ValueError(
                f"unknown meadowrun tag {tag!r}: use {TAG_PREFIX}<field>=<number> with a field "
                f"among {', '.join(_TAG_FIELDS)}"
            )
        try:
            changes[name] = float(raw)
        except ValueError:
            raise ValueError(f"meadowrun tag {tag!r} needs a number after '='") from None
    return dataclasses.replace(base, **changes) if changes else base  # type: ignore[arg-type]
