"""The public entry points for keyed jobs: find, follow, cancel and forget a job by its
``job_key`` from any process."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from meadowrun_core import frames
from meadowrun_core.backend import Backend
from meadowrun_core.client.job_handle import JobHandle
from meadowrun_core.client.keyed_jobs import (
    JobNotFoundError,
    follow_keyed_job,
    kept_final,
    keyed_job_state,
)
from meadowrun_core.client.runtime import ClientRuntime
from meadowrun_core.hosts import Host

OutputCallback = Callable[[str, bytes], None]


def attach_job(
    job_key: str, *, host: Host | None = None, on_output: OutputCallback | None = None
) -> JobHandle[Any]:
    """A handle on the job named ``job_key``, from any process.

    ``job_key``: the key it was started with. ``host`` (default None: the default host): the
    cloud it runs in. ``on_output`` (default None: logged on ``meadowrun_core.job``): called as
    ``on_output(stream, data)`` with its output, from the start. ``result()`` raises
    ``JobNotFoundError`` if no such job exists. Cancelling the handle cancels the job.

    Example::

        mr.attach_job("nightly-1").result()
    """
    runtime = ClientRuntime.get()
    backend = runtime.backend(host)
    future = runtime.submit(follow_keyed_job(runtime, backend, job_key, on_output))
    return _KeyedJobHandle(future, f"job {job_key}", job_key, host)


class _KeyedJobHandle(JobHandle[Any]):
    """A follower of a keyed job: cancelling it cancels the job everywhere."""

    def __init__(self, future: Any, description: str, job_key: str, host: Host | None) -> None:
        super().__init__(future, description, job_key)
        self._host = host

    def cancel(self, wait: bool = False, timeout: float = 10.0) -> bool:
        cancel_job(self.job_key or "", host=self._host, timeout=timeout if wait else 0.0)
        return super().cancel()

    def _placed(self) -> tuple[str | None, Backend | None]:
        """From the key's record: this process may not be the one that placed the job."""
        backend = ClientRuntime.get().backend(self._host)
        row = backend.table.get_job_key(self.job_key or "")
        if row is None or not row.get("instance_id"):
            return None, backend  # never placed
        return str(row["job_id"]), backend


async def wait_job_async(
    job_key: str, *, host: Host | None = None, on_output: OutputCallback | None = None
) -> Any:
    """Wait for the job named ``job_key`` and return its value (or raise its error).

    ``job_key``: its key; ``host`` (default None); ``on_output`` (default None: logged), as for
    ``attach_job``. Cancelling this coroutine stops waiting but leaves the job running.

    Example::

        value = await mr.wait_job_async("nightly-1")
    """
    runtime = ClientRuntime.get()
    backend = runtime.backend(host)
    return await runtime.run_async(follow_keyed_job(runtime, backend, job_key, on_output))


def job_status(job_key: str, *, host: Host | None = None) -> str:
    """How the job named ``job_key`` stands: ``unknown``; ``pending`` (submitted, not yet
    running on an instance); ``running``; or how it ended (``succeeded``, ``exited``,
    ``failed``, ``cancelled``, ``died``, ...). ``host`` (default None: the default host).
    Reads the table only; cheap.

    Example::

        if mr.job_status("nightly-1") == "succeeded": ...
    """
    return str(job_info(job_key, host=host)["status"])


def job_info(job_key: str, *, host: Host | None = None) -> dict[str, Any]:
    """Status (as ``job_status``), ``job_id`` (the prefix of its output lines, and what
    ``meadowrun logs`` takes) and ``instance_id`` of the job named ``job_key``, in ``host``
    (default None: the default host).

    Example::

        mr.job_info("nightly-1")["job_id"]
    """
    backend = ClientRuntime.get().backend(host)
    try:
        row = keyed_job_state(backend, job_key)
    except JobNotFoundError:
        return {"status": "unknown", "job_id": None, "instance_id": None}
    if row["status"] == "ended":
        status = str(kept_final(row)["status"])
    else:
        status = "running" if row["status"] == "running" else "pending"
    job_id = row["job_id"] if row["job_id"] != "pending" else None
    return {"status": status, "job_id": job_id, "instance_id": row["instance_id"]}


def cancel_job(job_key: str, *, host: Host | None = None, timeout: float = 10.0) -> bool:
    """Stop the job named ``job_key`` and free its allocation. True if it was running.

    ``host`` (default None: the default host). ``timeout`` (default 10.0): seconds to wait
    for the job to end.

    Example::

        mr.cancel_job("nightly-1")
    """
    runtime = ClientRuntime.get()
    backend = runtime.backend(host)

    async def cancel() -> bool:
        row = backend.table.get_job_key(job_key)
        if row is None or row["status"] == "ended" or not row["instance_id"]:
            return False
        instance = backend.table.get_instance(str(row["instance_id"]))
        if instance is None or instance.address is None:
            return False
        conn = await runtime.connection(instance, backend)
        conn.send(frames.Cancel(type="cancel", job_id=str(row["job_id"]), reason="cancel_job"))
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            current = backend.table.get_job_key(job_key)
            if current is None or current["status"] == "ended":
                return True
            await asyncio.sleep(0.02)
        return True

    return runtime.run(cancel())


def forget_job(job_key: str, *, host: Host | None = None) -> bool:
    """Delete the stored record (and outcome) of the keyed job ``job_key`` in ``host``
    (default None: the default host); True if there was one.

    Example::

        mr.forget_job("nightly-1")
    """
    return ClientRuntime.get().backend(host).table.forget_job_key(job_key)
