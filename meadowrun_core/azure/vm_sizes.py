"""Azure VM sizes of a region: hardware from the Compute Resource SKUs API, joined with prices
(``azure.pricing``) and eviction-rate bands (``azure.eviction_rates``) into ``VmSizeOffer``s.

The SKUs API (``resource_skus.list(filter="location eq '<loc>'")``) gives each size's
``vCPUs``, ``MemoryGB``, ``GPUs`` (a count), ``CpuArchitectureType`` and ``LowPriorityCapable``
(Spot), and ``restrictions`` where the subscription may not use it. It says nothing of CPU
vendor, CPU features or GPU model, so those come from the size's name, as Azure's naming
convention spells them (``[Family][vCPUs][features]_[accelerator]_v[version]``: ``a`` AMD,
``p`` Arm/Ampere, otherwise Intel), and from the small built-in ``_GPU_MODELS`` table.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from meadowrun_core.azure.eviction_rates import band_upper
from meadowrun_core.azure.pricing import AzurePrices, PriceSource
from meadowrun_core.disk_cache import DiskCache

_NAME = re.compile(
    r"Standard_([A-Z]+)(\d+)(?:-\d+)?([a-z]*)(?:_(?!v\d+$)([A-Za-z0-9]+))?(?:_v(\d+))?"
)
# (pattern on the size name, vendor, model, GB per GPU): built-in, the SKUs API lacks them.
_GPU_MODELS: tuple[tuple[str, str, str, float], ...] = (
    (r"Standard_NC\d+as_T4_v3", "nvidia", "T4", 16),
    (r"Standard_NC\d+s_v3", "nvidia", "V100", 16),
    (r"Standard_NC\d+ads_A100_v4", "nvidia", "A100", 80),
    (r"Standard_NC\d+ads_H100_v5", "nvidia", "H100", 94),
    (r"Standard_NV\d+ads_A10_v5", "nvidia", "A10", 24),
    (r"Standard_ND\d+asr_v4", "nvidia", "A100", 40),
    (r"Standard_NV\d+as_v4", "amd", "MI25", 16),
)


@dataclass(frozen=True)
class VmSizeOffer:
    """One VM size in one region: its hardware and, once priced, its prices and band.

    ``gpu_memory_gb`` is the total over all GPUs; ``eviction_band`` is Azure's band
    (``"0-5"`` ... ``"20+"``), None where unknown (counts as ``20+``)."""

    name: str
    logical_cpu: float
    memory_gb: float
    arch: str  # "x86_64" or "arm64"
    family: str = ""
    cpu_vendor: str = ""  # "intel", "amd", "ampere"
    gpus: int = 0
    gpu_memory_gb: float = 0.0
    gpu_vendor: str = ""
    gpu_name: str = ""
    spot_capable: bool = False
    cpu_features: tuple[str, ...] = ()
    regular_price: float | None = None
    spot_price: float | None = None
    eviction_band: str | None = None

    @property
    def gpu_memory_per_gpu(self) -> float:
        return self.gpu_memory_gb / self.gpus if self.gpus else 0.0

    @property
    def eviction_upper(self) -> int:
        return band_upper(self.eviction_band)

    @property
    def flags(self) -> frozenset[str]:
        """What ``Resources.flags`` can ask for: arch, CPU vendor, GPU vendor, CPU features."""
        flags = {self.arch, *self.cpu_features}
        if self.cpu_vendor:
            flags.add(self.cpu_vendor)
        if self.gpu_vendor:
            flags.add("nvidia" if self.gpu_vendor == "nvidia" else f"{self.gpu_vendor}_gpu")
        return frozenset(flags)


def _cpu(name: str, arch: str) -> tuple[str, tuple[str, ...]]:
    """CPU vendor and features from the size's name (built-in rules, see the docstring)."""
    match = _NAME.fullmatch(name)
    features = match[3] if match else ""
    if arch == "arm64" or "p" in features:
        return "ampere", ()
    vendor = "amd" if "a" in features else "intel"
    version = int(match[5]) if match and match[5] else 1
    family = match[1] if match else ""
    # Intel sizes from Skylake on (Fsv2, v5 and later) have AVX-512; AMD from Genoa (v6).
    avx512 = (vendor == "intel" and (version >= 5 or (family == "F" and version == 2))) or (
        vendor == "amd" and version >= 6
    )
    return vendor, ("avx", "avx2", "avx512") if avx512 else ("avx", "avx2")


