"""How a MeadowCluster's servers become meadowrun jobs: where they listen, what they ask for
(sized like LocalCluster on the local cloud), submitting them, and waiting for them to come up
with a reason when they do not (no room, a crash) rather than a bare timeout."""

# distributed's deploy API has no type hints; calling it is the point of this module
# mypy: disallow-untyped-calls=False

from __future__ import annotations

import asyncio
import copy
import dataclasses
import logging
import math
import socket
import time
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import dask.config
from dask.utils import parse_timedelta
from distributed.deploy.utils import nprocesses_nthreads
from distributed.security import Security

import meadowrun_core as mr

if TYPE_CHECKING:
    from meadowrun_dask.cluster import MeadowCluster

logger = logging.getLogger("meadowrun_dask.cluster")

_GiB = 2**30


class _PortInUseError(Exception):
    """The scheduler's chosen port was taken between choosing it and binding it."""


def _free_ports(count: int, host: str) -> list[int]:
    """Ports free on ``host`` now; the scheduler binds them a moment later (a lost race is
    retried with new ports)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _listen_host(host: mr.Host | None) -> str | None:
    """The address the servers listen on (None: Dask picks the machine's own address, and the
    scheduler reports it back). ``auto``: 127.0.0.1 on the local cloud, where every instance is
    this machine, else the instance's own address."""
    setting = str(dask.config.get("meadowrun.listen-host", "auto"))
    if setting == "auto":
        return "127.0.0.1" if isinstance(mr.resolve_host(host), mr.AllocLocalInstance) else None
    return None if setting == "any" else setting


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How many workers a cluster starts with and what each server asks for."""

    n_workers: int
    worker: mr.Resources
    scheduler: mr.Resources
    local_limit: tuple[float, float] | None  # (CPU, GB) on the local cloud, else None


def sizes(
    host: mr.Host | None,
    n_workers: int | str | None,
    worker: mr.Resources | Mapping[str, Any] | None,
    scheduler: mr.Resources | Mapping[str, Any] | None,
) -> Sizes:
    """LocalCluster's defaults on the local cloud: as many workers, with as many threads, as
    ``nprocesses_nthreads`` gives for its CPUs, each with its share of the memory, and a
    scheduler that takes a small share (1 GB, no CPU: LocalCluster's runs beside its
    workers); elsewhere 1 CPU / 2 GB each and no workers until scaled. Config and arguments
    override any field."""
    count = dask.config.get("meadowrun.n-workers") if n_workers is None else n_workers
    limit: tuple[float, float] | None = None
    if isinstance(mr.resolve_host(host), mr.AllocLocalInstance):
        limit = max_cpu, max_memory_gb = mr.launch_limit(host)
        procs, threads = nprocesses_nthreads(max(1, math.floor(max_cpu)))
        scheduler_auto = {"logical_cpu": 0.0, "memory_gb": 1.0}
        memory = math.floor((max_memory_gb - 1.0) / procs * 4) / 4
        worker_auto = {
            "logical_cpu": float(min(threads, max_cpu)),
            "memory_gb": max(memory, 0.25),
        }
    else:
        procs = 0
        scheduler_auto = worker_auto = {"logical_cpu": 1.0, "memory_gb": 2.0}
    if count == "auto":
        count = procs
    return Sizes(
        n_workers=int(count),
        worker=_resources(worker, worker_auto, "worker-resources"),
        scheduler=_resources(scheduler, scheduler_auto, "scheduler-resources"),
        local_limit=limit,
    )


def _resources(
    value: mr.Resources | Mapping[str, Any] | None, auto: Mapping[str, float], key: str
) -> mr.Resources:
    if isinstance(value, mr.Resources):
        return value
    merged = {**auto, **dask.config.get(f"meadowrun.{key}", {}), **(value or {})}
    return mr.Resources(**{k.replace("-", "_"): v for k, v in merged.items()})


def check_fits(sizes: Sizes) -> None:
    """On the local cloud, a cluster whose own scheduler and first workers exceed the launch
    limit could never start: say so now, with the numbers, rather than after a timeout."""
    if sizes.local_limit is None:
        return
    max_cpu, max_memory = sizes.local_limit
    cpu = sizes.scheduler.logical_cpu + sizes.n_workers * sizes.worker.logical_cpu
    memory = sizes.scheduler.memory_gb + sizes.n_workers * sizes.worker.memory_gb
    if cpu <= max_cpu + 1e-9 and memory <= max_memory + 1e-9:
        return
    raise mr.ResourcesNotAvailableError(
        f"MeadowCluster needs {cpu:g} CPU / {memory:g} GB (a scheduler of "
        f"{sizes.scheduler.describe()} and {sizes.n_workers} worker(s) of "
        f"{sizes.worker.describe()}), more than the local cloud's limit of {max_cpu:g} CPU / "
        f"{max_memory:g} GB. Ask for fewer or smaller workers (n_workers=, worker_resources=), "
        "or raise the limit with MEADOWRUN_LOCAL_MAX_CPU / MEADOWRUN_LOCAL_MAX_MEMORY_GB (or "
        "host=AllocLocalInstance(max_cpu=..., max_memory_gb=...))."
    )


def _security(value: bool | Security | None) -> Security:
    if value is None:
        value = dask.config.get("meadowrun.security")
    if isinstance(value, Security):
        return value
    # in memory only; it reaches the servers as a pickled job argument
    return Security.temporary() if value else Security()


async def _job_outcome(handle: mr.JobHandle[Any]) -> BaseException | None:
    """Wait for a job to end: None if it returned, else why it did not."""
    try:
        await handle
    except asyncio.CancelledError:
        if handle.cancelled():
            return mr.JobCancelledError("the job was cancelled")
        raise
    except Exception as exc:
        return exc
    return None


async def _stop_job(
    handle: mr.JobHandle[Any] | None, watch: asyncio.Task[Any] | None, grace: float
) -> None:
    """Give a closing server ``grace`` seconds to exit by itself (its job then ends normally
    and frees its allocation), then cancel the job, which kills the process; either way return
    once the allocation is freed."""
    if handle is None or watch is None:
        return
    if not watch.done():
        await asyncio.wait({watch}, timeout=grace)
    if not watch.done():
        try:
            await asyncio.to_thread(handle.cancel, wait=True)
        except TimeoutError:
            logger.warning("%s: its allocation was not freed in time after cancel()", handle)
        await asyncio.wait({watch}, timeout=5)


def _with_server_environment(deployment: mr.Deployment | None) -> mr.Deployment:
    """The deployment with the environment Dask's Nanny gives its worker processes
    (``distributed.nanny.pre-spawn-environ``: one BLAS thread per task thread, memory handed
    back to the OS), so these workers behave like LocalCluster's; the caller's variables win."""
    base = deployment or mr.Deployment.mirror_local()
    defaults = {
        **dask.config.get("distributed.nanny.pre-spawn-environ", {}),
        **dask.config.get("distributed.nanny.environ", {}),
    }
    environment = {str(k): str(v) for k, v in defaults.items()}
    environment.update(base.environment_variables)
    return dataclasses.replace(base, environment_variables=environment)


class Launcher:
    """What the scheduler and workers of one cluster share: where and how their jobs run, and
    the settings read once at creation (a later reset of Dask's config changes nothing)."""

    def __init__(
        self,
        cluster: MeadowCluster,
        host: mr.Host | None,
        deployment: mr.Deployment | None,
        security: Security,
        worker_resources: mr.Resources,
        scheduler_resources: mr.Resources,
    ) -> None:
        self.cluster = weakref.ref(cluster)
        self.host = host
        self.listen_host = _listen_host(host)
        self.deployment = _with_server_environment(deployment)
        self.security = security
        self.worker_resources = worker_resources
        self.scheduler_resources = scheduler_resources
        self.config = copy.deepcopy(dask.config.config)

        def seconds(key: str) -> float:
            return float(parse_timedelta(dask.config.get(f"meadowrun.{key}")))

        self.close_grace = seconds("close-grace")
        self.retire_timeout = seconds("retire-timeout")
        self.scheduler_start_timeout = seconds("scheduler-start-timeout")
        self.worker_start_timeout = seconds("worker-start-timeout")
        self.start_warning = seconds("start-warning")

    @property
    def protocol(self) -> str:
        return "tls" if self.security.require_encryption else "tcp"

    async def submit(
        self, function: Callable[..., None], resources: mr.Resources, args: tuple[Any, ...]
    ) -> mr.JobHandle[None]:
        # the async twin uploads code and arguments off this loop
        handle: mr.JobHandle[None] = await mr.run_function_async(
            function,
            host=self.host,
            resources=resources,
            deployment=self.deployment,
            args=args,
            wait_for_result=False,
        )
        return handle

    def _shortage(self, resources: mr.Resources) -> str | None:
        try:
            return mr.capacity_shortage(resources, self.host)
        except Exception:  # only an explanation: never let it fail the start
            logger.debug("could not tell why a server waits", exc_info=True)
            return None

    async def wait_ready(
        self,
        what: str,
        handle: mr.JobHandle[None],
        watch: asyncio.Task[BaseException | None],
        resources: mr.Resources,
        timeout: float,
    ) -> Any:
        """The first value the server's job reports once it is up. While the job waits for
        room, say so at WARNING after ``start-warning``; past ``timeout`` fail with why, and if
        the job ends first, fail with its error."""
        began = time.monotonic()
        warned = False
        while not watch.done():
            try:
                return handle.next_report(0)
            except TimeoutError:
                pass
            waited = time.monotonic() - began
            unplaced = handle.job_id is None
            if unplaced and not warned and waited > self.start_warning:
                why = await asyncio.to_thread(self._shortage, resources)
                if why is not None:
                    logger.warning("%s has waited %.0f s to start: %s", what, waited, why)
                    warned = True
            if waited > timeout:
                why = await asyncio.to_thread(self._shortage, resources) if unplaced else None
                detail = why or (
                    "its instance did not come up" if unplaced else "it did not come up"
                )
                raise TimeoutError(f"{what} did not start within {timeout:g} s: {detail}")
            await asyncio.sleep(0.02)
        failure = watch.result()
        raise RuntimeError(
            f"{what} ended before it started: {failure or 'its job returned'}"
        ) from failure
