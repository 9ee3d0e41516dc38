"""``MeadowrunJobTrigger``: follows a detached meadowrun job from the triggerer.

It relays the job's output to the task log (replayed from the job's start, then as it is
written) and fires one event when the job ends, so a deferred ``MeadowrunOperator`` holds no
worker slot while its job runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

import meadowrun_core as mr
from meadowrun_airflow.jobs import OutputLines, host_for_home, host_from_json, outcome_event


class MeadowrunJobTrigger(BaseTrigger):
    """Fires ``{"job_key": ..., "status": ...}`` when the job named ``job_key`` ends.

    The job's cloud travels with the trigger, because the triggerer may run with another
    environment than the worker that submitted the job, and may follow jobs of several clouds:
    ``host`` (a cloud host as JSON, e.g. an ``AllocEC2Instance`` with its region) or, for the
    local cloud, ``meadowrun_home``.
    """

    def __init__(
        self,
        job_key: str,
        meadowrun_home: str | None = None,
        host: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.job_key = job_key
        self.meadowrun_home = meadowrun_home
        self.host = host

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {"job_key": self.job_key, "meadowrun_home": self.meadowrun_home, "host": self.host},
        )

    @property
    def _host(self) -> mr.Host | None:
        return host_from_json(self.host) or host_for_home(self.meadowrun_home)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        # meadowrun calls on_output from its client thread, outside this trigger's context, and
        # the triggerer routes a record to the task's log only from within that context: the
        # chunks are handed over to this coroutine, which logs them.
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()

        def on_output(stream: str, data: bytes) -> None:
            loop.call_soon_threadsafe(chunks.put_nowait, (stream, data))

        job_id: str | None = None

        def log_line(level: int, text: str) -> None:
            self.log.log(level, "[%s] %s", job_id, text)

        lines = OutputLines(log_line)
        waiter = asyncio.ensure_future(
            mr.wait_job_async(self.job_key, host=self._host, on_output=on_output)
        )
        try:
            while True:
                getter = asyncio.ensure_future(chunks.get())
                done, _ = await asyncio.wait({waiter, getter}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    break
                if job_id is None:  # output comes once the job is on an instance
                    job_id = await self._job_id()
                lines.feed(*getter.result())
            # output handed over before the end is queued before the waiter's result
            if job_id is None and not chunks.empty():
                job_id = await self._job_id()
            while not chunks.empty():
                lines.feed(*chunks.get_nowait())
            lines.flush()
            event = await asyncio.to_thread(
                outcome_event, self.job_key, waiter.result, lines, self._host
            )
        finally:
            if not waiter.done():
                waiter.cancel()  # stops following only; the job keeps running
        yield TriggerEvent(event)  # type: ignore[no-untyped-call]

    async def _job_id(self) -> str | None:
        info = await asyncio.to_thread(mr.job_info, self.job_key, host=self._host)
        return None if info["job_id"] is None else str(info["job_id"])

    async def on_kill(self) -> None:
        """The deferred task was killed by a user: cancel the job and free its allocation."""
        self.log.info("Cancelling meadowrun job %s", self.job_key)
        await asyncio.to_thread(mr.cancel_job, self.job_key, host=self._host)
