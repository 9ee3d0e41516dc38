"""``MeadowCluster``: a Dask cluster whose scheduler and workers are meadowrun jobs.

Shaped like ``distributed.deploy.spec``: one small ``ProcessInterface`` per server, each a
meadowrun job started with ``run_function(wait_for_result=False)``, behind one ``SpecCluster``.
Meadowrun places each job on the cheapest instance that fits (workers on spot where allowed),
mirrors the caller's code and interpreter, and ties every job to the client's lease, so a
killed client leaves nothing running for long.
"""

# distributed's deploy API has no type hints; calling it is the point of this module
# mypy: disallow-untyped-calls=False

from __future__ import annotations

import asyncio
import errno
import logging
import math
import time
import weakref
from collections.abc import Mapping
from typing import Any

import dask.config
from dask.utils import parse_bytes, parse_timedelta
from distributed.comm.core import CommClosedError
from distributed.core import Status, rpc
from distributed.deploy.spec import ProcessInterface, SpecCluster
from distributed.security import Security
from distributed.utils import format_dashboard_link

import meadowrun_core as mr
from meadowrun_core.hosts import Host
from meadowrun_dask import remote
from meadowrun_dask.config import ensure_defaults
from meadowrun_dask.launcher import (
    Launcher,
    _free_ports,
    _GiB,
    _job_outcome,
    _PortInUseError,
    _security,
    _stop_job,
    check_fits,
    sizes,
)

logger = logging.getLogger(__name__)


class MeadowScheduler(ProcessInterface):
    """A Dask scheduler running as a meadowrun job (on-demand by default).

    ``start`` returns once the scheduler listens and its job has reported its address. On the
    local cloud the port is chosen here, so ``address`` is known even before the job starts
    and the first workers can boot alongside the scheduler.
    """

    def __init__(self, launcher: Launcher, options: dict[str, Any]) -> None:
        super().__init__()
        self.launcher = launcher
        self.options = options
        host = launcher.listen_host
        self.port, self.dashboard_port = _free_ports(2, host) if host else (0, 0)
        self.address = f"{launcher.protocol}://{host}:{self.port}" if host else None
        self.handle: mr.JobHandle[None] | None = None
        self._watch: asyncio.Task[BaseException | None] | None = None
        self._closing = False

    async def start(self) -> None:
        launcher = self.launcher
        began = time.monotonic()
        self.handle = await launcher.submit(
            remote.run_scheduler,
            launcher.scheduler_resources,
            (
                launcher.listen_host,
                self.port,
                self.dashboard_port,
                launcher.security,
                self.options,
                launcher.config,
            ),
        )
        self._watch = asyncio.ensure_future(self._follow())
        try:
            self.address = await self._reported_address()
            if launcher.listen_host is None:  # on a cloud instance, at its own address
                self.external_address = await self._reach(self.address)
        except BaseException:
            await self.close()
            raise
        logger.debug("scheduler %s up after %.2f s", self.address, time.monotonic() - began)
        await super().start()

    async def _reach(self, address: str) -> str:
        """The scheduler as this client reaches it: through the SSH connection meadowrun
        already holds to its instance (only SSH need be open to the client); TLS runs inside
        the tunnel as before. Workers use ``address`` inside the network."""
        assert self.handle is not None
        protocol, _, rest = address.rpartition("://")
        host, _, port = rest.rpartition(":")
        local_host, local_port = await asyncio.to_thread(self.handle.reach, host, int(port))
        return f"{protocol}://{local_host}:{local_port}"

    def dashboard_address(self, port: int) -> tuple[str, int]:
        """Where this client reaches the scheduler's dashboard at ``port``."""
        assert self.handle is not None and self.address is not None
        host = self.address.rpartition("://")[2].rpartition(":")[0]
        if self.external_address is None:
            return host, port
        return self.handle.reach(host, port)

    async def _reported_address(self) -> str:
        """The address the scheduler job reports once it listens; the job's error if it ends
        first; why it waits if it does not start in time."""
        assert self.handle is not None and self._watch is not None
        launcher = self.launcher
        try:
            report = await launcher.wait_ready(
                "the scheduler",
                self.handle,
                self._watch,
                launcher.scheduler_resources,
                launcher.scheduler_start_timeout,
            )
        except RuntimeError as exc:
            failure = exc.__cause__
            text = str(failure)
            if "Address already in use" in text or (
                isinstance(getattr(failure, "original", None), OSError)
                and failure.original.errno == errno.EADDRINUSE  # type: ignore[union-attr]
            ):
                raise _PortInUseError(text) from None
            if failure is None:
                raise RuntimeError(
                    "the scheduler job ended before it listened: it returned "
                    "(idle_timeout too short?)"
                ) from None
            raise
        return str(report["address"])

    async def _follow(self) -> BaseException | None:
        assert self.handle is not None
        outcome = await _job_outcome(self.handle)
        cluster = self.launcher.cluster()
        if not self._closing and cluster is not None:
            cluster._scheduler_exited(outcome)
        return outcome

    @property
    def ended(self) -> tuple[BaseException | None] | None:
        """``(outcome,)`` once the scheduler's job has ended, else None."""
        if self._watch is None or not self._watch.done() or self._watch.cancelled():
            return None
        return (self._watch.result(),)

    async def close(self) -> None:
        self._closing = True
        await _stop_job(self.handle, self._watch, self.launcher.close_grace)
        await super().close()


