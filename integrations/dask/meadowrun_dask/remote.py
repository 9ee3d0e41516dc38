"""What runs on the instances: a Dask scheduler or worker inside one meadowrun job.

Each function runs its server in-process on a fresh event loop and returns when the server
closes, so the job's lifetime is the server's lifetime: cancelling the job, or the client's
lease lapsing, stops the server, and the job ending tells the cluster that the server is gone.
Certificates arrive as pickled function arguments over meadowrun's authenticated channel, never
on a command line, in an environment variable or on disk.
"""

# distributed has no type hints; calling it is the point of this module
# mypy: disallow-untyped-calls=False

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import dask.config
from dask.utils import parse_timedelta
from distributed import Scheduler
from distributed.security import Security
from distributed.utils import import_term

import meadowrun_core as mr

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def _remote_context(config: dict[str, Any]) -> Iterator[None]:
    """The client's Dask config for this job, and its servers' log records sent to the client
    as records (their own level and logger) from ``remote-log-level`` up.

    Their stderr copies are silenced, so a record is not also streamed as text (which the
    client could only log as a stderr line); the servers' own log buffers (get_logs) keep
    everything because only the handlers change.
    """
    log_level = config.get("meadowrun", {}).get("remote-log-level") or "warning"
    forwarder = mr.JobLogForwarder(level=logging.getLevelName(str(log_level).upper()))
    loggers = [logging.getLogger(name) for name in ("distributed", "meadowrun_dask")]
    handlers = [
        h
        for logger_ in loggers
        for h in logger_.handlers
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
    ]
    saved = [h.level for h in handlers]
    saved_propagate = [logger_.propagate for logger_ in loggers]
    for handler in handlers:
        handler.setLevel(logging.CRITICAL + 1)
    for logger_ in loggers:
        logger_.addHandler(forwarder)
        logger_.propagate = False
    logging.getLogger("distributed").setLevel(logging.INFO)
    try:
        with dask.config.set(config):
            yield
    finally:
        for handler, old in zip(handlers, saved, strict=True):
            handler.setLevel(old)
        for logger_, propagate in zip(loggers, saved_propagate, strict=True):
            logger_.removeHandler(forwarder)
            logger_.propagate = propagate


async def is_listening(address: str, security: Security, timeout: float = 10) -> bool:
    """Whether a Dask server accepts connections at ``address``, checked without Dask's
    ``connect``: its exponential back-off can sleep for seconds after the server comes up,
    and a bare TCP probe of a TLS listener makes it log a failed handshake."""
    host, port = address.split("://", 1)[1].rsplit(":", 1)
    ssl_context = security.get_connection_args("client").get("ssl_context")
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host, int(port), ssl=ssl_context), timeout
        )
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def wait_until_listening(
    address: str, security: Security, timeout: float, interval: float = 0.02
) -> bool:
    """Poll ``address`` until it listens (True) or ``timeout`` passes (False)."""
    deadline = time.monotonic() + timeout
    while not await is_listening(address, security):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(interval)
    return True


def run_scheduler(
    host: str | None,
    port: int,
    dashboard_port: int,
    security: Security,
    options: dict[str, Any],
    config: dict[str, Any],
) -> None:
    """Run a Dask scheduler until it is closed (by the cluster, or when idle).

    Once it listens, its address is reported to the client (``meadowrun_core.report``): with
    ``host=None`` and ``port=0`` only the instance knows it.
    """
    with _remote_context(config):
        host = host or _instance_address()
        asyncio.run(_serve_scheduler(host, port, dashboard_port, security, options))


async def _serve_scheduler(
    host: str | None,
    port: int,
    dashboard_port: int,
    security: Security,
    options: dict[str, Any],
) -> None:
    protocol = "tls" if security.require_encryption else "tcp"
    options = dict(options)
    no_workers_warning = float(options.pop("no_workers_warning", 5))
    async with Scheduler(
        host=host,
        port=port,
        protocol=protocol,
        security=security,
        dashboard_address=f"{host or ''}:{dashboard_port}",
        **options,
    ) as scheduler:
        logger.info("scheduler listening at %s", scheduler.address)
        mr.report({"address": scheduler.address})
        watcher = asyncio.create_task(_warn_without_workers(scheduler, no_workers_warning))
        try:
            await scheduler.finished()
        finally:
            watcher.cancel()


