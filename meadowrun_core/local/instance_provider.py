"""Local instance types and launching agent processes on this machine."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path

from meadowrun_core.config import private_dir
from meadowrun_core.exceptions import ResourcesNotAvailableError
from meadowrun_core.resources import Resources
from meadowrun_core.seams.instance_provider import (
    InstanceType,
    check_custom_offered,
    custom_bound,
)

# What each instance of a host offers beyond CPU and memory: sorted (name, amount) pairs.
Custom = tuple[tuple[str, float], ...]

# Modelled on general-purpose cloud prices (USD/hour per vCPU and per GB), so that cost
# reports from the local cloud have the same shape as from EC2.
_PRICE_PER_CPU = 0.024
_PRICE_PER_GB = 0.003


_DETACH = """
import os, subprocess, sys
proc = subprocess.Popen(
    sys.argv[2:], stdin=subprocess.DEVNULL, stdout=1, stderr=2, start_new_session=True
)
os.write(int(sys.argv[1]), str(proc.pid).encode())
"""


def _spawn_detached(argv: list[str], log_fd: int, env: dict[str, str], cwd: Path) -> int:
    """Start ``argv`` through a launcher that exits at once, so the process is re-parented
    (to init or the nearest subreaper) and is no descendant of this one; return its pid."""
    read_end, write_end = os.pipe()
    try:
        launcher = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _DETACH, str(write_end), *argv],
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=log_fd,
            env=env,
            cwd=cwd,
            pass_fds=(write_end,),
            close_fds=True,
        )
        os.close(write_end)
        write_end = -1
        with os.fdopen(read_end, "rb") as pipe:
            read_end = -1
            pid_text = pipe.read()
        launcher.wait()
    finally:
        for end in (read_end, write_end):
            if end >= 0:
                os.close(end)
    if not pid_text:
        raise OSError(f"could not start {argv[2]} (launcher exit code {launcher.returncode})")
    return int(pid_text)


def _sizes(limit: float) -> list[float]:
    sizes: list[float] = []
    size = 1.0
    while size < limit:
        sizes.append(size)
        size *= 2
    sizes.append(limit)
    return sizes


def _local_type(cpu: float, mem: float, custom: Custom = ()) -> InstanceType:
    """A local instance size, priced by the local cloud's model (per CPU and per GB), offering
    its host's custom resources (which cost nothing in the model)."""
    return InstanceType(
        name=f"local-{cpu:g}cpu-{mem:g}gb",
        logical_cpu=cpu,
        memory_gb=mem,
        price_per_hour=round(cpu * _PRICE_PER_CPU + mem * _PRICE_PER_GB, 5),
        custom=custom,
    )


def local_instance_types(
    max_cpu: float, max_memory_gb: float, custom: Custom = ()
) -> list[InstanceType]:
    """A grid of sizes up to the local cloud's limit; the largest is the whole limit. Every
    size offers the host's ``custom`` resources."""
    return list(_instance_grid(max_cpu, max_memory_gb, custom))


@functools.lru_cache(maxsize=32)
def _instance_grid(
    max_cpu: float, max_memory_gb: float, custom: Custom
) -> tuple[InstanceType, ...]:
    # built once per limit, not for every placement that reads it
    return tuple(
        _local_type(cpu, mem, custom) for cpu in _sizes(max_cpu) for mem in _sizes(max_memory_gb)
    )


def fits(instance_type: InstanceType, resources: Resources) -> bool:
    """Local instances have CPUs, memory and their host's custom resources: no GPUs or
    flags."""
    return (
        instance_type.logical_cpu >= resources.logical_cpu
        and instance_type.memory_gb >= resources.memory_gb
        and resources.gpus == 0
        and not resources.flags
        and custom_bound(dict(instance_type.custom), resources, 1) >= 1
    )


def choose_instance_type(
    offers: list[InstanceType],
    resources: Resources,
    workers: int,
    room_cpu: float,
    room_mem: float,
    custom: Custom = (),
) -> tuple[InstanceType, int] | None:
    """The type with the lowest price per placed worker that fits in the remaining room;
    ties go to the type that places more workers (fewer instances to manage). ``custom``:
    what every instance offers besides (the host's custom resources)."""
    best: tuple[float, int, InstanceType] | None = None
    for offer in [*offers, *_exact_size(resources, workers, room_cpu, room_mem, custom)]:
        if offer.logical_cpu > room_cpu + 1e-9 or offer.memory_gb > room_mem + 1e-9:
            continue
        per_cpu = (
            math.floor(offer.logical_cpu / resources.logical_cpu + 1e-9)
            if resources.logical_cpu
            else workers
        )
        per_mem = (
            math.floor(offer.memory_gb / resources.memory_gb + 1e-9)
            if resources.memory_gb
            else workers
        )
        placed = min(
            workers, per_cpu, per_mem, custom_bound(dict(offer.custom), resources, workers)
        )
        if placed < 1 or not fits(offer, resources):
            continue
        key = (offer.price_per_hour / placed, -placed, offer)
        if best is None or key[:2] < best[:2]:
            best = key
    return None if best is None else (best[2], -best[1])