class MeadowWorker(ProcessInterface):
    """A Dask worker running as a meadowrun job, named by its spec key.

    ``start`` returns once the worker has registered with the scheduler, as a Nanny's does in
    LocalCluster, and raises if its job fails first or it finds no room in time. When the job
    ends for any reason other than a scale-down or close, the cluster starts a replacement.
    ``nthreads`` and ``memory_limit`` sit at the top of the spec's options, where SpecCluster
    looks for them (``scale(cores=...)``, ``scale(memory=...)``, ``adapt(minimum_cores=...)``).
    """

    def __init__(
        self,
        scheduler: str,
        name: Any,
        launcher: Launcher,
        worker_class: str,
        options: dict[str, Any],
        nthreads: int,
        memory_limit: int,
    ) -> None:
        super().__init__()
        self.scheduler = scheduler
        self.name = name
        self.launcher = launcher
        self.worker_class = worker_class
        self.options = {"nthreads": nthreads, "memory_limit": memory_limit, **options}
        self.handle: mr.JobHandle[None] | None = None
        self.started_at: float | None = None
        self.worker_address: str | None = None
        self._watch: asyncio.Task[BaseException | None] | None = None

    async def start(self) -> None:
        launcher = self.launcher
        self.handle = await launcher.submit(
            remote.run_worker,
            launcher.worker_resources,
            (
                self.scheduler,
                self.name,
                launcher.listen_host,
                launcher.security,
                self.worker_class,
                self.options,
                launcher.config,
            ),
        )
        self._watch = asyncio.ensure_future(self._follow())
        try:
            report = await launcher.wait_ready(
                f"worker {self.name!r}",
                self.handle,
                self._watch,
                launcher.worker_resources,
                launcher.worker_start_timeout,
            )
        except BaseException:
            await _stop_job(self.handle, self._watch, 0)
            raise
        self.started_at = time.monotonic()  # a worker that never came up lived 0 s
        self.worker_address = str(report["worker"])
        await super().start()

    async def _follow(self) -> BaseException | None:
        assert self.handle is not None
        outcome = await _job_outcome(self.handle)
        cluster = self.launcher.cluster()
        if cluster is not None:
            cluster._worker_exited(self, outcome)
        return outcome

    async def close(self) -> None:
        if self._watch is not None and not self._watch.done():
            await self._ask_to_leave()
        await _stop_job(self.handle, self._watch, self.launcher.close_grace)
        await super().close()

    async def _ask_to_leave(self) -> None:
        """Ask the worker to leave by itself, so its job ends normally and frees its allocation
        at once: on a scale-down the scheduler first moves its data to the other workers; when
        the whole cluster closes it just closes."""
        cluster = self.launcher.cluster()
        address = self.worker_address
        if cluster is None or address is None:
            return  # not registered yet: nothing to move, the job is cancelled
        try:
            if cluster.status == Status.running:
                assert cluster.scheduler_comm is not None
                await asyncio.wait_for(
                    cluster.scheduler_comm.retire_workers(
                        workers=[address],
                        close_workers=True,
                        remove=True,
                        stimulus_id=f"meadowrun-scale-down-{time.time()}",
                    ),
                    self.launcher.retire_timeout,
                )
            else:
                connection_args = self.launcher.security.get_connection_args("client")
                async with rpc(address, connection_args=connection_args) as worker:
                    await asyncio.wait_for(
                        worker.terminate(reason="meadowrun-cluster-close"),
                        self.launcher.close_grace,
                    )
        except CommClosedError:
            pass  # the worker closed before it answered
        except Exception as exc:
            logger.debug("worker %r did not leave by itself: %r", self.name, exc)

    def __repr__(self) -> str:
        return f"<MeadowWorker {self.name!r}: status={self.status.name}>"


