"""What EC2 instance types cost and how often spot instances are interrupted.

Three live sources, one per fact:

- on-demand prices (and CPU features such as AVX-512) from the AWS Pricing API
  (``pricing`` in us-east-1, ``get_products``: Linux, shared tenancy, no pre-installed
  software, capacity status "Used", the region's ``regionCode``);
- spot prices from ``describe_spot_price_history``: the latest price per type and zone,
  then the highest across the region's zones (an instance may land in any of them);
- interruption buckets from the Spot Instance Advisor feed (``ADVISOR_URL``): each type's
  bucket is the upper end of its range as labelled, in percent (5, 10, 15, 20, 100; the
  feed's own ``max`` fields read 5, 11, 16, 22, 100, but a user who accepts 10% means the
  range shown as "5-10%").

moto serves none of these usefully: it has no Pricing API, its spot price history is a stub
(every price 0.00001 at a 2006 timestamp), and the Advisor feed is a public S3 file. Tests
inject ``FixturePriceSource`` (real rows in ``tests/fixtures/aws``) through the
``PriceSource`` seam; ``MEADOWRUN_AWS_PRICE_FIXTURE=<dir>`` does the same for the CLI.

``DiskCache`` keeps fetched data in ``MEADOWRUN_HOME/cache`` (files 0600, TTL 4 h by
default, ``MEADOWRUN_AWS_PRICE_CACHE_TTL`` seconds).
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import json
import logging
import os
import re
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from meadowrun_core.aws.clients import aws_client
from meadowrun_core.disk_cache import DiskCache as NeutralDiskCache
from meadowrun_core.exceptions import MeadowrunError

log = logging.getLogger(__name__)

ADVISOR_URL = "https://spot-bid-advisor.s3.amazonaws.com/spot-advisor-data.json"
DEFAULT_TTL_SECONDS = 4 * 3600.0
FIXTURE_ENV = "MEADOWRUN_AWS_PRICE_FIXTURE"
ADVISOR_URL_ENV = "MEADOWRUN_AWS_SPOT_ADVISOR_URL"
TTL_ENV = "MEADOWRUN_AWS_PRICE_CACHE_TTL"

_PRICING_REGION = "us-east-1"  # the Pricing API answers from us-east-1 for every region
_SPOT_PRODUCTS = ["Linux/UNIX", "Linux/UNIX (Amazon VPC)"]


@dataclass(frozen=True)
class PriceData:
    """Prices and interruption buckets of one region, keyed by instance type name.

    ``complete`` is False when a source failed (the data is used, never cached)."""

    region: str
    on_demand: Mapping[str, float]
    spot: Mapping[str, float] = field(default_factory=dict)
    interruption: Mapping[str, int] = field(default_factory=dict)
    bucket_labels: Mapping[int, str] = field(default_factory=dict)
    cpu_features: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    complete: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "region": self.region,
            "on_demand": dict(self.on_demand),
            "spot": dict(self.spot),
            "interruption": dict(self.interruption),
            "bucket_labels": {str(k): v for k, v in self.bucket_labels.items()},
            "cpu_features": {k: list(v) for k, v in self.cpu_features.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PriceData:
        return cls(
            region=data["region"],
            on_demand={k: float(v) for k, v in data["on_demand"].items()},
            spot={k: float(v) for k, v in data["spot"].items()},
            interruption={k: int(v) for k, v in data["interruption"].items()},
            bucket_labels={int(k): str(v) for k, v in data["bucket_labels"].items()},
            cpu_features={k: tuple(v) for k, v in data["cpu_features"].items()},
        )

    def bucket_label(self, bucket: int | None) -> str:
        if bucket is None:
            return "unknown"
        return self.bucket_labels.get(bucket, f"<={bucket}%")


class PriceSource(Protocol):
    def prices(self, region: str) -> PriceData: ...


# --- on-demand: the Pricing API ----------------------------------------------------------
def pricing_filters(region: str) -> list[dict[str, str]]:
    terms = {
        "ServiceCode": "AmazonEC2",
        "regionCode": region,
        "operatingSystem": "Linux",
        "tenancy": "Shared",
        "preInstalledSw": "NA",
        "capacitystatus": "Used",
        "licenseModel": "No License required",
    }
    return [{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in terms.items()]


def parse_cpu_features(text: str) -> tuple[str, ...]:
    """``"Intel AVX; Intel AVX2; Intel AVX512; Intel Turbo"`` -> ``("avx", "avx2", "avx512")``."""
    found = set()
    for token in re.split(r"[;,]", text):
        word = re.sub(r"[\s\-]", "", token.lower()).removeprefix("intel").removeprefix("amd")
        if word in ("avx", "avx2", "avx512"):
            found.add(word)
    return tuple(sorted(found))


def parse_price_list(items: Iterable[str]) -> tuple[dict[str, float], dict[str, tuple[str, ...]]]:
    """On-demand $/h and CPU features per type from ``get_products`` PriceList entries."""
    prices: dict[str, float] = {}
    features: dict[str, tuple[str, ...]] = {}
    for item in items:
        product = json.loads(item)
        attributes = product.get("product", {}).get("attributes", {})
        name = attributes.get("instanceType")
        if not name:
            continue
        for term in product.get("terms", {}).get("OnDemand", {}).values():
            for dimension in term.get("priceDimensions", {}).values():
                usd = float(dimension.get("pricePerUnit", {}).get("USD", "0") or 0)
                if usd > 0 and dimension.get("unit", "Hrs").startswith("Hr"):
                    prices[name] = min(usd, prices.get(name, usd))
        if attributes.get("processorFeatures"):
            features[name] = parse_cpu_features(attributes["processorFeatures"])
    return prices, features


def fetch_on_demand(
    pricing: Any, region: str
) -> tuple[dict[str, float], dict[str, tuple[str, ...]]]:
    """All Linux on-demand prices of ``region`` (a few hundred pages of 100 products)."""
    items: list[str] = []
    pages = pricing.get_paginator("get_products").paginate(
        ServiceCode="AmazonEC2", Filters=pricing_filters(region), FormatVersion="aws_v1"
    )
    for page in pages:
        items.extend(page.get("PriceList", []))
    return parse_price_list(items)


# --- spot: spot price history ------------------------------------------------------------
def fetch_spot_prices(
    ec2: Any, instance_types: Iterable[str] | None = None, now: dt.datetime | None = None
) -> dict[str, float]:
    """Current spot $/h per type: the latest price in each zone, then the highest zone."""
    kwargs: dict[str, Any] = {
        "StartTime": now or dt.datetime.now(dt.UTC),
        "ProductDescriptions": _SPOT_PRODUCTS,
    }
    if instance_types is not None:
        kwargs["InstanceTypes"] = sorted(instance_types)
    latest: dict[tuple[str, str], tuple[dt.datetime, float]] = {}
    for page in ec2.get_paginator("describe_spot_price_history").paginate(**kwargs):
        for entry in page["SpotPriceHistory"]:
            key = (entry["InstanceType"], entry.get("AvailabilityZone", ""))
            stamp, price = entry["Timestamp"], float(entry["SpotPrice"])
            if key not in latest or stamp > latest[key][0]:
                latest[key] = (stamp, price)
    result: dict[str, float] = {}
    for (name, _zone), (_stamp, price) in latest.items():
        result[name] = max(price, result.get(name, 0.0))
    return result


# --- interruption buckets: the Spot Instance Advisor feed -------------------------------
def bucket_upper_bound(label: str, feed_max: int) -> int:
    """The percent a range's label ends at ("<5%" 5, "5-10%" 10, ">20%" 100); the feed's
    ``max`` (5, 11, 16, 22, 100) where the label has no upper end."""
    match = re.fullmatch(r"\s*(?:<|\d+\s*-)\s*(\d+)\s*%\s*", label)
    return int(match.group(1)) if match else feed_max


def parse_advisor(feed: Mapping[str, Any], region: str) -> tuple[dict[str, int], dict[int, str]]:
    """Bucket (the upper end of its range, percent) per Linux type of ``region``, and the
    bucket labels."""
    ranges = {
        int(r["index"]): (bucket_upper_bound(str(r["label"]), int(r["max"])), str(r["label"]))
        for r in feed["ranges"]
    }
    entries = feed["spot_advisor"].get(region, {}).get("Linux", {})
    buckets = {name: ranges[int(e["r"])][0] for name, e in entries.items()}
    return buckets, {bucket: label for bucket, label in ranges.values()}


def fetch_advisor(url: str | None = None, timeout: float = 30) -> Mapping[str, Any]:
    url = url or os.environ.get(ADVISOR_URL_ENV) or ADVISOR_URL
    with urllib.request.urlopen(url, timeout=timeout) as response:
        data: Mapping[str, Any] = json.load(response)
    return data


class LivePriceSource:
    """The live sources above. On-demand prices are required; a failing spot or Advisor
    source only costs spot (the data is marked incomplete and not cached)."""

    def __init__(
        self,
        pricing: Any | None = None,
        ec2: Any | None = None,
        advisor: Callable[[], Mapping[str, Any]] = fetch_advisor,
    ) -> None:
        self._pricing = pricing
        self._ec2 = ec2
        self._advisor = advisor

    def prices(self, region: str) -> PriceData:
        pricing = self._pricing or aws_client("pricing", _PRICING_REGION)
        try:
            on_demand, features = fetch_on_demand(pricing, region)
        except Exception as exc:
            raise MeadowrunError(
                f"could not read on-demand prices for {region} from the AWS Pricing API "
                f"({exc}). That needs network access and the pricing:GetProducts permission; "
                f"for offline use set {FIXTURE_ENV} to a price fixture directory"
            ) from exc
        if not on_demand:
            raise MeadowrunError(f"the AWS Pricing API returned no Linux prices for {region}")
        complete = True
        spot: dict[str, float] = {}
        try:
            spot = fetch_spot_prices(self._ec2 or aws_client("ec2", region))
        except Exception as exc:
            complete = False
            log.warning("no spot prices for %s (%s): only on-demand will be chosen", region, exc)
        buckets: dict[str, int] = {}
        labels: dict[int, str] = {}
        try:
            buckets, labels = parse_advisor(self._advisor(), region)
        except Exception as exc:
            complete = False
            log.warning(
                "no Spot Instance Advisor data (%s): spot only where max_eviction_rate is 100",
                exc,
            )
        return PriceData(region, on_demand, spot, buckets, labels, features, complete)


class FixturePriceSource:
    """Prices from a directory holding ``<region>-prices.csv`` (columns as in
    ``../shared/data/aws/us-east-1-prices-skypilot-v3.csv``) and ``spot-advisor-data.json``
    (the Advisor feed's format). Spot prices there are the lowest zone's."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def prices(self, region: str) -> PriceData:
        path = self.directory / f"{region}-prices.csv"
        if not path.exists():
            have = sorted(p.name for p in self.directory.glob("*-prices.csv"))
            raise MeadowrunError(
                f"the price fixture {self.directory} has no {path.name} (it has: "
                f"{', '.join(have) or 'nothing'}); ask for one of those regions"
            )
        on_demand: dict[str, float] = {}
        spot: dict[str, float] = {}
        with path.open(newline="") as f:
            for row in csv.DictReader(f):
                name = row["instance_type"]
                if row["on_demand_usd_per_hour"]:
                    on_demand[name] = float(row["on_demand_usd_per_hour"])
                if row["spot_usd_per_hour_min"]:
                    spot[name] = float(row["spot_usd_per_hour_min"])
        feed = json.loads((self.directory / "spot-advisor-data.json").read_text())
        buckets, labels = parse_advisor(feed, region)
        return PriceData(region, on_demand, spot, buckets, labels)


# --- the local cache ---------------------------------------------------------------------
def cache_ttl_seconds() -> float:
    raw = os.environ.get(TTL_ENV)
    return float(raw) if raw else DEFAULT_TTL_SECONDS


class DiskCache(NeutralDiskCache):
    """The cloud-neutral cache (``disk_cache.py``) with AWS's TTL by default
    (``cache_ttl_seconds``) and the directory first, as the AWS code passes them."""

    def __init__(
        self,
        directory: Path | None = None,
        ttl_seconds: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(
            cache_ttl_seconds() if ttl_seconds is None else ttl_seconds, directory, clock
        )


def endpoint_tag() -> str:
    """Distinguishes cache entries fetched from an overridden endpoint (moto) from real ones."""
    endpoint = os.environ.get("MEADOWRUN_AWS_ENDPOINT_URL")
    return "" if not endpoint else "-" + hashlib.sha256(endpoint.encode()).hexdigest()[:10]


class CachedPriceSource:
    """Another source's complete answers, kept for the cache's TTL."""

    def __init__(self, inner: PriceSource, cache: DiskCache | None = None) -> None:
        self.inner = inner
        self.cache = cache or DiskCache()

    def prices(self, region: str) -> PriceData:
        key = f"aws-prices-{region}{endpoint_tag()}"
        cached = self.cache.get(key)
        if cached is not None:
            return PriceData.from_json(cached)
        data = self.inner.prices(region)
        if data.complete:
            self.cache.put(key, data.to_json())
        return data


def default_price_source() -> PriceSource:
    """The fixture named by ``MEADOWRUN_AWS_PRICE_FIXTURE``, else the cached live sources."""
    fixture = os.environ.get(FIXTURE_ENV)
    if fixture:
        return FixturePriceSource(fixture)
    return CachedPriceSource(LivePriceSource())
