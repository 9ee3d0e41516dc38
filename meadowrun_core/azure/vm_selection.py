"""Choosing Azure VM sizes for some workers, and the fallback ladder on capacity errors.

The same design as EC2's (``aws/instance_selection.py``): for each priced size,
``choose_vm_sizes`` computes how many of the workers one VM holds (CPU, memory, GPUs and GPU
memory each bound it; at most the number wanted) and what each placed worker costs per hour,
in each market the size may use: Spot when ``max_eviction_rate > 0``, the size is Spot-capable
and priced, and the upper end of its eviction-rate band (``20+`` or unknown: 100) is at most
``max_eviction_rate``; regular always. Choices come back cheapest per worker first; ties go to
the VM holding more workers, then the lower band. A Spot choice's size also appears later as
regular, so fallback can reach it. A Spot VM is created with ``evictionPolicy: Delete`` and
``billingProfile.maxPrice`` = the size's regular price (``Choice.max_price``): never more
than regular, and never evicted for price below it.

After a create fails, ``after_failure`` gives the rest of the ladder:
``SkuNotAvailable`` and allocation failures skip that choice; a quota error
(``OperationNotAllowed`` "...exceeding approved ... quota") skips every choice the same quota
counts (``same_quota``; Spot: ``LowPriorityCores``, all Spot choices; regular: the size's
family); any other error is raised at once. The client's own ladder (``client/allocation.py``)
gets the same answer from the provider's ``CapacityError`` (``market_wide`` for Spot,
``also_refuses`` = the family for regular). Requests nothing can satisfy fail in
``choose_vm_sizes``, before anything is created. A GPU request without a vendor flag means
NVIDIA.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from meadowrun_core.azure.vm_sizes import VmSizeOffer
from meadowrun_core.exceptions import BadInputError, ResourcesNotAvailableError
from meadowrun_core.resources import Resources
from meadowrun_core.seams.offer_fit import Catalogue, workers_per_instance
from meadowrun_core.seams.offer_fit import Choice as FitChoice

Market = Literal["spot", "regular"]

# Create errors after which another size (or market) may still succeed.
SKIP_ONE_ERROR_CODES = frozenset(
    {
        "SkuNotAvailable",
        "AllocationFailed",
        "ZonalAllocationFailed",
        "OverconstrainedAllocationRequest",
        "OverconstrainedZonalAllocationRequest",
    }
)
QUOTA_ERROR_CODES = frozenset({"OperationNotAllowed", "QuotaExceeded"})

KNOWN_FLAGS = frozenset(
    {
        "x86_64",
        "arm64",
        "intel",
        "amd",
        "ampere",
        "nvidia",
        "amd_gpu",
        "avx",
        "avx2",
        "avx512",
    }
)
AZURE = Catalogue(
    cloud="Azure",
    known_flags=KNOWN_FLAGS,
    arm_flags=frozenset({"arm64", "ampere"}),
    type_noun="Azure VM size",
    short_noun="size",
    instance_noun="VM",
    host_class="AllocAzureVM",
)


@dataclass(frozen=True)
class Choice(FitChoice[VmSizeOffer]):
    """Creating a VM of ``offer``'s size in ``market`` ("spot" or "regular") to hold
    ``workers_per_instance`` workers."""

    @property
    def max_price(self) -> float | None:
        """``billingProfile.maxPrice`` for a Spot VM: the regular price; None if regular."""
        return self.offer.regular_price if self.market == "spot" else None


def spot_allowed(offer: VmSizeOffer, max_eviction_rate: float) -> bool:
    """Spot when allowed at all, Spot-capable, priced, and the whole band within the limit."""
    if max_eviction_rate <= 0 or not offer.spot_capable or offer.spot_price is None:
        return False
    return offer.eviction_upper <= max_eviction_rate


def choose_vm_sizes(
    offers: Iterable[VmSizeOffer],
    resources: Resources,
    workers: int = 1,
    location: str = "",
    custom: Mapping[str, float] | None = None,
) -> list[Choice]:
    """Every (size, market) that fits, cheapest per placed worker first. Raises
    ``ResourcesNotAvailableError`` naming the largest size when nothing fits, and
    ``BadInputError`` for unknown flags."""
    if workers < 1:
        raise BadInputError(f"workers must be at least 1, got {workers}")
    flags = AZURE.wanted_flags(resources)
    offers = [o for o in offers if o.regular_price is not None]
    choices = []
    for offer in offers:
        if not AZURE.matches(offer, flags):
            continue
        placed = workers_per_instance(offer, resources, workers, custom)
        if placed < 1:
            continue
        if spot_allowed(offer, resources.max_eviction_rate):
            assert offer.spot_price is not None
            choices.append(Choice(offer, "spot", offer.spot_price, placed))
        assert offer.regular_price is not None
        choices.append(Choice(offer, "regular", offer.regular_price, placed))
    if not choices:
        raise ResourcesNotAvailableError(
            AZURE.why_nothing_fits(offers, resources, flags, location, custom or {})
        )
    return sorted(choices, key=rank_key)


def rank_key(choice: Choice) -> tuple[float, int, int, str, str]:
    """Cheaper per placed worker first; then more workers per VM, a lower band."""
    band = choice.offer.eviction_upper if choice.market == "spot" else 0
    return (
        round(choice.price_per_worker, 9),
        -choice.workers_per_instance,
        band,
        choice.offer.name,
        choice.market,
    )


def is_quota_error(code: str, message: str) -> bool:
    return code in QUOTA_ERROR_CODES and "quota" in message.lower()


def same_quota(offers: Iterable[VmSizeOffer], failed: VmSizeOffer, market: str) -> set[str]:
    """Sizes a quota error on ``failed`` in ``market`` also refuses: every size for Spot
    (``LowPriorityCores``), the sizes of its family for regular."""
    if market == "spot":
        return {o.name for o in offers}
    return {o.name for o in offers if o.family == failed.family}


def after_failure(
    remaining: Sequence[Choice], failed: Choice, code: str, message: str
) -> list[Choice] | None:
    """The rest of the ladder after ``failed`` could not be created with ``code`` (Azure's
    ``error.code``) and ``message``; None when the error is not a capacity or quota error
    (raise it)."""
    rest = [c for c in remaining if c != failed]
    if code in SKIP_ONE_ERROR_CODES:
        return rest
    if not is_quota_error(code, message):
        return None
    refused = same_quota((c.offer for c in rest), failed.offer, failed.market)
    return [c for c in rest if c.market != failed.market or c.offer.name not in refused]
