"""Where EC2 prices come from, with no internet: spot price history (moto, and botocore's
Stubber for the paging and the per-zone choice), on-demand prices and CPU features from the
Pricing API (Stubber), interruption buckets from the Spot Instance Advisor feed (a loopback
HTTP server), and the live source joining the three. Split from the instance-selection tests:
these check the inputs, not the choice."""

from __future__ import annotations

import datetime as dt
import functools
import http.server
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.stub import ANY, Stubber

from meadowrun_core.aws.instance_selection import choose_instance_types
from meadowrun_core.aws.instance_types import Ec2Offer, fetch_instance_types, price_offers
from meadowrun_core.aws.pricing import (
    CachedPriceSource,
    DiskCache,
    LivePriceSource,
    fetch_advisor,
    fetch_on_demand,
    fetch_spot_prices,
    parse_advisor,
    pricing_filters,
)
from meadowrun_core.resources import Resources
from tests.instance_selection_support import FIXTURE, REGION, aws_client

# the fixtures moto_endpoint, ec2: pytest finds them in this module
from tests.instance_selection_support import moto_ec2 as moto_ec2
from tests.instance_selection_support import moto_server_endpoint as moto_server_endpoint


def test_spot_prices_from_spot_price_history_on_moto(ec2: Any) -> None:
    # moto's history is a stub (every price 0.00001) but the call and paging are real
    spot = fetch_spot_prices(ec2, ["t3.large", "m5.large"])
    assert spot == {"t3.large": 0.00001, "m5.large": 0.00001}


def _spot_entry(zone: str, price: str, stamp: dt.datetime) -> dict[str, Any]:
    return {
        "AvailabilityZone": zone,
        "InstanceType": "t3.large",
        "ProductDescription": "Linux/UNIX",
        "SpotPrice": price,
        "Timestamp": stamp,
    }


def test_spot_prices_take_the_latest_per_zone_and_the_highest_zone() -> None:
    ec2 = aws_client("ec2")
    old, new = dt.datetime(2026, 1, 1, tzinfo=dt.UTC), dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
    entry = _spot_entry
    with Stubber(ec2) as stub:
        stub.add_response(
            "describe_spot_price_history",
            {"SpotPriceHistory": [entry("us-east-1a", "0.05", old)], "NextToken": "more"},
            {"StartTime": ANY, "ProductDescriptions": ANY},
        )
        stub.add_response(
            "describe_spot_price_history",
            {
                "SpotPriceHistory": [
                    entry("us-east-1a", "0.02", new),
                    entry("us-east-1b", "0.03", new),
                ]
            },
            {"StartTime": ANY, "ProductDescriptions": ANY, "NextToken": "more"},
        )
        assert fetch_spot_prices(ec2) == {"t3.large": 0.03}


def _price_list_item(name: str, usd: str, features: str) -> str:
    """One ``get_products`` PriceList entry in the Pricing API's documented shape."""
    sku = f"SKU{name}"
    return json.dumps(
        {
            "product": {
                "productFamily": "Compute Instance",
                "attributes": {
                    "instanceType": name,
                    "regionCode": REGION,
                    "operatingSystem": "Linux",
                    "tenancy": "Shared",
                    "preInstalledSw": "NA",
                    "capacitystatus": "Used",
                    "processorFeatures": features,
                },
                "sku": sku,
            },
            "serviceCode": "AmazonEC2",
            "terms": {
                "OnDemand": {
                    f"{sku}.JRTCKXETXF": {
                        "priceDimensions": {
                            f"{sku}.JRTCKXETXF.6YS6EN2CT7": {
                                "unit": "Hrs",
                                "pricePerUnit": {"USD": usd},
                            }
                        },
                        "offerTermCode": "JRTCKXETXF",
                    }
                }
            },
        }
    )


def _stubbed_pricing(stubber_items: list[str]) -> tuple[Any, Stubber]:
    pricing = aws_client("pricing")
    stub = Stubber(pricing)
    stub.add_response(
        "get_products",
        {"PriceList": stubber_items, "FormatVersion": "aws_v1"},
        {"ServiceCode": "AmazonEC2", "Filters": pricing_filters(REGION), "FormatVersion": "aws_v1"},
    )
    return pricing, stub


