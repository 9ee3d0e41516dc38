"""Inspecting and cleaning the local cloud, shared by the CLI and the tests."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from meadowrun_core.config import Settings, meadowrun_home
from meadowrun_core.local.allocation_table import SqliteAllocationTable
from meadowrun_core.local.collect import CLEAN_OBJECT_GRACE_SECONDS, collect
from meadowrun_core.local.task_queue import SqliteTaskQueue

_AGENT_MODULE = "meadowrun_core.agent.server"


@dataclass(frozen=True)
class CleanReport:
    instances_terminated: int
    queues_deleted: int
    instance_dirs_removed: int = 0
    objects_removed: int = 0


def _table() -> SqliteAllocationTable:
    return SqliteAllocationTable(meadowrun_home() / "state.db")


def agent_is_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and _AGENT_MODULE in " ".join(proc.cmdline())
    except psutil.Error:
        return False


def _instance_id(cmdline: list[str]) -> str | None:
    if "--instance-id" in cmdline[:-1]:
        return cmdline[cmdline.index("--instance-id") + 1]
    return None


def home_agents(home: Path | None = None) -> dict[int, str]:
    """Live agent processes of this home, ``pid -> instance id``, found without the table:
    through the ``agent.pid`` files written at launch, and by scanning this user's processes
    for agents whose MEADOWRUN_HOME (or working directory) is this home."""
    home = (home or meadowrun_home()).resolve()
    found: dict[int, str] = {}
    for pid_file in (home / "instances").glob("*/agent.pid"):
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_file.read_text())
            if agent_is_alive(pid) and _instance_id(psutil.Process(pid).cmdline()) == (
                pid_file.parent.name
            ):
                found[pid] = pid_file.parent.name
    for proc in psutil.process_iter(["pid", "cmdline", "uids"]):
        try:
            cmdline = proc.info["cmdline"] or []
            if proc.pid in found or _AGENT_MODULE not in cmdline:
                continue
            if proc.info["uids"] is None or proc.info["uids"].real != os.getuid():
                continue
            agent_home = proc.environ().get("MEADOWRUN_HOME") or proc.cwd()
            instance_id = _instance_id(cmdline)
            if instance_id and Path(agent_home).resolve() == home and agent_is_alive(proc.pid):
                found[proc.pid] = instance_id
        except (psutil.Error, OSError):
            continue
    return found


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def clean(wait_seconds: float = 5.0) -> CleanReport:
    """Terminate every local instance (and its workers), also those the table lost, delete
    every task queue, then collect the folders and objects nothing uses any more."""
    home = meadowrun_home()
    table = _table()
    # both state files opened (checked, and moved aside if damaged) before any agent stops:
    # an agent closing its connection checkpoints its write-ahead log into the file, which
    # would overwrite a damaged file with an older image instead of setting it aside
    queues = SqliteTaskQueue(home / "queues.db")
    instances = table.list_instances()
    pids: dict[int, str] = {
        r.agent_pid: r.instance_id for r in instances if r.agent_pid and agent_is_alive(r.agent_pid)
    }
    pids.update(home_agents(home))
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    for record in instances:
        table.remove_instance(record.instance_id, "terminated by clean")
    deadline = time.monotonic() + wait_seconds
    for pid in pids:
        while agent_is_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if agent_is_alive(pid):
            _signal(pid, signal.SIGKILL)
    names = queues.list_queues()
    for name, _ in names:
        queues.delete_queue(name)
    collected = collect(
        home,
        table,
        set(home_agents(home).values()),
        instance_max_age=0,
        object_max_age=CLEAN_OBJECT_GRACE_SECONDS,
    )
    terminated = {r.instance_id for r in instances} | set(pids.values())
    return CleanReport(len(terminated), len(names), collected.instance_dirs, collected.objects)


def interrupt(instance_id: str, delay_seconds: float) -> None:
    """Simulate a spot interruption: a notice now, the instance killed after the delay."""
    _table().request_interruption(instance_id, delay_seconds)


def settings() -> Settings:
    return Settings.from_env()
