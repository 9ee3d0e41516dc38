"""What a host can take, for code that starts many jobs at once (a Dask cluster, nested
Prefect tasks): its launch limit, to size the jobs before submitting them, and why a job
cannot be placed now, to say what is missing rather than wait quietly."""

from __future__ import annotations

from meadowrun_core.client.capacity import shortage
from meadowrun_core.client.runtime import ClientRuntime
from meadowrun_core.hosts import Host
from meadowrun_core.resources import Resources


def launch_limit(host: Host | None = None) -> tuple[float, float]:
    """The logical CPUs and memory (GB) that the instances of ``host`` may have in all, the
    ceiling no set of jobs can exceed: the host's ``max_cpu`` / ``max_memory_gb``, else its
    cloud's setting (``MEADOWRUN_LOCAL_MAX_CPU``, ``MEADOWRUN_AWS_MAX_CPU``, ...).
    ``host`` (default None: ``MEADOWRUN_HOST``, else the local cloud) is opened as for a job
    (the local cloud's home is created if missing).

    Example::

        cpu, memory_gb = mr.launch_limit()   # e.g. (8.0, 32.0) on an 8-core laptop
    """
    backend = ClientRuntime.get().backend(host)
    return backend.max_cpu, backend.max_memory_gb


def capacity_shortage(
    resources: Resources | None = None, host: Host | None = None, count: int = 1
) -> str | None:
    """None if ``count`` jobs of ``resources`` (default ``Resources()``) fit on ``host``
    (default None: ``MEADOWRUN_HOST``, else the local cloud) now, on instances with room or on
    new ones within the launch limit; else a message for the user saying what is missing, the
    limit and how to raise it. Such jobs are not refused: they wait until room frees up, so
    this tells a caller what to say while they wait.

    Example::

        why = mr.capacity_shortage(mr.Resources(logical_cpu=4), count=10)
        if why is not None:
            logging.warning("the workers wait: %s", why)
    """
    backend = ClientRuntime.get().backend(host)
    return shortage(backend, resources or Resources(), count)