class MeadowCluster(SpecCluster):
    """A Dask cluster on meadowrun-allocated instances; use it like ``LocalCluster``.

    >>> from dask.distributed import Client
    >>> with MeadowCluster(n_workers=2) as cluster, Client(cluster) as client:
    ...     client.submit(sum, [1, 2]).result()
    3

    Arguments left as ``None`` come from the ``meadowrun`` key of dask.config (see
    ``meadowrun.yaml``). ``worker_resources`` and ``scheduler_resources`` are
    ``meadowrun_core.Resources`` (or dicts of their fields); workers use spot instances when
    ``max_eviction_rate > 0``. ``security=True`` (the default) secures every connection with
    TLS and temporary per-cluster certificates. ``close()`` frees every allocation; if the
    client process dies, meadowrun stops the servers when its lease lapses.
    """

    def __init__(
        self,
        host: Host | None = None,
        n_workers: int | None = None,
        worker_resources: mr.Resources | Mapping[str, Any] | None = None,
        scheduler_resources: mr.Resources | Mapping[str, Any] | None = None,
        deployment: mr.Deployment | None = None,
        worker_options: Mapping[str, Any] | None = None,
        scheduler_options: Mapping[str, Any] | None = None,
        security: bool | Security | None = None,
        idle_timeout: str | float | None = None,
        worker_class: str | None = None,
        asynchronous: bool = False,
        loop: Any = None,
        name: str | None = None,
        shutdown_on_close: bool = True,
    ) -> None:
        ensure_defaults()
        cfg = dask.config.get("meadowrun")
        security_obj = _security(security)
        size = sizes(host, n_workers, worker_resources, scheduler_resources)
        check_fits(size)
        launcher = Launcher(self, host, deployment, security_obj, size.worker, size.scheduler)
        self._launcher = launcher
        self._next_name = 0
        self._failed_starts = 0
        self._early_exit = parse_timedelta(cfg["worker-early-exit"])
        self._max_failed_starts = int(cfg["max-failed-worker-starts"])

        resources = launcher.worker_resources
        options: dict[str, Any] = {
            "death_timeout": parse_timedelta(cfg["worker-death-timeout"]),
            **cfg["worker-options"],
            **(worker_options or {}),
        }
        sched_options: dict[str, Any] = {**cfg["scheduler-options"], **(scheduler_options or {})}
        sched_options.setdefault("no_workers_warning", parse_timedelta(cfg["no-workers-warning"]))
        idle = idle_timeout if idle_timeout is not None else cfg["idle-timeout"]
        if idle is not None:
            sched_options["idle_timeout"] = parse_timedelta(idle)
        worker_spec = {
            "cls": MeadowWorker,
            "options": {
                "launcher": launcher,
                "worker_class": worker_class or cfg["worker-class"],
                # where SpecCluster looks for them (scale(cores=...), scale(memory=...))
                "nthreads": options.pop("nthreads", max(1, math.floor(resources.logical_cpu))),
                "memory_limit": parse_bytes(
                    options.pop(
                        "memory_limit",
                        int(resources.memory_gb * _GiB * cfg["worker-memory-fraction"]),
                    )
                ),
                "options": options,
            },
        }
        self._i = 0
        super().__init__(
            workers={self._take_name(): worker_spec for _ in range(size.n_workers)},
            scheduler={
                "cls": MeadowScheduler,
                "options": {"launcher": launcher, "options": sched_options},
            },
            worker=worker_spec,
            asynchronous=asynchronous,
            loop=loop,
            security=security_obj,
            name=name,
            shutdown_on_close=shutdown_on_close,
        )

    # --- names ------------------------------------------------------------------------------
    def _take_name(self) -> Any:
        """The next worker's name, from ``_new_worker_name`` as in SpecCluster. Numbers are
        never reused, so a replacement cannot collide with a worker the scheduler has not yet
        noticed is gone."""
        while True:
            name = self._new_worker_name(self._next_name)
            self._next_name += 1
            if name not in getattr(self, "worker_spec", {}):
                return name

    def new_worker_spec(self) -> dict[Any, Any]:
        return {self._take_name(): self.new_spec}

    # --- start: scheduler and first workers together -------------------------------------------
    async def _start(self) -> None:
        if self.status == Status.created and self.scheduler is None:
            await self._boot()
        await super()._start()
        scheduler = self.scheduler
        if isinstance(scheduler, MeadowScheduler) and scheduler.ended is not None:
            self._scheduler_exited(scheduler.ended[0])  # it went while we connected

    async def _boot(self) -> None:
        """Start the scheduler and, when its address is known in advance (the local cloud),
        the first workers at the same time: they wait for it to listen, so a ready cluster
        costs one instance start instead of two in a row. Elsewhere the workers follow once the
        scheduler has reported its address (SpecCluster's ``_correct_state``)."""
        self._lock = asyncio.Lock()
        last: Exception | None = None
        for _ in range(3):
            scheduler = MeadowScheduler(**self.scheduler_spec["options"])
            workers = {}
            if scheduler.address is not None:
                workers = {
                    name: MeadowWorker(scheduler.address, name=name, **spec["options"])
                    for name, spec in self.worker_spec.items()
                }
            servers = [scheduler, *workers.values()]
            tasks = [asyncio.ensure_future(_await(s)) for s in servers]
            # the first failure stops the others (workers would wait for a dead scheduler)
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in tasks:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            errors = [
                r
                for r in results
                if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError)
            ]
            if not errors:
                self.scheduler = scheduler
                for worker in workers.values():
                    worker._cluster = weakref.ref(self)  # type: ignore[attr-defined]
                    self._created.add(worker)
                self.workers.update(workers)
                return
            await asyncio.gather(*(s.close() for s in servers), return_exceptions=True)
            last = next((e for e in errors if isinstance(e, Exception)), None)
            if not isinstance(last, _PortInUseError):
                break
            logger.info("the scheduler's port was taken; retrying with another")
        self.status = Status.failed
        await self._close()
        raise RuntimeError(f"Cluster failed to start: {last}") from last

    @property
    def dashboard_link(self) -> str:
        """The dashboard, reachable from here (tunnelled like the scheduler on a cloud)."""
        try:
            port = int(self.scheduler_info["services"]["dashboard"])
        except (KeyError, TypeError, ValueError):
            return ""
        scheduler = self.scheduler
        if not isinstance(scheduler, MeadowScheduler) or scheduler.handle is None:
            return str(super().dashboard_link)
        host, local_port = scheduler.dashboard_address(port)
        return str(format_dashboard_link(host, local_port))

    def _worker_address(self, name: Any) -> str | None:
        for address, info in self.scheduler_info["workers"].items():
            if info.get("name") == name:
                return str(address)
        return None

    # --- keeping the target ----------------------------------------------------------------------
    def _worker_exited(self, worker: MeadowWorker, outcome: BaseException | None) -> None:
        """Replace a worker whose job ended while the cluster still wants it (it died, its
        instance was reclaimed, or it lost the scheduler), under a new name."""
        if outcome is None and not getattr(worker, "_exit_settled", False):
            # it closed cleanly: maybe retired by an adaptive scale-down, whose removal from
            # the spec follows the retirement; decide once that had time to land
            worker._exit_settled = True  # type: ignore[attr-defined]
            asyncio.get_running_loop().call_later(
                self._launcher.close_grace, self._worker_exited, worker, outcome
            )
            return
        name = worker.name
        if self.status != Status.running or name not in self.worker_spec:
            return  # scaled down or closing: the end was asked for
        if self.workers.get(name, worker) is not worker:
            return
        self.workers.pop(name, None)
        spec = self.worker_spec.pop(name)
        lived = time.monotonic() - (worker.started_at or time.monotonic())
        if lived < self._early_exit:
            self._failed_starts += 1
        else:
            self._failed_starts = 0
        why = "it returned" if outcome is None else str(outcome).splitlines()[0]
        if self._failed_starts > self._max_failed_starts:
            message = (
                f"worker {name!r} exited ({why}); {self._failed_starts} workers in a "
                "row exited early, so it is not replaced. Full reason: " + str(outcome)
            )
            logger.error("%s", message)
            self._log(message)
            return
        new_name = self._take_name()
        self.worker_spec[new_name] = spec
        delay = 0.0 if self._failed_starts <= 1 else min(30.0, 0.5 * 2**self._failed_starts)
        message = f"worker {name!r} exited ({why}); starting {new_name!r} in its place"
        logger.warning("%s", message)
        self._log(message)
        asyncio.get_running_loop().call_later(delay, self._correct_state)

    def _scheduler_exited(self, outcome: BaseException | None) -> None:
        """The scheduler's job ended on its own (idle timeout, crash, interruption): nothing
        is left to coordinate the workers, so close the cluster and free their instances."""
        if self.status != Status.running:
            return  # starting: start() reports it; closing: expected
        why = "it closed (idle timeout?)" if outcome is None else str(outcome)
        message = f"the scheduler's job ended: {why}; closing the cluster"
        logger.warning("%s", message)
        self._log(message)
        assert self.scheduler is not None
        self.scheduler.status = Status.closed  # nothing to retire workers through
        self.shutdown_scheduler = False  # nor to terminate
        self._closing_task = asyncio.ensure_future(self._close())


async def _await(server: ProcessInterface) -> None:
    await server
