"""What a job asks for. Validated on construction so that impossible requests fail before
anything is launched."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Resources:
    """What a job (or each map task) needs on its instance; checked on construction, so an
    impossible request fails before anything is launched.

    ``logical_cpu`` (default 1): CPUs, fractions allowed. ``memory_gb`` (default 2): memory; a
    job that uses more is stopped with ``OutOfMemoryError``. ``max_eviction_rate`` (default
    80): the highest spot interruption probability (percent) acceptable; 0 means on-demand
    instances only. ``gpus`` (default 0): GPUs. ``gpu_memory`` (default None: any): GB of memory
    per GPU. ``flags`` (default ()): instance features such as ``"nvidia"``, ``"avx512"``,
    ``"arm64"``. ``custom`` (default None): amounts of custom resources (e.g.
    ``{"licenses": 1}``), placed only on instances that offer them.

    Example::

        mr.run_function(f, resources=mr.Resources(logical_cpu=4, memory_gb=16))
        mr.Resources(gpus=1, flags=("nvidia",), max_eviction_rate=0)
    """

    logical_cpu: float = 1
    memory_gb: float = 2
    max_eviction_rate: float = 80
    gpus: float = 0
    gpu_memory: float | None = None
    flags: tuple[str, ...] = ()
    custom: Mapping[str, float] | None = field(default=None)

    def __post_init__(self) -> None:
        for name in ("logical_cpu", "memory_gb", "gpus"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool):
                raise TypeError(f"Resources.{name} must be a number, got {value!r}")
            if math.isnan(value) or value < 0:
                raise ValueError(f"Resources.{name} must be zero or positive, got {value!r}")
        if self.logical_cpu == 0 and self.memory_gb == 0:
            raise ValueError("Resources needs some CPU or memory; both are 0")
        if not 0 <= self.max_eviction_rate <= 100:
            raise ValueError(
                f"Resources.max_eviction_rate is a percentage from 0 (on-demand only) to 100, "
                f"got {self.max_eviction_rate!r}"
            )
        if self.gpu_memory is not None and self.gpu_memory < 0:
            raise ValueError(f"Resources.gpu_memory must be positive, got {self.gpu_memory!r}")
        if isinstance(self.flags, str):
            object.__setattr__(self, "flags", (self.flags,))
        else:
            object.__setattr__(self, "flags", tuple(self.flags))
        for key, amount in (self.custom or {}).items():
            if amount < 0:
                raise ValueError(f"Resources.custom[{key!r}] must be positive, got {amount!r}")

    def describe(self) -> str:
        return f"{self.logical_cpu:g} CPU / {self.memory_gb:g} GB"
