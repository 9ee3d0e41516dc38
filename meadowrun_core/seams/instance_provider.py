"""Which instance types exist, what they cost, and how to start and stop one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class InstanceType:
    name: str
    logical_cpu: float
    memory_gb: float
    price_per_hour: float
    interruption_probability: float = 0.0
    is_spot: bool = False


class InstanceProvider(Protocol):
    def offers(self) -> list[InstanceType]: ...

    def launch(self, instance_id: str, instance_type: InstanceType) -> None:
        """Start the instance; its agent registers its address in the allocation table."""
        ...

    def terminate(self, instance_id: str) -> None: ...