def test_on_demand_prices_and_cpu_features_from_the_pricing_api() -> None:
    # moto has no Pricing API: botocore's Stubber checks our request against the service
    # model and answers in the API's shape
    items = [
        _price_list_item("m5.large", "0.0960000000", "Intel AVX; Intel AVX2; Intel AVX512"),
        _price_list_item("c6a.large", "0.0765000000", "AVX; AVX2; AMD Turbo"),
        _price_list_item("m6g.large", "0.0000000000", ""),  # unpriced rows are dropped
    ]
    pricing, stub = _stubbed_pricing(items)
    with stub:
        on_demand, features = fetch_on_demand(pricing, REGION)
    assert on_demand == {"m5.large": 0.096, "c6a.large": 0.0765}
    assert features == {"m5.large": ("avx", "avx2", "avx512"), "c6a.large": ("avx", "avx2")}
    filters = {f["Field"]: f["Value"] for f in pricing_filters(REGION)}
    assert filters["operatingSystem"] == "Linux" and filters["regionCode"] == REGION
    assert (filters["tenancy"], filters["preInstalledSw"], filters["capacitystatus"]) == (
        "Shared",
        "NA",
        "Used",
    )


@pytest.fixture(scope="module")
def advisor_url() -> Iterator[str]:
    """The fixture's Advisor JSON served over HTTP on loopback."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(FIXTURE))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/spot-advisor-data.json"
    server.shutdown()


def test_interruption_buckets_from_the_advisor_feed(advisor_url: str) -> None:
    buckets, labels = parse_advisor(fetch_advisor(advisor_url), REGION)
    assert (buckets["t3.large"], buckets["c5.9xlarge"], buckets["m5.xlarge"]) == (10, 5, 100)
    assert labels == {5: "<5%", 10: "5-10%", 15: "10-15%", 20: "15-20%", 100: ">20%"}
    assert parse_advisor(fetch_advisor(advisor_url), "eu-west-1") == ({}, labels)


def _stubbed_spot(price: str) -> tuple[Any, Stubber]:
    """An EC2 client answering one spot price history page (moto's has 6,000 stub rows)."""
    ec2 = aws_client("ec2")
    stub = Stubber(ec2)
    now = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
    stub.add_response(
        "describe_spot_price_history",
        {"SpotPriceHistory": [_spot_entry("us-east-1a", price, now)]},
        {"StartTime": ANY, "ProductDescriptions": ANY},
    )
    return ec2, stub


def test_live_source_joins_the_three_sources(
    ec2: Any, advisor_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    items = [_price_list_item("t3.large", "0.0832", "Intel AVX; Intel AVX2; Intel AVX512")]
    pricing, stub = _stubbed_pricing(items)
    spot_ec2, spot_stub = _stubbed_spot("0.0264")
    with stub, spot_stub:
        live = LivePriceSource(pricing, spot_ec2, lambda: fetch_advisor(advisor_url))
        data = live.prices(REGION)
    assert data.complete and data.on_demand == {"t3.large": 0.0832}
    assert data.spot == {"t3.large": 0.0264} and data.interruption["t3.large"] == 10
    assert data.cpu_features == {"t3.large": ("avx", "avx2", "avx512")}

    def broken_advisor() -> dict[str, Any]:
        raise OSError("network unreachable")

    pricing, stub = _stubbed_pricing(items)
    spot_ec2, spot_stub = _stubbed_spot("0.0264")
    cache = DiskCache(tmp_path / "cache", ttl_seconds=3600)
    with stub, spot_stub, caplog.at_level(logging.WARNING):
        source = CachedPriceSource(LivePriceSource(pricing, spot_ec2, broken_advisor), cache)
        degraded = source.prices(REGION)
    assert not degraded.complete and degraded.interruption == {}
    assert "no Spot Instance Advisor data" in caplog.text
    assert not list((tmp_path / "cache").glob("*.json"))  # incomplete data is not cached
    # without an Advisor bucket a type is spot only where any rate is accepted
    (offer,) = price_offers([_by_name_offer(ec2, "t3.large")], degraded)
    assert choose_instance_types([offer], Resources(2, 8, max_eviction_rate=99))[0].market == (
        "on-demand"
    )
    assert choose_instance_types([offer], Resources(2, 8, max_eviction_rate=100))[0].market == (
        "spot"
    )


def _by_name_offer(ec2: Any, name: str) -> Ec2Offer:
    return fetch_instance_types(ec2, [name])[0]
