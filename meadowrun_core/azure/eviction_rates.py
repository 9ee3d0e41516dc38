"""Spot eviction-rate bands of Azure VM sizes.

Azure publishes each size's spot eviction rate per region as a band: ``0-5``, ``5-10``,
``10-15``, ``15-20`` or ``20+`` percent (the portal's size picker; Azure Resource Graph's
``SpotResources`` table, type ``microsoft.compute/skuspotevictionrate/location``,
``properties.evictionRate``, query ``RESOURCE_GRAPH_QUERY``). A band is compared with
``Resources.max_eviction_rate`` by its upper end (``20+`` counts as 100).

``DEFAULT_BANDS`` is a **built-in default table**, not live data: a coarse band per size
series, as Azure's published bands for common regions have tended to read (general-purpose
and memory-optimised current generations low; GPU and older or burstable series high).
It is used where the live source (``eviction_graph.py``: Resource Graph) does not answer;
sizes it does not list count as ``20+``, so spot is chosen for them only when
``max_eviction_rate`` is 100.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping

BAND_UPPER = {"0-5": 5, "5-10": 10, "10-15": 15, "15-20": 20, "20+": 100}
UNKNOWN_BAND = "20+"

RESOURCE_GRAPH_QUERY = (
    "SpotResources | where type =~ 'microsoft.compute/skuspotevictionrate/location' "
    "| where location =~ '{location}' "
    "| project skuName = tostring(sku.name), evictionRate = tostring(properties.evictionRate)"
)

# (pattern on the size name, band): the first match wins. Built-in defaults: see above.
DEFAULT_BANDS: tuple[tuple[str, str], ...] = (
    (r"Standard_D\d+(a|p)?(d)?s_v[56]", "0-5"),
    (r"Standard_E\d+(a|p)?(d)?s_v[56]", "5-10"),
    (r"Standard_F\d+s_v2", "5-10"),
    (r"Standard_D\d+s_v[34]", "5-10"),
    (r"Standard_NC\d+as_T4_v3", "10-15"),
    (r"Standard_NC\d+s_v3", "15-20"),
    (r"Standard_NC\d+ads_A100_v4", "20+"),
)


def normalize_band(text: str) -> str | None:
    """``"0-5"``, ``"0-5%"``, ``" 20+ "`` -> the band's key; None if not a band."""
    key = re.sub(r"[\s%]", "", text)
    return key if key in BAND_UPPER else None


def band_upper(band: str | None) -> int:
    """The band's upper end in percent; an unknown band counts as 100."""
    return BAND_UPPER.get(band or UNKNOWN_BAND, 100)


def default_band(size: str) -> str | None:
    for pattern, band in DEFAULT_BANDS:
        if re.fullmatch(pattern, size):
            return band
    return None


def default_bands(sizes: Iterable[str]) -> dict[str, str]:
    """The built-in band of each size the table lists."""
    return {size: band for size in sizes if (band := default_band(size)) is not None}


def parse_graph_rows(rows: Iterable[Mapping[str, object]]) -> dict[str, str]:
    """Bands from ``RESOURCE_GRAPH_QUERY`` result rows (``skuName``, ``evictionRate``)."""
    bands = {}
    for row in rows:
        band = normalize_band(str(row.get("evictionRate", "")))
        name = str(row.get("skuName", ""))
        if band is not None and name:
            bands[name] = band
    return bands


class DefaultBands(Mapping[str, str]):
    """``default_band`` as a mapping (what ``vm_sizes.price_sizes`` looks bands up in)."""

    def __getitem__(self, size: str) -> str:
        band = default_band(size)
        if band is None:
            raise KeyError(size)
        return band

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0
