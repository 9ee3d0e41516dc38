"""The handle of a job started without waiting for it: wait on it, poll it, cancel it."""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import time
from typing import Any, Generic, TypeVar

from meadowrun_core.backend import Backend
from meadowrun_core.client.job_events import JobChannel
from meadowrun_core.client.runtime import ClientRuntime
from meadowrun_core.exceptions import Attempt
from meadowrun_core.job_cost import NO_COST, JobCost, cost_of_history_row

T = TypeVar("T")


class JobHandle(Generic[T]):
    """A job started with ``wait_for_result=False`` (or found with ``attach_job``): wait on
    it, poll it, cancel it, or ``await`` it. Made by ``run_function``, ``run_command`` and
    ``attach_job``, not by users: ``future`` is the follower's future, ``description`` names
    the job in messages, ``job_key`` (default None) is its key if it has one, ``control``
    (default None) the channel that tells where it runs.

    Example::

        handle = mr.run_function(train, wait_for_result=False)
        handle.wait_started(timeout=60)
        if not handle.done():
            handle.cancel()
        value = handle.result(timeout=600)    # or: value = await handle
    """

    def __init__(
        self,
        future: concurrent.futures.Future[T],
        description: str,
        job_key: str | None = None,
        control: JobChannel | None = None,
    ) -> None:
        self._future = future
        self.description = description
        self.job_key = job_key
        self._control = control or JobChannel()
        self._started, self._reports = self._control.follow()

    @property
    def job_id(self) -> str | None:
        """The job's id (its output lines are prefixed with it) once it has been placed."""
        placement = self._control.placement
        return placement.job_id if placement else None

    @property
    def attempts(self) -> tuple[Attempt, ...]:
        """With ``retry_with_more_memory=True``: each attempt so far as ``Attempt(number,
        memory_gb, outcome)``; empty otherwise."""
        return self._control.attempts

    @property
    def instance_id(self) -> str | None:
        placement = self._control.placement
        return placement.instance.instance_id if placement else None

    @property
    def instance_address(self) -> str | None:
        """The address of the job's instance (reachable from the client) once placed."""
        placement = self._control.placement
        return placement.instance.address if placement else None

    def reach(self, host: str, port: int) -> tuple[str, int]:
        """An address on this machine for a server the job listens on at ``host``:``port`` (as
        its instance sees it): the same address on the local cloud, a port forwarded through the
        client's SSH connection on a cloud, so only SSH need be open to the client. The job must
        have started (``wait_started``).

        Example::

            address, port = handle.reach("127.0.0.1", 8787)
        """
        placement, backend = self._control.placement, self._control.backend
        if placement is None or backend is None:
            raise RuntimeError(f"{self.description} has not been placed on an instance yet")
        future = ClientRuntime.get().submit(backend.reach(placement.instance, host, port))
        return future.result()

    def wait_started(self, timeout: float | None = None) -> bool:
        """Block until the job was sent to its instance (True), or ``timeout`` seconds (default
        None: no limit) passed (False).
        """
        return self._started.wait(timeout)

    def next_report(self, timeout: float | None = None) -> Any:
        """The next value the job sent with ``meadowrun_core.report(value)``.

        ``timeout`` (default None: wait for ever): raises TimeoutError if none arrives in time.
        """
        try:
            return self._reports.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"no report from {self.description} within {timeout} s") from None

    def stop_following(self) -> None:
        """Stop following the job here but leave it running (keyed jobs: another process can
        ``attach_job`` it). The handle then reports cancelled."""
        if self.job_key is None:
            raise ValueError("only a keyed job (job_key=...) can be left running unfollowed")
        self._control.cancel_job_with_follower = False
        self._future.cancel()

    def done(self) -> bool:
        """Whether the job has ended (succeeded, failed or was cancelled)."""
        return self._future.done()

    def result(self, timeout: float | None = None) -> T:
        """The job's value (or its ``CommandResult``), waiting up to ``timeout`` seconds
        (default None: until it ends); raises the job's error (``TaskException``, ...), or
        TimeoutError.
        """
        return self._future.result(timeout)

    def cancel(self, wait: bool = False, timeout: float = 10.0) -> bool:
        """Stop the job on its instance (its allocation is freed) and mark the handle
        cancelled. ``wait`` (default False): True returns only once the allocation is gone, within
        ``timeout`` seconds (default 10.0).
        """
        cancelled = self._future.cancel()
        placement, backend = self._control.placement, self._control.backend
        if wait and placement is not None and backend is not None:
            table = backend.table
            deadline = time.monotonic() + timeout
            while any(a.job_id == placement.job_id for a in table.list_allocations()):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{placement.job_id} still allocated after {timeout} s")
                time.sleep(0.01)
        return cancelled

    def cancelled(self) -> bool:
        return self._future.cancelled()

    def cost(self, timeout: float = 10.0) -> JobCost:
        """What the job's time on its instance cost, once it has ended (``done()``): the
        seconds from its placement until its instance freed its room, times its CPU share of
        the instance, at the price the instance launched at (spot or on-demand), and the same
        at the on-demand price (``mr.JobCost``). The figures are those of ``meadowrun jobs
        --history``. A job that was never placed cost nothing. ``timeout`` (default 10.0):
        seconds to wait for the instance to record the end (a cancelled job's room is freed
        a moment after the handle is); TimeoutError after that.

        Example::

            handle.result()
            print(handle.cost().cost)   # USD
        """
        if not self.done():
            raise RuntimeError(f"{self.description} has not ended: its cost is known after")
        job_id, backend = self._placed()
        if job_id is None or backend is None:
            return NO_COST
        deadline = time.monotonic() + timeout
        while (row := backend.table.finished_job(job_id)) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{job_id} still holds its instance {timeout} s after it ended")
            time.sleep(0.05)
        return cost_of_history_row(row, backend.provider.on_demand_price(str(row["instance_type"])))

    def _placed(self) -> tuple[str | None, Backend | None]:
        """The job's id and its cloud, once it was placed on an instance."""
        placement, backend = self._control.placement, self._control.backend
        return (placement.job_id if placement else None), backend

    def __await__(self) -> Any:
        return asyncio.wrap_future(self._future).__await__()

    def __repr__(self) -> str:
        state = "done" if self.done() else "running"
        return f"<JobHandle {self.description} {state}>"
