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

The provider walks the ladder, and on a create that fails asks ``after_failure`` for the rest:
``SkuNotAvailable`` and allocation failures skip that choice; a quota error
(``OperationNotAllowed`` "...exceeding approved ... quota") skips every choice the same quota
counts (Spot: ``LowPriorityCores``, all Spot choices; regular: the size's family); any other
error is raised at once. Requests nothing can satisfy fail in ``choose_vm_sizes``, before
anything is created. A GPU request without a vendor flag means NVIDIA.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from meadowrun_core.azure.vm_sizes import VmSizeOffer, describe_offer
from meadowrun_core.exceptions import BadInputError, ResourcesNotAvailableError
from meadowrun_core.resources import Resources
from meadowrun_core.seams.instance_provider import custom_bound

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
    {"x86_64", "arm64", "intel", "amd", "ampere", "nvidia", "amd_gpu", "avx", "avx2", "avx512"}
)
GPU_VENDOR_FLAGS = frozenset({"nvidia", "amd_gpu"})
_EPSILON = 1e-9


@dataclass(frozen=True)
class Choice:
    """Creating a VM of ``offer``'s size in ``market`` to hold ``workers_per_instance``."""

    offer: VmSizeOffer
    market: Market
    price_per_hour: float
    workers_per_instance: int

    @property
    def price_per_worker(self) -> float:
        return self.price_per_hour / self.workers_per_instance

    @property
    def max_price(self) -> float | None:
        """``billingProfile.maxPrice`` for a Spot VM: the regular price; None if regular."""
        return self.offer.regular_price if self.market == "spot" else None

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
                f"unknown Resources flag {flag!r} for Azure; known flags: "
                f"{', '.join(sorted(KNOWN_FLAGS))}"
            )
        result.add(name)
    return frozenset(result)


def _wanted_arch(flags: frozenset[str]) -> str:
    """arm64 only when asked for: deployments built on x86 clients need x86 workers."""
    if {"arm64", "x86_64"} <= flags:
        raise BadInputError("Resources flags ask for both arm64 and x86_64")
    return "arm64" if flags & {"arm64", "ampere"} else "x86_64"


def _gpus_per_worker(resources: Resources) -> float:
    return resources.gpus or (1.0 if resources.gpu_memory else 0.0)


def _matches(offer: VmSizeOffer, flags: frozenset[str]) -> bool:
    return offer.arch == _wanted_arch(flags) and flags <= offer.flags


def workers_per_instance(
    offer: VmSizeOffer,
    resources: Resources,
    workers: int = 1,
    custom: Mapping[str, float] | None = None,
) -> int:
    """How many workers (at most ``workers``) one VM of ``offer`` holds; 0 if none.
    ``gpu_memory`` is per worker over its GPU share, as on EC2."""
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
    flags = normalize_flags(resources.flags)
    if _gpus_per_worker(resources) and not flags & GPU_VENDOR_FLAGS:
        flags |= {"nvidia"}
    offers = [o for o in offers if o.regular_price is not None]
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
        assert offer.regular_price is not None
        choices.append(Choice(offer, "regular", offer.regular_price, placed))
    if not choices:
        raise ResourcesNotAvailableError(
            _why_nothing_fits(offers, resources, flags, location, custom or {})
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
    if failed.market == "spot":
        return [c for c in rest if c.market != "spot"]
    family = failed.offer.family
    return [c for c in rest if c.market == "spot" or c.offer.family != family]


def _largest(offers: Sequence[VmSizeOffer], key: Callable[[VmSizeOffer], tuple[float, ...]]) -> str:
    return describe_offer(max(offers, key=key)) if offers else "none"


def _why_nothing_fits(
    offers: Sequence[VmSizeOffer],
    resources: Resources,
    flags: frozenset[str],
    location: str,
    custom: Mapping[str, float],
) -> str:
    where = f" in {location}" if location else ""
    wanted = f"Resources({resources.describe()}"
    if resources.gpus or resources.gpu_memory:
        wanted += f", gpus={resources.gpus:g}, gpu_memory={resources.gpu_memory or 0:g} GB"
    if flags:
        wanted += f", flags={sorted(flags)}"
    wanted += ")"
    if not offers:
        return f"no priced Azure VM sizes are offered{where}; cannot place {wanted}"
    parts = [f"no Azure VM size{where} fits {wanted}"]
    if custom_bound(custom, resources, 1) < 1:
        offered = dict(sorted(custom.items())) if custom else "no custom resources"
        parts.append(
            f"it asks for custom resources {dict(sorted((resources.custom or {}).items()))} and "
            f"each VM offers {offered} (AllocAzureVM(custom_resources=...))"
        )
    parts.append(
        "the largest is " + _largest(offers, lambda o: (o.logical_cpu, o.memory_gb, o.gpus))
    )
    if _gpus_per_worker(resources):
        gpu_offers = [o for o in offers if o.gpus]
        parts.append("the most GPUs: " + _largest(gpu_offers, lambda o: (o.gpus, o.gpu_memory_gb)))
        if resources.gpu_memory:
            best = max((o.gpu_memory_per_gpu for o in gpu_offers), default=0)
            parts.append(
                "the most memory per GPU: "
                + _largest(gpu_offers, lambda o: (o.gpu_memory_per_gpu, o.gpus))
                + f" with {best:g} GB"
            )
    if flags:
        matching = [o for o in offers if _matches(o, flags)]
        parts.append(f"{len(matching)} size(s) have flags {sorted(flags)} on {_wanted_arch(flags)}")
    return "; ".join(parts)
