"""Inspecting and cleaning the local cloud, shared by the CLI and the tests."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass

import psutil

from meadowrun_core.config import Settings, meadowrun_home
from meadowrun_core.local.allocation_table import SqliteAllocationTable
from meadowrun_core.local.task_queue import SqliteTaskQueue


@dataclass(frozen=True)
class CleanReport:
    instances_terminated: int
    queues_deleted: int


def _table() -> SqliteAllocationTable:
    return SqliteAllocationTable(meadowrun_home() / "state.db")


def agent_is_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and "meadowrun_core.agent" in " ".join(
            proc.cmdline()
        )
    except psutil.Error:
        return False


def clean(wait_seconds: float = 5.0) -> CleanReport:
    """Terminate every local instance (and its workers) and delete every task queue."""
    table = _table()
    instances = table.list_instances()
    for record in instances:
        if agent_is_alive(record.agent_pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                assert record.agent_pid is not None
                os.kill(record.agent_pid, signal.SIGTERM)
        table.remove_instance(record.instance_id, "terminated by clean")
    deadline = time.monotonic() + wait_seconds
    for record in instances:
        while agent_is_alive(record.agent_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if agent_is_alive(record.agent_pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                assert record.agent_pid is not None
                os.kill(record.agent_pid, signal.SIGKILL)
    queues = SqliteTaskQueue(meadowrun_home() / "queues.db")
    names = queues.list_queues()
    for name, _ in names:
        queues.delete_queue(name)
    return CleanReport(len(instances), len(names))


def interrupt(instance_id: str, delay_seconds: float) -> None:
    """Simulate a spot interruption: a notice now, the instance killed after the delay."""
    _table().request_interruption(instance_id, delay_seconds)


def settings() -> Settings:
    return Settings.from_env()
