"""Local instance types and launching agent processes on this machine."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from meadowrun_core.seams.instance_provider import InstanceType

# Modelled on general-purpose cloud prices (USD/hour per vCPU and per GB), so that cost
# reports from the local cloud have the same shape as from EC2.
_PRICE_PER_CPU = 0.024
_PRICE_PER_GB = 0.003


def _sizes(limit: float) -> list[float]:
    sizes: list[float] = []
    size = 1.0
    while size < limit:
        sizes.append(size)
        size *= 2
    sizes.append(limit)
    return sizes


def local_instance_types(max_cpu: float, max_memory_gb: float) -> list[InstanceType]:
    """A grid of sizes up to the local cloud's limit; the largest is the whole limit."""
    return [
        InstanceType(
            name=f"local-{cpu:g}cpu-{mem:g}gb",
            logical_cpu=cpu,
            memory_gb=mem,
            price_per_hour=round(cpu * _PRICE_PER_CPU + mem * _PRICE_PER_GB, 5),
        )
        for cpu in _sizes(max_cpu)
        for mem in _sizes(max_memory_gb)
    ]


class LocalInstanceProvider:
    """Each instance is a detached agent process that outlives the client that started it."""

    def __init__(
        self, home: Path, max_cpu: float, max_memory_gb: float, idle_timeout: float
    ) -> None:
        self._home = home
        self._max_cpu = max_cpu
        self._max_memory_gb = max_memory_gb
        self._idle_timeout = idle_timeout

    def offers(self) -> list[InstanceType]:
        return local_instance_types(self._max_cpu, self._max_memory_gb)

    def log_path(self, instance_id: str) -> Path:
        return self._home / "instances" / instance_id / "agent.log"

    def launch(self, instance_id: str, instance_type: InstanceType) -> None:
        log_path = self.log_path(instance_id)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "MEADOWRUN_HOME": str(self._home)}
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "meadowrun_core.agent.server",
                    "--instance-id",
                    instance_id,
                    "--idle-timeout",
                    str(self._idle_timeout),
                ],
                stdin=subprocess.DEVNULL,
                stdout=fd,
                stderr=fd,
                env=env,
                cwd=self._home,
                start_new_session=True,
                close_fds=True,
            )
        finally:
            os.close(fd)
        # reap it when it exits so that it does not linger as a zombie of this client
        threading.Thread(target=proc.wait, daemon=True, name=f"reap-{instance_id}").start()

    def terminate(self, instance_id: str, agent_pid: int | None = None) -> None:
        if agent_pid:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(agent_pid, signal.SIGKILL)