def _exact_size(
    resources: Resources, workers: int, room_cpu: float, room_mem: float, custom: Custom = ()
) -> list[InstanceType]:
    """An instance sized exactly to as many of the jobs as the room holds. Local instances are
    processes on this machine, so nothing forces the grid's sizes on them; without this, small
    jobs (a Dask scheduler beside its workers) would each take a whole grid size and leave
    room that nothing can use. Priced like the grid, it wins whenever the grid would waste."""
    counts = [custom_bound(dict(custom), resources, workers)]
    if resources.logical_cpu:
        counts.append(math.floor(room_cpu / resources.logical_cpu + 1e-9))
    if resources.memory_gb:
        counts.append(math.floor(room_mem / resources.memory_gb + 1e-9))
    placed = min(counts)
    if placed < 1:
        return []
    cpu, mem = resources.logical_cpu * placed, resources.memory_gb * placed
    return [_local_type(cpu, mem, custom)]


class LocalInstanceProvider:
    """Each instance is a detached agent process that outlives the client that started it."""

    def __init__(
        self,
        home: Path,
        max_cpu: float,
        max_memory_gb: float,
        idle_timeout: float,
        custom: Mapping[str, float] | None = None,
    ) -> None:
        self._home = home
        self._max_cpu = max_cpu
        self._max_memory_gb = max_memory_gb
        self._idle_timeout = idle_timeout
        self._custom: Custom = tuple(sorted((custom or {}).items()))
        self._launched: dict[str, subprocess.Popen[bytes]] = {}

    def offers(self) -> list[InstanceType]:
        return local_instance_types(self._max_cpu, self._max_memory_gb, self._custom)

    def check_satisfiable(self, resources: Resources) -> None:
        """Fail at once, naming the largest instance type, if nothing could ever fit (or the
        host's instances do not offer a custom resource the job asks for)."""
        check_custom_offered(resources, dict(self._custom), "AllocLocalInstance")
        offers = self.offers()
        if any(fits(t, resources) for t in offers):
            return
        largest = max(offers, key=lambda t: (t.logical_cpu, t.memory_gb))
        extra = "; the local cloud has no GPUs" if resources.gpus else ""
        raise ResourcesNotAvailableError(
            f"no instance type can ever fit Resources({resources.describe()}, gpus="
            f"{resources.gpus:g}); the largest local instance type is {largest.name} "
            f"({largest.logical_cpu:g} CPU / {largest.memory_gb:g} GB){extra}. Ask for less, "
            "or raise the local cloud's limit with MEADOWRUN_LOCAL_MAX_CPU / "
            "MEADOWRUN_LOCAL_MAX_MEMORY_GB (or AllocLocalInstance(max_cpu=..., "
            "max_memory_gb=...))."
        )

    def choices(
        self, resources: Resources, workers: int, room_cpu: float, room_memory_gb: float
    ) -> list[tuple[InstanceType, int]]:
        choice = choose_instance_type(
            self.offers(), resources, workers, room_cpu, room_memory_gb, self._custom
        )
        return [] if choice is None else [choice]

    def on_demand_price(self, instance_type: str) -> float | None:
        """None: the local cloud has no spot market, so the price paid is the on-demand one."""
        return None

    def failure_hint(self, instance_id: str) -> str:
        log_path = self.log_path(instance_id)
        tail = log_path.read_text()[-2000:] if log_path.exists() else "(no log)"
        return f"its log ({log_path}) ends with:\n{tail}"

    def log_path(self, instance_id: str) -> Path:
        return self._home / "instances" / instance_id / "agent.log"

    async def launch(self, instance_id: str, instance_type: InstanceType) -> None:
        log_path = self.log_path(instance_id)
        private_dir(log_path.parent)
        env = {**os.environ, "MEADOWRUN_HOME": str(self._home)}
        argv = [
            sys.executable,
            "-m",
            "meadowrun_core.agent.server",
            "--instance-id",
            instance_id,
            "--idle-timeout",
            str(self._idle_timeout),
        ]
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            if os.environ.get("MEADOWRUN_INSTANCE_ID"):
                # launched from inside a job (nested submission): an instance must not be a
                # descendant of the job, whose memory it would count against the job's limit
                # and which would take it down when stopped
                pid = await asyncio.to_thread(_spawn_detached, argv, fd, env, self._home)
            else:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=fd,
                    stderr=fd,
                    env=env,
                    cwd=self._home,
                    start_new_session=True,
                    close_fds=True,
                )
                pid = proc.pid
                self._launched[instance_id] = proc
                # reap it when it exits so that it does not linger as a zombie of this client
                threading.Thread(target=proc.wait, daemon=True, name=f"reap-{instance_id}").start()
        finally:
            os.close(fd)
        # found by `meadowrun clean` even if the table loses it (see admin.home_agents)
        pid_fd = os.open(
            log_path.parent / "agent.pid", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600
        )
        with os.fdopen(pid_fd, "w") as f:
            f.write(str(pid))

    def exited_before_registering(self, instance_id: str) -> int | None:
        """The exit code of an agent this process launched that has already exited."""
        proc = self._launched.get(instance_id)
        return None if proc is None else proc.poll()

    def registered(self, instance_id: str) -> None:
        self._launched.pop(instance_id, None)

    def terminate(self, instance_id: str, agent_pid: int | None = None) -> None:
        if agent_pid:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(agent_pid, signal.SIGKILL)
