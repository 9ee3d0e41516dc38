"""Which instance types exist, what they cost, and how to start and stop one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class InstanceType:
    """A type as launched: the allocation table records all of it, so reusing a running
    instance honours every resource a job asks for (not just CPU and memory).

    ``gpu_memory_gb`` is per GPU; ``arch`` is "" where instances are the client's own
    machine (the local cloud); ``flags`` are lower-case (``avx512``, ``nvidia``, ...)."""

    name: str
    logical_cpu: float
    memory_gb: float
    price_per_hour: float
    interruption_probability: float = 0.0
    is_spot: bool = False
    gpus: float = 0.0
    gpu_memory_gb: float = 0.0
    flags: tuple[str, ...] = ()
    arch: str = ""
    custom: tuple[tuple[str, float], ...] = ()


class InstanceProvider(Protocol):
    def offers(self) -> list[InstanceType]: ...

    def launch(self, instance_id: str, instance_type: InstanceType) -> None:
        """Start the instance; its agent registers its address in the allocation table."""
        ...

    def terminate(self, instance_id: str) -> None: ...
