"""EC2 instance types of a region: hardware from ``describe_instance_types`` and
``describe_instance_type_offerings``, joined with prices into ``Ec2Offer`` rows.

EC2 does not say which types have AVX-512 (``ProcessorInfo`` has the manufacturer and
architecture only). The Pricing API's ``processorFeatures`` does; where it is not at hand
(the price fixture), ``known_cpu_features`` answers from the processor generation of each
family, listing only families known to have it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from meadowrun_core.aws.clients import aws_client
from meadowrun_core.aws.pricing import DiskCache, PriceData, PriceSource, endpoint_tag

_DESCRIBE_BATCH = 100  # describe_instance_types takes at most 100 names per call

# x86 families with AVX-512: Intel Skylake-SP and later, AMD Zen 4 and later.
# fmt: off
_AVX512_FAMILIES = frozenset({
    "c5", "c5d", "c5n", "c6i", "c6id", "c6in", "c7i", "c7i-flex", "c8i", "c8i-flex",
    "m5", "m5d", "m5dn", "m5n", "m5zn", "m6i", "m6id", "m6idn", "m6in", "m7i", "m7i-flex",
    "m8i", "m8i-flex", "r5", "r5b", "r5d", "r5dn", "r5n", "r6i", "r6id", "r6idn", "r6in",
    "r7i", "r7iz", "r8i", "r8i-flex", "t3", "x2idn", "x2iedn", "x2iezn", "z1d", "i3en", "i4i",
    "i7i", "i7ie", "d3", "d3en", "g4dn", "p3dn", "p4d", "p4de", "inf1", "dl1", "vt1", "trn1",
    "trn1n", "hpc6id", "c7a", "m7a", "r7a", "hpc7a", "c8a", "m8a", "r8a",
})
# x86 families older than Haswell (no AVX2).
_NO_AVX2_FAMILIES = frozenset({
    "t1", "m1", "m2", "m3", "c1", "c3", "cc2", "cr1", "hs1", "g2", "i2", "r3",
})
# fmt: on


@dataclass(frozen=True)
class Ec2Offer:
    """One instance type in one region: its hardware and, once priced, its prices.

    ``gpu_memory_gb`` is the total over all GPUs. ``interruption_bucket`` is the upper end
    (percent) of the type's Spot Instance Advisor range, None where the Advisor has none.
    """

    name: str
    logical_cpu: float
    memory_gb: float
    arch: str  # "x86_64" or "arm64" (or EC2's other names, e.g. "x86_64_mac")
    cpu_vendor: str = ""  # "intel", "amd", "aws" (Graviton), "apple"
    gpus: int = 0
    gpu_memory_gb: float = 0.0
    gpu_vendor: str = ""  # "nvidia", "amd"
    gpu_name: str = ""
    usage_classes: tuple[str, ...] = ("on-demand", "spot")
    in_region: bool = True
    cpu_features: tuple[str, ...] = ()
    on_demand_price: float | None = None
    spot_price: float | None = None
    interruption_bucket: int | None = None

    @property
    def gpu_memory_per_gpu(self) -> float:
        return self.gpu_memory_gb / self.gpus if self.gpus else 0.0

    @property
    def flags(self) -> frozenset[str]:
        """What ``Resources.flags`` can ask for: arch, CPU vendor, GPU vendor, CPU features."""
        flags = {self.arch, *self.cpu_features}
        if self.cpu_vendor:
            flags.add(self.cpu_vendor)
            if self.cpu_vendor == "aws":
                flags.add("graviton")
        if self.gpu_vendor:
            flags.add("nvidia" if self.gpu_vendor == "nvidia" else f"{self.gpu_vendor}_gpu")
        return frozenset(flags)


def known_cpu_features(name: str, arch: str) -> tuple[str, ...]:
    if arch != "x86_64":
        return ()
    family = name.split(".")[0]
    if family in _NO_AVX2_FAMILIES:
        return ("avx",)
    return ("avx", "avx2", "avx512") if family in _AVX512_FAMILIES else ("avx", "avx2")


def _arch(architectures: list[str]) -> str:
    for wanted in ("arm64", "x86_64"):
        if wanted in architectures:
            return wanted
    return architectures[0] if architectures else "unknown"


def parse_instance_type(info: dict[str, Any], in_region: bool = True) -> Ec2Offer:
    """One ``describe_instance_types`` entry as an unpriced offer."""
    processor = info.get("ProcessorInfo", {})
    gpu_info = info.get("GpuInfo") or {}
    gpus = gpu_info.get("Gpus") or []
    count = sum(int(g.get("Count", 0)) for g in gpus)
    gpu_mib = gpu_info.get("TotalGpuMemoryInMiB") or sum(
        int(g.get("Count", 0)) * int(g.get("MemoryInfo", {}).get("SizeInMiB", 0)) for g in gpus
    )
    arch = _arch(list(processor.get("SupportedArchitectures", [])))
    return Ec2Offer(
        name=info["InstanceType"],
        logical_cpu=float(info["VCpuInfo"]["DefaultVCpus"]),
        memory_gb=info["MemoryInfo"]["SizeInMiB"] / 1024,
        arch=arch,
        cpu_vendor=str(processor.get("Manufacturer", "")).lower(),
        gpus=count,
        gpu_memory_gb=gpu_mib / 1024,
        gpu_vendor=str(gpus[0].get("Manufacturer", "")).lower() if gpus else "",
        gpu_name=str(gpus[0].get("Name", "")) if gpus else "",
        usage_classes=tuple(info.get("SupportedUsageClasses", ["on-demand"])),
        in_region=in_region,
    )


def offered_in_region(ec2: Any) -> set[str]:
    """Names of the types the client's region offers."""
    names: set[str] = set()
    pages = ec2.get_paginator("describe_instance_type_offerings").paginate(LocationType="region")
    for page in pages:
        names.update(o["InstanceType"] for o in page["InstanceTypeOfferings"])
    return names


