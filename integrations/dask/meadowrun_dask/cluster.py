"""``MeadowCluster``: a Dask cluster whose scheduler and workers are meadowrun jobs.

Shaped like ``distributed.deploy.spec``: one small ``ProcessInterface`` per server
(``servers.py``), each a meadowrun job started with ``run_function(wait_for_result=False)``,
behind one ``SpecCluster``. Meadowrun places each job on the cheapest instance that fits
(workers on spot where allowed), mirrors the caller's code and interpreter, and ties every job
to the client's lease, so a killed client leaves nothing running for long.
"""

# distributed's deploy API has no type hints; calling it is the point of this module
# mypy: disallow-untyped-calls=False

from __future__ import annotations

import asyncio
import logging
import math
import time
import weakref
from collections.abc import Mapping
from typing import Any

import dask.config
from dask.utils import parse_bytes, parse_timedelta
from distributed.core import Status
from distributed.deploy.spec import ProcessInterface, SpecCluster
from distributed.security import Security
from distributed.utils import format_dashboard_link

import meadowrun_core as mr
from meadowrun_dask.config import ensure_defaults
from meadowrun_dask.launcher import Launcher, _GiB, _PortInUseError, _security, check_fits, sizes
from meadowrun_dask.servers import MeadowScheduler, MeadowWorker

logger = logging.getLogger(__name__)


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
        host: mr.Host | None = None,
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
