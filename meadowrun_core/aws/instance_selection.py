"""Choosing EC2 instance types for some workers, and launching with fallback.

For each offered, priced type ``choose_instance_types`` computes how many of the workers
one instance holds (CPU, memory, GPUs and GPU memory each bound it; at most the number of
workers wanted) and what each placed worker costs per hour, in each market the type may
use: spot when ``max_eviction_rate > 0``, the type has a spot price and its Advisor bucket
(upper end, percent) is at most ``max_eviction_rate``; on-demand always. Choices come back
cheapest per worker first; ties go to the instance holding more workers, then the lower
interruption bucket. A spot choice's type also appears later as on-demand, so fallback can
get to it. A GPU request without a vendor flag means NVIDIA.

``aws.fleet`` reorders these choices by the cheapest fleet for all the workers.

``client.allocation`` walks that whole list (``Ec2Provider.choices``) and moves on when EC2
answers with a capacity or quota error (``FALLBACK_ERROR_CODES``; a spot quota error skips
the remaining spot choices); any other error is raised at once. Requests nothing can
satisfy fail in ``choose_instance_types``, before anything is launched.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

from meadowrun_core.aws.instance_types import Ec2Offer, describe_offer
from meadowrun_core.exceptions import BadInputError, ResourcesNotAvailableError
from meadowrun_core.resources import Resources
from meadowrun_core.seams.instance_provider import custom_bound

log = logging.getLogger(__name__)

Market = Literal["spot", "on-demand"]
T = TypeVar("T")

# EC2 error codes after which another type (or market) may still launch.
FALLBACK_ERROR_CODES = frozenset(
    {
        "InsufficientInstanceCapacity",
        "InsufficientHostCapacity",
        "InsufficientCapacity",
        "InstanceLimitExceeded",
        "VcpuLimitExceeded",
        "MaxSpotInstanceCountExceeded",
        "SpotMaxPriceTooLow",
        "Unsupported",
    }
)
# Errors that hold for every type of the market: skip the rest of that market.
MARKET_WIDE_ERROR_CODES = frozenset({"MaxSpotInstanceCountExceeded"})

_FLAG_ALIASES = {
    "aarch64": "arm64",
    "arm": "arm64",
    "x86": "x86_64",
    "amd64": "x86_64",
    "amd_cpu": "amd",
    "intel_cpu": "intel",
    "cuda": "nvidia",
    "avx-512": "avx512",
}
KNOWN_FLAGS = frozenset(
    {"x86_64", "arm64", "intel", "amd", "graviton", "nvidia", "amd_gpu", "avx", "avx2", "avx512"}
)
# A GPU request names its vendor with one of these; without one it means NVIDIA (CUDA):
# AMD (g4ad) and Habana (dl1) accelerators do not run CUDA code.
GPU_VENDOR_FLAGS = frozenset({"nvidia", "amd_gpu"})
_EPSILON = 1e-9


@dataclass(frozen=True)
class Choice:
    """Launching ``offer`` in ``market`` to hold ``workers_per_instance`` workers."""

    offer: Ec2Offer
    market: Market
    price_per_hour: float
    workers_per_instance: int

    @property
    def price_per_worker(self) -> float:
        return self.price_per_hour / self.workers_per_instance

    def describe(self) -> str:
        return (
            f"{self.offer.name} {self.market} (${self.price_per_hour:.4f}/h, "
            f"{self.workers_per_instance} worker(s))"
        )


def normalize_flags(flags: Iterable[str]) -> frozenset[str]:
    """Lower-cased flags with aliases resolved; unknown flags are a ``BadInputError``."""
    result = set()
    for flag in flags:
        name = _FLAG_ALIASES.get(flag.strip().lower(), flag.strip().lower())
        if name not in KNOWN_FLAGS:
            raise BadInputError(
                f"unknown Resources flag {flag!r} for EC2; known flags: "
                f"{', '.join(sorted(KNOWN_FLAGS))}"
            )
        result.add(name)
    return frozenset(result)


def _wanted_arch(flags: frozenset[str]) -> str:
    """arm64 only when asked for: deployments built on x86 clients need x86 workers."""
    if {"arm64", "x86_64"} <= flags:
        raise BadInputError("Resources flags ask for both arm64 and x86_64")
    return "arm64" if "arm64" in flags or "graviton" in flags else "x86_64"


def _gpus_per_worker(resources: Resources) -> float:
    return resources.gpus or (1.0 if resources.gpu_memory else 0.0)


def _matches(offer: Ec2Offer, flags: frozenset[str]) -> bool:
    return offer.arch == _wanted_arch(flags) and flags <= offer.flags


def workers_per_instance(
    offer: Ec2Offer,
    resources: Resources,
    workers: int = 1,
    custom: Mapping[str, float] | None = None,
) -> int:
    """How many workers (at most ``workers``) one instance of ``offer`` holds; 0 if none.

    ``gpu_memory`` is what one worker needs over its GPU share (``gpus``, 1 if unset):
    a 16 GB T4 gives 16 GB to ``gpus=1``, 8 GB to ``gpus=0.5``. ``custom`` (default None:
    none) is what every instance of the host offers besides (``custom_resources``)."""
    bounds = [custom_bound(custom or {}, resources, workers)]
    for have, need in (
        (offer.logical_cpu, resources.logical_cpu),
        (offer.memory_gb, resources.memory_gb),
    ):
        if need > 0:
            bounds.append(math.floor(have / need + _EPSILON))
    gpus = _gpus_per_worker(resources)
    if gpus > 0:
        bounds.append(math.floor(offer.gpus / gpus + _EPSILON))
        if resources.gpu_memory and offer.gpu_memory_per_gpu * gpus < resources.gpu_memory:
            return 0
    return max(0, min(bounds))


def spot_allowed(offer: Ec2Offer, max_eviction_rate: float) -> bool:
    """Spot when allowed at all, priced, and the type's whole Advisor bucket is within the
    limit (types the Advisor does not list count as 100%)."""
    if max_eviction_rate <= 0 or offer.spot_price is None or "spot" not in offer.usage_classes:
        return False
    bucket = 100 if offer.interruption_bucket is None else offer.interruption_bucket
    return bucket <= max_eviction_rate


def _available(offer: Ec2Offer) -> bool:
    return offer.in_region and offer.on_demand_price is not None


def choose_instance_types(
    offers: Iterable[Ec2Offer],
    resources: Resources,
    workers: int = 1,
    region: str = "",
    custom: Mapping[str, float] | None = None,
) -> list[Choice]:
    """Every (type, market) that fits, cheapest per placed worker first. ``custom`` (default
    None: none): the custom resources every instance offers (the host's ``custom_resources``).

    Raises ``ResourcesNotAvailableError`` naming the largest type when nothing fits, and
    ``BadInputError`` for unknown flags."""
    if workers < 1:
        raise BadInputError(f"workers must be at least 1, got {workers}")
    flags = normalize_flags(resources.flags)
    if _gpus_per_worker(resources) and not flags & GPU_VENDOR_FLAGS:
        flags |= {"nvidia"}
    offers = [o for o in offers if _available(o)]
    choices = []
    for offer in offers:
        if not _matches(offer, flags):
            continue
        placed = workers_per_instance(offer, resources, workers, custom)
        if placed < 1:
            continue
        if spot_allowed(offer, resources.max_eviction_rate):
            assert offer.spot_price is not None
            choices.append(Choice(offer, "spot", offer.spot_price, placed))
        if "on-demand" in offer.usage_classes:
            assert offer.on_demand_price is not None
            choices.append(Choice(offer, "on-demand", offer.on_demand_price, placed))
    if not choices:
        raise ResourcesNotAvailableError(
            _why_nothing_fits(offers, resources, flags, region, custom or {})
        )
    return sorted(choices, key=rank_key)


def rank_key(choice: Choice) -> tuple[float, int, int, str, str]:
    """Cheaper per placed worker first; then more workers per instance, a lower bucket."""
    bucket = choice.offer.interruption_bucket if choice.market == "spot" else 0
    return (
        round(choice.price_per_worker, 9),
        -choice.workers_per_instance,
        100 if bucket is None else bucket,
        choice.offer.name,
        choice.market,
    )


def _largest(offers: Sequence[Ec2Offer], key: Callable[[Ec2Offer], tuple[float, ...]]) -> str:
    return describe_offer(max(offers, key=key)) if offers else "none"


def _why_nothing_fits(
    offers: Sequence[Ec2Offer],
    resources: Resources,
    flags: frozenset[str],
    region: str,
    custom: Mapping[str, float],
) -> str:
    where = f" in {region}" if region else ""
    wanted = f"Resources({resources.describe()}"
    if resources.gpus or resources.gpu_memory:
        wanted += f", gpus={resources.gpus:g}, gpu_memory={resources.gpu_memory or 0:g} GB"
    if flags:
        wanted += f", flags={sorted(flags)}"
    wanted += ")"
    if not offers:
        return f"no priced EC2 instance types are offered{where}; cannot place {wanted}"
    parts = [f"no EC2 instance type{where} fits {wanted}"]
    if custom_bound(custom, resources, 1) < 1:
        offered = dict(sorted(custom.items())) if custom else "no custom resources"
        parts.append(
            f"it asks for custom resources {dict(sorted((resources.custom or {}).items()))} and "
            f"each instance offers {offered} (AllocEC2Instance(custom_resources=...))"
        )
    parts.append(
        "the largest is " + _largest(offers, lambda o: (o.logical_cpu, o.memory_gb, o.gpus))
    )
    if _gpus_per_worker(resources):
        gpu_offers = [o for o in offers if o.gpus]
        parts.append("the most GPUs: " + _largest(gpu_offers, lambda o: (o.gpus, o.gpu_memory_gb)))
        if resources.gpu_memory:
            parts.append(
                "the most memory per GPU: "
                + _largest(gpu_offers, lambda o: (o.gpu_memory_per_gpu, o.gpus))
                + f" with {max((o.gpu_memory_per_gpu for o in gpu_offers), default=0):g} GB"
            )
    if flags:
        matching = [o for o in offers if _matches(o, flags)]
        parts.append(
            f"{len(matching)} type(s) have flags {sorted(flags)} on {_wanted_arch(flags)}"
            + (
                f", the largest {_largest(matching, lambda o: (o.logical_cpu, o.memory_gb))}"
                if matching
                else ""
            )
        )
    return "; ".join(parts)