async def _warn_without_workers(scheduler: Any, after: float) -> None:
    """Say so when tasks wait and the cluster has no worker to run them (as dask-cloudprovider
    does), once per such spell: otherwise work just hangs."""
    since: float | None = None
    warned = False
    while True:
        await asyncio.sleep(min(1.0, after / 2))
        waiting = len(scheduler.unrunnable) + len(scheduler.queued)
        if scheduler.workers or not waiting:
            since, warned = None, False
            continue
        since = since or time.monotonic()
        if not warned and time.monotonic() - since >= after:
            logger.warning(
                "%d task(s) are waiting and the cluster has no workers: start some with "
                "cluster.scale(n) or cluster.adapt(minimum=1, ...), or MeadowCluster(n_workers=n)",
                waiting,
            )
            warned = True


def run_worker(
    scheduler_address: str,
    name: Any,
    host: str | None,
    security: Security,
    worker_class: str,
    options: dict[str, Any],
    config: dict[str, Any],
) -> None:
    """Run a Dask worker (or nanny) until it closes; retire it on a spot interruption notice."""
    with _remote_context(config):
        host = host or _instance_address()
        asyncio.run(_serve_worker(scheduler_address, name, host, security, worker_class, options))


async def _serve_worker(
    scheduler_address: str,
    name: Any,
    host: str | None,
    security: Security,
    worker_class: str,
    options: dict[str, Any],
) -> None:
    cls = import_term(worker_class)
    poll = parse_timedelta(dask.config.get("meadowrun.interruption-poll-interval"))
    # The first workers start alongside the scheduler; wait for it here, promptly, rather
    # than in the Worker's own connect loop, whose back-off grows to seconds.
    patience = parse_timedelta(options.get("death_timeout") or 120)
    if not await wait_until_listening(scheduler_address, security, patience):
        raise TimeoutError(
            f"the scheduler at {scheduler_address} did not listen within {patience:g} s"
        )
    async with cls(scheduler_address, name=name, host=host, security=security, **options) as server:
        # registered with the scheduler by now: the cluster's start() returns on this
        mr.report({"worker": getattr(server, "worker_address", None) or server.address})
        watcher = asyncio.create_task(_retire_on_interruption(server, poll))
        try:
            await server.finished()
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher


async def _retire_on_interruption(server: Any, interval: float) -> None:
    """On a spot interruption notice, leave the cluster gracefully before the instance goes:
    the scheduler moves this worker's data to other workers first (``close_gracefully``)."""
    while True:
        try:
            deadline = await asyncio.to_thread(mr.interruption_notice)
        except Exception:
            logger.debug("could not read the interruption notice", exc_info=True)
            deadline = None
        if deadline is not None:
            break
        await asyncio.sleep(interval)
    left = deadline - time.time()
    logger.warning(
        "spot interruption notice: instance %s goes in %.1f s; retiring worker %s",
        mr.current_instance_id(),
        left,
        getattr(server, "name", "?"),
    )
    try:
        # keep a second in hand to close before the instance is killed
        await asyncio.wait_for(_retire(server), left - 1)
    except TimeoutError:
        logger.warning("could not move all data before the interruption; closing now")
        await server.close(reason="spot-interruption")


async def _retire(server: Any) -> None:
    worker_address = getattr(server, "worker_address", None)
    if worker_address is None:  # a Worker: it asks the scheduler to take its data, then closes
        await server.close_gracefully(reason="spot-interruption")
        return
    # a Nanny: the scheduler drains its worker, then the nanny follows
    await server.scheduler.retire_workers(
        workers=[worker_address],
        close_workers=True,
        remove=True,
        stimulus_id=f"spot-interruption-{time.time()}",
    )
    await server.close(reason="spot-interruption")


def _instance_address() -> str | None:
    """The instance's own address in its network, as its cloud tells jobs
    (``MEADOWRUN_INSTANCE_ADDRESS``); Dask's own guess needs a default route, which an
    instance in a private subnet may lack."""
    return os.environ.get("MEADOWRUN_INSTANCE_ADDRESS") or None
