"""``MeadowrunJobTrigger``: follows a detached meadowrun job from the triggerer.

It relays the job's output to the task log as it is written and fires one event when the job
ends, so a deferred ``MeadowrunOperator`` holds no worker slot while its job runs.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

import meadowrun_core as mr
from meadowrun_airflow.jobs import JOB_LOGGER, keyed_job_id, outcome_event


class _OutputRelay(logging.Handler):
    """Hands one job's output lines to the trigger's coroutine.

    meadowrun logs output from its client thread, outside the trigger's context, and the
    triggerer routes a record to a task's log only from within that trigger's context.
    """

    def __init__(self, job_id: str, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(logging.INFO)
        self.job_id = job_id
        self.loop = loop
        self.lines: asyncio.Queue[tuple[int, str]] = asyncio.Queue()

    def emit(self, record: logging.LogRecord) -> None:
        if isinstance(record.args, tuple) and record.args and record.args[0] == self.job_id:
            item = (record.levelno, str(record.args[-1]))
            self.loop.call_soon_threadsafe(self.lines.put_nowait, item)


class MeadowrunJobTrigger(BaseTrigger):
    """Fires ``{"job_key": ..., "status": ...}`` when the job named ``job_key`` ends.

    ``meadowrun_home`` travels with the trigger because the triggerer may run with another
    environment than the worker that submitted the job.
    """

    def __init__(self, job_key: str, meadowrun_home: str | None = None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.job_key = job_key
        self.meadowrun_home = meadowrun_home
        self._last_line: str | None = None

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {"job_key": self.job_key, "meadowrun_home": self.meadowrun_home},
        )

    def _use_home(self) -> None:
        if self.meadowrun_home and os.environ.get("MEADOWRUN_HOME") != self.meadowrun_home:
            os.environ["MEADOWRUN_HOME"] = self.meadowrun_home

    async def run(self) -> AsyncIterator[TriggerEvent]:
        self._use_home()
        job_id = await asyncio.to_thread(keyed_job_id, self.job_key)
        relay = _OutputRelay(job_id or "", asyncio.get_running_loop())
        job_logger = logging.getLogger(JOB_LOGGER)
        job_logger.addHandler(relay)
        waiter = asyncio.ensure_future(mr.wait_job_async(self.job_key))
        event: dict[str, Any]
        try:
            while True:
                getter = asyncio.ensure_future(relay.lines.get())
                done, _ = await asyncio.wait({waiter, getter},
                                             return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    self._relay(job_id, *getter.result())
                    continue
                getter.cancel()
                break
            while not relay.lines.empty():
                self._relay(job_id, *relay.lines.get_nowait())
            event = outcome_event(self.job_key, waiter.result, self._last_line)
        finally:
            job_logger.removeHandler(relay)
            if not waiter.done():
                waiter.cancel()  # stops following only; the job keeps running
        yield TriggerEvent(event)  # type: ignore[no-untyped-call]

    def _relay(self, job_id: str | None, level: int, text: str) -> None:
        self.log.log(level, "[%s] %s", job_id, text)
        if level == logging.INFO:
            self._last_line = text

    async def on_kill(self) -> None:
        """The deferred task was killed by a user: cancel the job and free its allocation."""
        self._use_home()
        self.log.info("Cancelling meadowrun job %s", self.job_key)
        await asyncio.to_thread(mr.cancel_job, self.job_key)
