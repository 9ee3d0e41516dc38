"""How busy the machine is with processes that are not this benchmark's.

The benchmark machine may be shared; these figures say how much CPU others took, so that a
reader can tell a slow system from a busy machine.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import psutil

# the kinds of CPU time /proc/stat counts as running something
_RUNNING = ("user", "nice", "system", "irq", "softirq")


def machine_cpu_seconds() -> float:
    """CPU seconds the whole machine has run anything since boot (every process and the
    kernel's own work; not time the hypervisor gave to other machines)."""
    return _cpu_seconds(*_RUNNING)


def _busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent busy (steal included) since boot."""
    return _cpu_seconds(*_RUNNING, "steal")


def _cpu_seconds(*kinds: str) -> float:
    t = psutil.cpu_times()
    return sum(getattr(t, kind, 0.0) for kind in kinds)


def _own_cpu_seconds() -> float:
    """CPU seconds of this process, its reaped children and its live descendants."""
    me = psutil.Process()
    t = me.cpu_times()
    total = t.user + t.system + t.children_user + t.children_system
    for child in me.children(recursive=True):
        try:
            ct = child.cpu_times()
        except psutil.Error:
            continue
        total += ct.user + ct.system
    return total


@dataclass
class CpuMeter:
    """Average number of cores used by other processes between ``start`` and ``stop``.

    Approximate: a grandchild reaped by one of our children counts as someone else's.
    """

    _wall: float = field(default=0.0, init=False)
    _busy: float = field(default=0.0, init=False)
    _own: float = field(default=0.0, init=False)

    def start(self) -> None:
        self._wall, self._busy, self._own = (
            time.perf_counter(),
            _busy_cpu_seconds(),
            _own_cpu_seconds(),
        )

    def stop(self) -> float:
        wall = time.perf_counter() - self._wall
        others = (_busy_cpu_seconds() - self._busy) - (_own_cpu_seconds() - self._own)
        return max(0.0, others) / wall if wall > 0 else 0.0


def others_cores(seconds: float = 1.0) -> float:
    """Cores used by other processes over ``seconds``, while this benchmark runs nothing."""
    meter = CpuMeter()
    meter.start()
    time.sleep(seconds)
    return meter.stop()


def background_load(seconds: float = 1.0) -> str:
    cores = others_cores(seconds)
    load = "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    return f"{cores:.2f} of {os.cpu_count()} cores busy over {seconds:g} s; load average {load}"


def wait_until_quiet(max_wait_seconds: float, max_cores: float = 0.3) -> float:
    """Wait (at most ``max_wait_seconds``) until others use under ``max_cores``; return the
    cores they used in the last sample."""
    deadline = time.monotonic() + max_wait_seconds
    cores = others_cores()
    while cores > max_cores and time.monotonic() < deadline:
        cores = others_cores()
    return cores