def _gpu_model(name: str) -> tuple[str, str, float]:
    """Vendor, model and GB per GPU of a GPU size; unknown sizes: ("", "", 0)."""
    for pattern, vendor, model, per_gpu in _GPU_MODELS:
        if re.fullmatch(pattern, name):
            return vendor, model, per_gpu
    return "", "", 0.0


def parse_sku(sku: Mapping[str, Any], location: str) -> VmSizeOffer | None:
    """One Resource SKUs row (the REST shape, as ``ResourceSku.as_dict()`` gives it) as an unpriced
    offer; None for other resource types and sizes restricted in ``location``."""
    if sku.get("resourceType") != "virtualMachines":
        return None
    if location.lower() not in [loc.lower() for loc in sku.get("locations") or []]:
        return None
    for restriction in sku.get("restrictions") or []:
        values = [v.lower() for v in restriction.get("values") or []]
        if restriction.get("type") == "Location" and location.lower() in values:
            return None
    caps = {c["name"]: c["value"] for c in sku.get("capabilities") or []}
    if "vCPUs" not in caps or "MemoryGB" not in caps:
        return None
    name = str(sku["name"])
    arch = "arm64" if caps.get("CpuArchitectureType", "x64").lower() == "arm64" else "x86_64"
    vendor, features = _cpu(name, arch)
    gpus = int(float(caps.get("GPUs", "0")))
    gpu_vendor, gpu_name, per_gpu = _gpu_model(name) if gpus else ("", "", 0.0)
    return VmSizeOffer(
        name=name,
        logical_cpu=float(caps["vCPUs"]),
        memory_gb=float(caps["MemoryGB"]),
        arch=arch,
        family=str(sku.get("family") or ""),
        cpu_vendor=vendor,
        gpus=gpus,
        gpu_memory_gb=per_gpu * gpus,
        gpu_vendor=gpu_vendor,
        gpu_name=gpu_name,
        spot_capable=caps.get("LowPriorityCapable") == "True",
        cpu_features=features,
    )


def fetch_vm_sizes(compute: Any, location: str) -> list[VmSizeOffer]:
    """Every VM size ``location`` offers this subscription, unpriced (one paged list)."""
    offers = []
    for sku in compute.resource_skus.list(filter=f"location eq '{location}'"):
        offer = parse_sku(sku.as_dict(), location)
        if offer is not None:
            offers.append(offer)
    return offers


def price_sizes(
    offers: Iterable[VmSizeOffer], prices: AzurePrices, bands: Mapping[str, str]
) -> list[VmSizeOffer]:
    """The offers with their prices and eviction bands filled in."""
    return [
        dataclasses.replace(
            offer,
            regular_price=prices.regular.get(offer.name),
            spot_price=prices.spot.get(offer.name) if offer.spot_capable else None,
            eviction_band=bands.get(offer.name),
        )
        for offer in offers
    ]


def load_offers(
    location: str,
    compute: Any,
    prices: PriceSource,
    bands: Mapping[str, str],
    cache: DiskCache | None = None,
    cache_tag: str = "",
) -> list[VmSizeOffer]:
    """Priced offers of every size of ``location`` that has a regular price; the SKU list is
    kept in ``cache`` (if given) for its TTL, like the prices."""
    key = f"azure-vm-sizes-{location}{cache_tag}"
    stored = cache.get(key) if cache is not None else None
    if stored is not None:
        sizes = [_offer_from_json(o) for o in stored]
    else:
        sizes = fetch_vm_sizes(compute, location)
        if cache is not None:
            cache.put(key, [dataclasses.asdict(s) for s in sizes])
    priced = price_sizes(sizes, prices.prices(location), bands)
    return [o for o in priced if o.regular_price is not None]


def _offer_from_json(data: Mapping[str, Any]) -> VmSizeOffer:
    fields = dict(data)
    fields["cpu_features"] = tuple(fields["cpu_features"])
    return VmSizeOffer(**fields)