def fetch_instance_types(ec2: Any, names: Iterable[str] | None = None) -> list[Ec2Offer]:
    """Hardware of the types ``ec2``'s region offers, unpriced.

    With ``names``, only those of them the region offers (quicker: describing every type
    takes about 15 pages); without, every type, ``in_region`` telling which are offered."""
    offered = offered_in_region(ec2)
    if names is None:
        pages = ec2.get_paginator("describe_instance_types").paginate()
        infos = [info for page in pages for info in page["InstanceTypes"]]
    else:
        wanted = sorted(set(names) & offered)
        infos = []
        for start in range(0, len(wanted), _DESCRIBE_BATCH):
            batch = wanted[start : start + _DESCRIBE_BATCH]
            infos.extend(ec2.describe_instance_types(InstanceTypes=batch)["InstanceTypes"])
    return [parse_instance_type(i, i["InstanceType"] in offered) for i in infos]


def price_offers(offers: Iterable[Ec2Offer], prices: PriceData) -> list[Ec2Offer]:
    """The offers with prices, interruption buckets and CPU features filled in."""
    priced = []
    for offer in offers:
        features = prices.cpu_features.get(offer.name) or known_cpu_features(offer.name, offer.arch)
        priced.append(
            dataclasses.replace(
                offer,
                cpu_features=tuple(features),
                on_demand_price=prices.on_demand.get(offer.name),
                spot_price=prices.spot.get(offer.name),
                interruption_bucket=prices.interruption.get(offer.name),
            )
        )
    return priced


def load_offers(
    region: str,
    prices: PriceSource,
    ec2: Any | None = None,
    cache: DiskCache | None = None,
) -> tuple[list[Ec2Offer], PriceData]:
    """Priced offers of every type of ``region`` that has an on-demand price.

    Type data is kept in ``cache`` (if given) for its TTL, like the prices."""
    price_data = prices.prices(region)
    wanted = set(price_data.on_demand)
    key = f"ec2-types-{region}{endpoint_tag()}"
    stored = cache.get(key) if cache is not None else None
    types: list[Ec2Offer] | None = None
    if stored is not None and wanted <= set(stored["asked"]):
        types = [_offer_from_json(o) for o in stored["types"] if o["name"] in wanted]
    if types is None:
        types = fetch_instance_types(ec2 or aws_client("ec2", region), wanted)
        if cache is not None:
            cache.put(
                key, {"asked": sorted(wanted), "types": [dataclasses.asdict(t) for t in types]}
            )
    return price_offers(types, price_data), price_data


def _offer_from_json(data: dict[str, Any]) -> Ec2Offer:
    fields = dict(data)
    fields["usage_classes"] = tuple(fields["usage_classes"])
    fields["cpu_features"] = tuple(fields["cpu_features"])
    return Ec2Offer(**fields)
