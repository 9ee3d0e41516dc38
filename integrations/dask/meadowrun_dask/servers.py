"""The two kinds of server of a ``MeadowCluster``, each a Dask ``ProcessInterface`` whose
process is one meadowrun job: ``MeadowScheduler`` and ``MeadowWorker``. Each starts its job,
waits until the server is up (or says why it is not), tells the cluster when the job ends by
itself, and on close lets the server leave cleanly before cancelling the job."""

# distributed's deploy API has no type hints; calling it is the point of this module
# mypy: disallow-untyped-calls=False

from __future__ import annotations

import asyncio
import errno
import logging
import time
from typing import Any

from distributed.comm.core import CommClosedError
from distributed.core import Status, rpc
from distributed.deploy.spec import ProcessInterface

import meadowrun_core as mr
from meadowrun_dask import remote
from meadowrun_dask.launcher import Launcher, _free_ports, _job_outcome, _PortInUseError, _stop_job

# servers log under their cluster's name, as the launcher does
logger = logging.getLogger("meadowrun_dask.cluster")


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
