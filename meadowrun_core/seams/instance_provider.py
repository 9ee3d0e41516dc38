"""Which instance types exist, what they cost, and how to start and stop one."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from meadowrun_core.exceptions import ResourcesNotAvailableError
from meadowrun_core.resources import Resources


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


def custom_bound(offered: Mapping[str, float], resources: Resources, workers: int) -> int:
    """How many jobs of ``resources`` (at most ``workers``) one instance offering ``offered``
    custom resources holds; 0 if it lacks one they ask for."""
    bound = workers
    for name, amount in (resources.custom or {}).items():
        if amount > 0:
            bound = min(bound, math.floor(offered.get(name, 0.0) / amount + 1e-9))
    return bound


def check_custom_offered(resources: Resources, offered: Mapping[str, float], host: str) -> None:
    """Fail before anything launches when a job asks for a custom resource that the host's
    instances do not offer, or for more of it than one instance offers (a job runs on one
    instance). ``host`` names the host class in the message."""
    for name, amount in sorted((resources.custom or {}).items()):
        have = offered.get(name, 0.0)
        if amount <= have + 1e-9:
            continue
        offers = (
            ", ".join(f"{k!r}: {v:g}" for k, v in sorted(offered.items())) or "no custom resources"
        )
        if name not in offered:
            raise ResourcesNotAvailableError(
                f"Resources(custom=...) asks for the custom resource {name!r}, which instances of "
                f"{host} do not offer (each offers {offers}); offer it with "
                f"{host}(custom_resources={{{name!r}: {amount:g}}}), or drop it from "
                "Resources.custom"
            )
        raise ResourcesNotAvailableError(
            f"Resources(custom=...) asks for {amount:g} of the custom resource {name!r}, but one "
            f"instance of {host} offers {have:g} (each offers {offers}) and a job runs on one "
            f"instance; ask for at most {have:g}, or offer more with "
            f"{host}(custom_resources={{{name!r}: {amount:g}}})"
        )


class Provider(Protocol):
    """Instance types, choosing among them, and starting and stopping instances."""

    def check_satisfiable(self, resources: Resources) -> None:
        """Raise ``ResourcesNotAvailableError`` naming the largest type if nothing could fit."""
        ...

    def choices(
        self, resources: Resources, workers: int, room_cpu: float, room_memory_gb: float
    ) -> list[tuple[InstanceType, int]]:
        """Types that fit within the room, best first, with how many workers each holds."""
        ...

    async def launch(self, instance_id: str, instance_type: InstanceType) -> None:
        """Start the instance and its agent, which then registers in the allocation table.
        Raises ``CapacityError`` when the cloud cannot start this type now."""
        ...

    def terminate(self, instance_id: str, agent_pid: int | None = None) -> None: ...

    def failure_hint(self, instance_id: str) -> str:
        """Where to look when an instance did not start (its log's tail, if reachable)."""
        ...

    def on_demand_price(self, instance_type: str) -> float | None:
        """The on-demand price per hour of a type this provider launches, for comparing what
        jobs cost with on-demand; None where not known (or no spot: the price paid is it)."""
        ...
