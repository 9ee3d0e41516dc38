"""What a job asks for. Validated on construction so that impossible requests fail before
anything is launched."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Resources:
    """CPU, memory, GPUs and flags a job needs on its instance.

    ``max_eviction_rate`` is the highest spot interruption probability (percent) that is
    acceptable; 0 means on-demand instances only.
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
