"""What Azure VM sizes cost: regular (pay-as-you-go) and Spot prices per size and region,
from the Azure Retail Prices API.

The API (``RETAIL_PRICES_URL``, unauthenticated, documented at learn.microsoft.com/rest/api/
cost-management/retail-prices/azure-retail-prices) answers a plain HTTPS GET with ``$filter``
in pages of ``Items`` linked by ``NextPageLink``. We ask for one region's Virtual Machines at
``priceType eq 'Consumption'`` and keep Linux rows priced per hour: a ``skuName`` ending in
`` Spot`` is the Spot price, one ending in `` Low Priority`` (Batch's low-priority VMs) is
skipped, as are Windows products, Dev/Test and reservation rows. Where several rows price the
same size and market, the latest ``effectiveStartDate`` wins.

``CachedPriceSource`` keeps complete answers in ``MEADOWRUN_HOME/cache`` for a TTL (4 h,
``MEADOWRUN_AZURE_PRICE_CACHE_TTL`` seconds). ``MEADOWRUN_AZURE_PRICES_URL`` points the client
elsewhere (tests: the Azure twin).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import ssl
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from meadowrun_core.disk_cache import DiskCache
from meadowrun_core.exceptions import MeadowrunError

log = logging.getLogger(__name__)

RETAIL_PRICES_URL = "https://prices.azure.com/api/retail/prices"
PRICES_URL_ENV = "MEADOWRUN_AZURE_PRICES_URL"
TTL_ENV = "MEADOWRUN_AZURE_PRICE_CACHE_TTL"
DEFAULT_TTL_SECONDS = 4 * 3600.0
MAX_PAGES = 500  # a region's VM prices are a few thousand rows, 100 to a page


@dataclass(frozen=True)
class AzurePrices:
    """Regular and Spot $/h per size (``Standard_D2s_v5``) in one region."""

    location: str
    regular: Mapping[str, float]
    spot: Mapping[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"location": self.location, "regular": dict(self.regular), "spot": dict(self.spot)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AzurePrices:
        return cls(
            data["location"],
            {k: float(v) for k, v in data["regular"].items()},
            {k: float(v) for k, v in data["spot"].items()},
        )


class PriceSource(Protocol):
    def prices(self, location: str) -> AzurePrices: ...


def price_filter(location: str) -> str:
    return (
        f"serviceName eq 'Virtual Machines' and armRegionName eq '{location}' "
        "and priceType eq 'Consumption'"
    )


def parse_items(items: Iterable[Mapping[str, Any]], location: str) -> AzurePrices:
    """Linux regular and Spot prices per hour from Retail Prices ``Items``."""
    latest: dict[tuple[str, str], tuple[str, float]] = {}
    for item in items:
        sku_name = str(item.get("skuName", ""))
        if (
            item.get("type") != "Consumption"
            or str(item.get("armRegionName", "")).lower() != location.lower()
            or "windows" in str(item.get("productName", "")).lower()
            or sku_name.endswith("Low Priority")
            or item.get("unitOfMeasure") != "1 Hour"
            or not item.get("armSkuName")
        ):
            continue
        price = float(item.get("retailPrice") or 0)
        if price <= 0:
            continue
        key = (str(item["armSkuName"]), "spot" if sku_name.endswith(" Spot") else "regular")
        start = str(item.get("effectiveStartDate", ""))
        if key not in latest or start > latest[key][0]:
            latest[key] = (start, price)
    regular = {name: p for (name, market), (_, p) in latest.items() if market == "regular"}
    spot = {name: p for (name, market), (_, p) in latest.items() if market == "spot"}
    return AzurePrices(location, regular, spot)


def fetch_items(
    location: str,
    url: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
    timeout: float = 30,
) -> list[dict[str, Any]]:
    """Every page of the region's VM price rows. Follows ``NextPageLink`` only to the same
    host, so a bad page cannot send the client elsewhere."""
    base = url or os.environ.get(PRICES_URL_ENV) or RETAIL_PRICES_URL
    origin = urllib.parse.urlsplit(base)[:2]
    page_url: str | None = base + "?" + urllib.parse.urlencode({"$filter": price_filter(location)})
    items: list[dict[str, Any]] = []
    for _ in range(MAX_PAGES):
        if page_url is None:
            return items
        if urllib.parse.urlsplit(page_url)[:2] != origin:
            raise MeadowrunError(f"the Retail Prices API linked to another host: {page_url}")
        request = urllib.request.Request(page_url, headers={"Accept": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout, context=ssl_context) as response:
            page = json.load(response)
        items.extend(page.get("Items") or [])
        page_url = page.get("NextPageLink") or None
    raise MeadowrunError(f"the Retail Prices API gave more than {MAX_PAGES} pages for {location}")


class RetailPriceSource:
    """The live Retail Prices API (or the URL given / ``MEADOWRUN_AZURE_PRICES_URL``)."""

    def __init__(self, url: str | None = None, ssl_context: ssl.SSLContext | None = None) -> None:
        self.url = url
        self.ssl_context = ssl_context

    def prices(self, location: str) -> AzurePrices:
        try:
            items = fetch_items(location, self.url, self.ssl_context)
        except OSError as exc:
            raise MeadowrunError(
                f"could not read VM prices for {location} from the Azure Retail Prices API "
                f"({exc}); it needs HTTPS access to prices.azure.com"
            ) from exc
        prices = parse_items(items, location)
        if not prices.regular:
            raise MeadowrunError(
                f"the Azure Retail Prices API has no Linux VM prices for {location}"
            )
        return prices


def cache_ttl_seconds() -> float:
    raw = os.environ.get(TTL_ENV)
    return float(raw) if raw else DEFAULT_TTL_SECONDS


def cache_tag(url: str | None) -> str:
    """Keeps prices fetched from another endpoint (a twin) apart from the real ones."""
    url = url or os.environ.get(PRICES_URL_ENV)
    return "" if not url else "-" + hashlib.sha256(url.encode()).hexdigest()[:10]


class CachedPriceSource:
    """Another source's answers, kept for the cache's TTL."""

    def __init__(self, inner: PriceSource, cache: DiskCache | None = None, tag: str = "") -> None:
        self.inner = inner
        self.cache = cache or DiskCache(cache_ttl_seconds())
        self.tag = tag

    def prices(self, location: str) -> AzurePrices:
        key = f"azure-prices-{location}{self.tag}"
        cached = self.cache.get(key)
        if cached is not None:
            return AzurePrices.from_json(cached)
        data = self.inner.prices(location)
        self.cache.put(key, data.to_json())
        return data


def default_price_source() -> PriceSource:
    return CachedPriceSource(RetailPriceSource(), tag=cache_tag(None))
