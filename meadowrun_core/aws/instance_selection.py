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
from collections.abc import Iterable, Mapping
from typing import Literal, TypeVar

from meadowrun_core.aws.instance_types import Ec2Offer
from meadowrun_core.exceptions import BadInputError, ResourcesNotAvailableError
from meadowrun_core.resources import Resources
from meadowrun_core.seams.offer_fit import Catalogue, workers_per_instance
from meadowrun_core.seams.offer_fit import Choice as FitChoice

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

KNOWN_FLAGS = frozenset(
    {
        "x86_64",
        "arm64",
        "intel",
        "amd",
        "graviton",
        "nvidia",
        "amd_gpu",
        "avx",
        "avx2",
        "avx512",
    }
)
EC2 = Catalogue(
    cloud="EC2",
    known_flags=KNOWN_FLAGS,
    arm_flags=frozenset({"arm64", "graviton"}),
    type_noun="EC2 instance type",
    short_noun="type",
    instance_noun="instance",
    host_class="AllocEC2Instance",
)


# Launching an EC2 type in a market ("spot" or "on-demand").
Choice = FitChoice[Ec2Offer]


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
    flags = EC2.wanted_flags(resources)
    offers = [o for o in offers if _available(o)]
    choices = []
    for offer in offers:
        if not EC2.matches(offer, flags):
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
            EC2.why_nothing_fits(offers, resources, flags, region, custom or {})
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
