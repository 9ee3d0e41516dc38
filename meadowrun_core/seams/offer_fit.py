"""How a job's ``Resources`` fit a cloud's instance types, shared by every cloud that picks
types from a catalogue (EC2 instance types, Azure VM sizes): flags, architecture, how many
workers one instance holds, and the message when nothing fits. Each cloud keeps what is its
own (markets, prices, error codes) and describes itself with ``Catalogue``."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from meadowrun_core.exceptions import BadInputError
from meadowrun_core.resources import Resources
from meadowrun_core.seams.allocation_table import gpus_needed
from meadowrun_core.seams.instance_provider import custom_bound

_EPSILON = 1e-9
# A GPU request names its vendor with one of these; without one it means NVIDIA (CUDA).
GPU_VENDOR_FLAGS = frozenset({"nvidia", "amd_gpu"})
FLAG_ALIASES = {
    "aarch64": "arm64",
    "arm": "arm64",
    "x86": "x86_64",
    "amd64": "x86_64",
    "amd_cpu": "amd",
    "intel_cpu": "intel",
    "cuda": "nvidia",
    "avx-512": "avx512",
}


class Offer(Protocol):
    """An instance type as the fitting needs it (``aws.Ec2Offer``, ``azure.VmSizeOffer``)."""

    @property
    def name(self) -> str: ...
    @property
    def logical_cpu(self) -> float: ...
    @property
    def memory_gb(self) -> float: ...
    @property
    def arch(self) -> str: ...
    @property
    def gpus(self) -> int: ...
    @property
    def gpu_memory_gb(self) -> float: ...
    @property
    def gpu_name(self) -> str: ...
    @property
    def gpu_memory_per_gpu(self) -> float: ...
    @property
    def flags(self) -> frozenset[str]: ...


OfferT = TypeVar("OfferT", bound=Offer)


@dataclass(frozen=True)
class Choice(Generic[OfferT]):
    """Launching ``offer`` in ``market`` (a cloud's name for it: spot, on-demand, regular) to
    hold ``workers_per_instance`` workers at ``price_per_hour``."""

    offer: OfferT
    market: str
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


@dataclass(frozen=True)
class Catalogue:
    """What differs between clouds' catalogues: the flags they know, which flags mean arm64,
    and the words for a type in messages."""

    cloud: str  # "EC2", "Azure"
    known_flags: frozenset[str]
    arm_flags: frozenset[str]  # flags that ask for arm64 (e.g. graviton, ampere)
    type_noun: str  # "EC2 instance type", "Azure VM size"
    short_noun: str  # "type", "size"
    instance_noun: str  # "instance", "VM"
    host_class: str  # "AllocEC2Instance", "AllocAzureVM"

    def normalize_flags(self, flags: Iterable[str]) -> frozenset[str]:
        """Lower-cased flags with aliases resolved; unknown flags are a ``BadInputError``."""
        result = set()
        for flag in flags:
            name = FLAG_ALIASES.get(flag.strip().lower(), flag.strip().lower())
            if name not in self.known_flags:
                raise BadInputError(
                    f"unknown Resources flag {flag!r} for {self.cloud}; known flags: "
                    f"{', '.join(sorted(self.known_flags))}"
                )
            result.add(name)
        return frozenset(result)

    def wanted_flags(self, resources: Resources) -> frozenset[str]:
        """The request's flags; a GPU request without a vendor flag means NVIDIA."""
        flags = self.normalize_flags(resources.flags)
        if gpus_needed(resources) and not flags & GPU_VENDOR_FLAGS:
            flags |= {"nvidia"}
        return flags

    def wanted_arch(self, flags: frozenset[str]) -> str:
        """arm64 only when asked for: deployments built on x86 clients need x86 workers."""
        if {"arm64", "x86_64"} <= flags:
            raise BadInputError("Resources flags ask for both arm64 and x86_64")
        return "arm64" if flags & self.arm_flags else "x86_64"

    def matches(self, offer: Offer, flags: frozenset[str]) -> bool:
        return offer.arch == self.wanted_arch(flags) and flags <= offer.flags

    def why_nothing_fits(
        self,
        offers: Sequence[Offer],
        resources: Resources,
        flags: frozenset[str],
        where: str,
        custom: Mapping[str, float],
    ) -> str:
        """Why no type fits, naming the largest (and the largest with the GPUs or flags)."""
        where = f" in {where}" if where else ""
        wanted = f"Resources({resources.describe()}"
        if resources.gpus or resources.gpu_memory:
            wanted += f", gpus={resources.gpus:g}, gpu_memory={resources.gpu_memory or 0:g} GB"
        if flags:
            wanted += f", flags={sorted(flags)}"
        wanted += ")"
        if not offers:
            return f"no priced {self.type_noun}s are offered{where}; cannot place {wanted}"
        parts = [f"no {self.type_noun}{where} fits {wanted}"]
        if custom_bound(custom, resources, 1) < 1:
            offered = dict(sorted(custom.items())) if custom else "no custom resources"
            parts.append(
                f"it asks for custom resources {dict(sorted((resources.custom or {}).items()))} "
                f"and each {self.instance_noun} offers {offered} "
                f"({self.host_class}(custom_resources=...))"
            )
        parts.append(
            "the largest is " + largest(offers, lambda o: (o.logical_cpu, o.memory_gb, o.gpus))
        )
        if gpus_needed(resources):
            gpu_offers = [o for o in offers if o.gpus]
            parts.append(
                "the most GPUs: " + largest(gpu_offers, lambda o: (o.gpus, o.gpu_memory_gb))
            )
            if resources.gpu_memory:
                best = max((o.gpu_memory_per_gpu for o in gpu_offers), default=0)
                parts.append(
                    "the most memory per GPU: "
                    + largest(gpu_offers, lambda o: (o.gpu_memory_per_gpu, o.gpus))
                    + f" with {best:g} GB"
                )
        if flags:
            matching = [o for o in offers if self.matches(o, flags)]
            parts.append(
                f"{len(matching)} {self.short_noun}(s) have flags {sorted(flags)} on "
                f"{self.wanted_arch(flags)}"
                + (
                    f", the largest {largest(matching, lambda o: (o.logical_cpu, o.memory_gb))}"
                    if matching
                    else ""
                )
            )
        return "; ".join(parts)


def workers_per_instance(
    offer: Offer,
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
    gpus = gpus_needed(resources)
    if gpus > 0:
        bounds.append(math.floor(offer.gpus / gpus + _EPSILON))
        if resources.gpu_memory and offer.gpu_memory_per_gpu * gpus < resources.gpu_memory:
            return 0
    return max(0, min(bounds))


def describe_offer(offer: Offer) -> str:
    gpus = f", {offer.gpus} x {offer.gpu_name or 'GPU'}" if offer.gpus else ""
    return f"{offer.name} ({offer.logical_cpu:g} vCPU / {offer.memory_gb:g} GB{gpus})"


def largest(offers: Sequence[OfferT], key: Callable[[OfferT], tuple[float, ...]]) -> str:
    return describe_offer(max(offers, key=key)) if offers else "none"
