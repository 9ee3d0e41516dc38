"""Choosing EC2 instance types: type data from moto's server over HTTP, prices from the real
rows in tests/fixtures/aws, launches on moto with injected capacity errors.

Expected choices below are worked out by hand from the fixture's prices (us-east-1):
t3.large 2 vCPU / 8 GB: on-demand 0.0832, spot 0.0264, bucket 5-10%;
t3.xlarge 4 / 16: 0.1664, 0.0499, 10-15%; t3.2xlarge 8 / 32: 0.3328, 0.0998, 10-15%;
r5.large 2 / 16: 0.126, 0.0356, <5%; m5.xlarge 4 / 16: 0.192, 0.0686, >20%;
m6g.xlarge (arm64) 4 / 16: 0.154, 0.0714, 5-10%; c6a.large (AMD) 2 / 4: 0.0765, 0.034, 15-20%;
g4dn.xlarge (1 T4, 16 GB) 0.526, 0.1578, 15-20%; g4dn.12xlarge (4 T4) 3.912, 1.1736, 10-15%;
g5.xlarge (1 A10G, 24 GB) 1.006, 0.3018, >20%; p3dn.24xlarge (8 V100 32 GB) 31.212, >20%.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import http.server
import json
import logging
import os
import random
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import ANY, Stubber
from moto.server import ThreadedMotoServer

from meadowrun_core.aws.ec2_provider import Ec2Provider
from meadowrun_core.aws.fleet import plan_fleet, rank_for_fleet
from meadowrun_core.aws.instance_selection import (
    Choice,
    choose_instance_types,
    rank_key,
    workers_per_instance,
)
from meadowrun_core.aws.instance_types import (
    Ec2Offer,
    fetch_instance_types,
    known_cpu_features,
    load_offers,
    price_offers,
)
from meadowrun_core.aws.pricing import (
    CachedPriceSource,
    DiskCache,
    FixturePriceSource,
    LivePriceSource,
    PriceData,
    fetch_advisor,
    fetch_on_demand,
    fetch_spot_prices,
    parse_advisor,
    pricing_filters,
)
from meadowrun_core.config import Settings
from meadowrun_core.exceptions import BadInputError, ResourcesNotAvailableError
from meadowrun_core.hosts import AllocEC2Instance
from meadowrun_core.resources import Resources

FIXTURE = Path(__file__).parent / "fixtures" / "aws"
REPO = Path(__file__).resolve().parent.parent
REGION = "us-east-1"


def _client(service: str, endpoint: str | None = None, region: str = REGION) -> Any:
    return boto3.client(
        service,
        region_name=region,
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="module")
def ec2(moto_endpoint: str) -> Any:
    return _client("ec2", moto_endpoint)


@pytest.fixture(scope="module")
def prices() -> PriceData:
    return FixturePriceSource(FIXTURE).prices(REGION)


@pytest.fixture(scope="module")
def offers(ec2: Any, prices: PriceData) -> list[Ec2Offer]:
    """The fixture's types as moto's EC2 describes them, priced from the fixture."""
    return price_offers(fetch_instance_types(ec2, prices.on_demand), prices)


def _by_name(offers: list[Ec2Offer]) -> dict[str, Ec2Offer]:
    return {o.name: o for o in offers}


def _first(offers: list[Ec2Offer], resources: Resources, workers: int = 1) -> Choice:
    return choose_instance_types(offers, resources, workers, REGION)[0]


# --- type data and prices ----------------------------------------------------------------
def test_type_data_comes_from_ec2_and_prices_from_the_fixture(offers: list[Ec2Offer]) -> None:
    by_name = _by_name(offers)
    m5 = by_name["m5.large"]
    assert (m5.logical_cpu, m5.memory_gb, m5.arch, m5.cpu_vendor) == (2, 8, "x86_64", "intel")
    assert (m5.gpus, m5.on_demand_price, m5.spot_price) == (0, 0.096, 0.0359)
    t4 = by_name["g4dn.xlarge"]
    assert (t4.gpus, t4.gpu_memory_gb, t4.gpu_vendor, t4.gpu_name) == (1, 16, "nvidia", "T4")
    assert "nvidia" in t4.flags and "avx512" in t4.flags
    g4_12 = by_name["g4dn.12xlarge"]
    assert (g4_12.gpus, g4_12.gpu_memory_gb, g4_12.gpu_memory_per_gpu) == (4, 64, 16)
    p3dn = by_name["p3dn.24xlarge"]
    assert (p3dn.gpus, p3dn.gpu_memory_per_gpu, p3dn.gpu_name) == (8, 32, "V100")
    graviton = by_name["m6g.large"]
    assert (graviton.arch, graviton.cpu_vendor) == ("arm64", "aws")
    assert {"arm64", "graviton"} <= graviton.flags and "avx512" not in graviton.flags
    amd = by_name["c6a.large"]
    assert "amd" in amd.flags and "avx2" in amd.flags and "avx512" not in amd.flags
    assert "avx512" in by_name["t3.large"].flags
    assert by_name["t3.large"].interruption_bucket == 10  # Advisor "5-10%"
    assert by_name["c5.9xlarge"].interruption_bucket == 5  # "<5%"
    assert by_name["m5.xlarge"].interruption_bucket == 100  # ">20%"
    # priced in the fixture but not offered by (moto's) EC2 in the region: never an offer
    assert "p3.2xlarge" not in by_name
    assert len(by_name) == 29 and all(o.in_region for o in offers)


def test_cheapest_fitting_type(offers: list[Ec2Offer]) -> None:
    first = _first(offers, Resources(logical_cpu=2, memory_gb=8))
    assert (first.offer.name, first.market, first.price_per_worker) == ("t3.large", "spot", 0.0264)
    first = _first(offers, Resources(logical_cpu=4, memory_gb=16))
    assert (first.offer.name, first.market, first.price_per_hour) == ("t3.xlarge", "spot", 0.0499)

    choices = choose_instance_types(offers, Resources(logical_cpu=3, memory_gb=10), 1, REGION)
    assert all(c.offer.logical_cpu >= 3 and c.offer.memory_gb >= 10 for c in choices)
    per_worker = [c.price_per_worker for c in choices]
    assert per_worker == sorted(per_worker)
    # a spot type is offered again, later, as on-demand for fallback
    names = [(c.offer.name, c.market) for c in choices]
    assert names.index(("t3.xlarge", "spot")) < names.index(("t3.xlarge", "on-demand"))
    # not offered in the region: skipped even when cheapest
    cheap_elsewhere = Ec2Offer("x9.large", 64, 512, "x86_64", "intel", on_demand_price=0.001)
    outside = dataclasses.replace(cheap_elsewhere, name="x9.far", in_region=False)
    first = _first([*offers, outside], Resources(logical_cpu=4, memory_gb=16))
    assert first.offer.name == "t3.xlarge"
    assert _first([*offers, cheap_elsewhere], Resources(4, 16)).offer.name == "x9.large"


def test_bin_packing_several_workers_onto_a_larger_instance(offers: list[Ec2Offer]) -> None:
    two_by_eight = Resources(logical_cpu=2, memory_gb=8)
    one = _first(offers, two_by_eight, workers=1)
    assert (one.offer.name, one.workers_per_instance) == ("t3.large", 1)
    two = _first(offers, two_by_eight, workers=2)  # 0.0499 / 2 < 0.0264
    assert (two.offer.name, two.workers_per_instance, two.market) == ("t3.xlarge", 2, "spot")
    assert two.price_per_worker == pytest.approx(0.02495)
    four = _first(offers, two_by_eight, workers=4)  # 0.0998 / 4
    assert (four.offer.name, four.workers_per_instance) == ("t3.2xlarge", 4)
    # on-demand prices scale linearly: a tie per worker goes to the bigger instance
    od = _first(offers, Resources(logical_cpu=2, memory_gb=8, max_eviction_rate=0), 4)
    assert (od.offer.name, od.workers_per_instance, od.price_per_worker) == (
        "t3.2xlarge",
        4,
        0.0832,
    )
    # every bound counts: CPU, memory, GPUs
    by_name = _by_name(offers)
    assert workers_per_instance(by_name["c5.4xlarge"], Resources(1, 3), 100) == 10
    assert workers_per_instance(by_name["c5.4xlarge"], Resources(4, 1), 100) == 4
    assert workers_per_instance(by_name["g4dn.12xlarge"], Resources(1, 1, gpus=1), 100) == 4
    assert workers_per_instance(by_name["g4dn.12xlarge"], Resources(1, 1, gpus=0.5), 100) == 8


def test_max_eviction_rate_zero_means_on_demand_only(offers: list[Ec2Offer]) -> None:
    choices = choose_instance_types(
        offers, Resources(logical_cpu=2, memory_gb=8, max_eviction_rate=0), 1, REGION
    )
    assert {c.market for c in choices} == {"on-demand"}
    assert (choices[0].offer.name, choices[0].price_per_hour) == ("t3.large", 0.0832)


def test_low_max_eviction_rate_excludes_high_bucket_spot(offers: list[Ec2Offer]) -> None:
    at_5 = choose_instance_types(offers, Resources(2, 8, max_eviction_rate=5), 1, REGION)
    assert (at_5[0].offer.name, at_5[0].market, at_5[0].price_per_hour) == (
        "r5.large",
        "spot",
        0.0356,
    )
    spot = [c for c in at_5 if c.market == "spot"]
    assert spot and all((c.offer.interruption_bucket or 100) <= 5 for c in spot)
    assert ("t3.large", "on-demand") in [(c.offer.name, c.market) for c in at_5]
    at_10 = _first(offers, Resources(2, 8, max_eviction_rate=10))  # "5-10%" is within 10
    assert (at_10.offer.name, at_10.market) == ("t3.large", "spot")
    # ">20%" types are spot only when any rate is accepted
    at_80 = {(c.offer.name, c.market) for c in choose_instance_types(offers, Resources(4, 16))}
    at_100 = {
        (c.offer.name, c.market)
        for c in choose_instance_types(offers, Resources(4, 16, max_eviction_rate=100))
    }
    assert ("m5.xlarge", "spot") not in at_80 and ("m5.xlarge", "spot") in at_100


def test_gpu_and_gpu_memory_filter(offers: list[Ec2Offer]) -> None:
    choices = choose_instance_types(offers, Resources(1, 4, gpus=1), 1, REGION)
    assert all(c.offer.gpus >= 1 for c in choices)
    assert (choices[0].offer.name, choices[0].market) == ("g4dn.xlarge", "spot")
    big = _first(offers, Resources(1, 4, gpus=1, gpu_memory=20))  # T4 has 16 GB: A10G
    assert (big.offer.name, big.market, big.price_per_hour) == ("g5.xlarge", "on-demand", 1.006)
    only_v100 = choose_instance_types(offers, Resources(1, 4, gpus=1, gpu_memory=30))
    assert {c.offer.name for c in only_v100} == {"p3dn.24xlarge"}
    pair = _first(offers, Resources(1, 4, gpus=2, gpu_memory=32), workers=2)
    assert (pair.offer.name, pair.workers_per_instance) == ("g4dn.12xlarge", 2)
    nvidia = choose_instance_types(offers, Resources(1, 2, flags=("nvidia",)))
    assert nvidia and all(c.offer.gpu_vendor == "nvidia" for c in nvidia)


def test_arch_and_cpu_flags_filter(offers: list[Ec2Offer]) -> None:
    default = choose_instance_types(offers, Resources(4, 16))
    assert all(c.offer.arch == "x86_64" for c in default)  # arm64 only when asked for
    for flag in ("arm64", "aarch64", "graviton"):
        arm = choose_instance_types(offers, Resources(4, 16, flags=(flag,)))
        assert all(c.offer.arch == "arm64" for c in arm)
        assert (arm[0].offer.name, arm[0].market) == ("m6g.xlarge", "spot")
    avx512 = choose_instance_types(offers, Resources(2, 4, flags=("avx512",)))
    families = {c.offer.name.split(".")[0] for c in avx512}
    assert families <= {"t3", "m5", "c5", "r5", "g4dn", "p3dn"} and "t3" in families
    assert "c6a" in {
        c.offer.name.split(".")[0] for c in choose_instance_types(offers, Resources(2, 4))
    }
    amd = _first(offers, Resources(2, 4, flags=("amd",)))
    assert (amd.offer.name, amd.market) == ("c6a.large", "spot")
    with pytest.raises(ResourcesNotAvailableError, match=r"0 type\(s\) have flags"):
        choose_instance_types(offers, Resources(2, 4, flags=("amd", "avx512")), 1, REGION)
    with pytest.raises(BadInputError, match="unknown Resources flag 'sse9'"):
        choose_instance_types(offers, Resources(2, 4, flags=("sse9",)))


def test_impossible_resources_name_the_largest_type_before_any_launch(
    offers: list[Ec2Offer],
) -> None:
    # choosing raises before anything could launch; launching walks the ranked choices in
    # production code (client/allocation.py), tested in tests/test_aws_data_plane.py
    with pytest.raises(ResourcesNotAvailableError) as info:
        choose_instance_types(offers, Resources(logical_cpu=1000, memory_gb=4), 1, REGION)
    assert "in us-east-1 fits Resources(1000 CPU / 4 GB)" in str(info.value)
    assert "the largest is p3dn.24xlarge (96 vCPU / 768 GB, 8 x V100)" in str(info.value)
    with pytest.raises(ResourcesNotAvailableError, match=r"the most GPUs: p3dn\.24xlarge"):
        choose_instance_types(offers, Resources(1, 4, gpus=16), 1, REGION)
    with pytest.raises(ResourcesNotAvailableError, match="with 32 GB"):
        choose_instance_types(offers, Resources(1, 4, gpus=1, gpu_memory=40), 1, REGION)
    with pytest.raises(ResourcesNotAvailableError, match="no custom resources"):
        choose_instance_types(offers, Resources(1, 4, custom={"licenses": 1}), 1, REGION)


# --- live sources (no internet: moto, botocore's Stubber, a loopback HTTP server) --------
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
    ec2 = _client("ec2")
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
    pricing = _client("pricing")
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
    ec2 = _client("ec2")
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


# --- the local cache ---------------------------------------------------------------------
class _Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class _CountingSource:
    def __init__(self) -> None:
        self.calls = 0

    def prices(self, region: str) -> PriceData:
        self.calls += 1
        return PriceData(region, {"t3.large": 0.08 + self.calls}, {}, {}, {5: "<5%"})


def test_cache_honours_its_ttl_and_is_private(tmp_path: Path) -> None:
    clock = _Clock()
    cache = DiskCache(tmp_path / "cache", ttl_seconds=100, clock=clock)
    source = _CountingSource()
    cached = CachedPriceSource(source, cache)
    assert cached.prices(REGION).on_demand == {"t3.large": 1.08}
    (path,) = (tmp_path / "cache").glob("*.json")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "cache").stat().st_mode) == 0o700
    clock.now += 99
    assert cached.prices(REGION).on_demand == {"t3.large": 1.08} and source.calls == 1
    clock.now += 2  # past the TTL: fetched again
    assert cached.prices(REGION).on_demand == {"t3.large": 2.08} and source.calls == 2
    assert cached.prices(REGION).bucket_labels == {5: "<5%"}  # survives the JSON round trip
    path.write_text("{not json")
    assert cache.get(path.stem) is None


def test_cache_ttl_default_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEADOWRUN_AWS_PRICE_CACHE_TTL", raising=False)
    assert DiskCache(tmp_path).ttl_seconds == 4 * 3600
    monkeypatch.setenv("MEADOWRUN_AWS_PRICE_CACHE_TTL", "60")
    assert DiskCache(tmp_path).ttl_seconds == 60


def test_type_data_is_cached_too(ec2: Any, tmp_path: Path) -> None:
    clock = _Clock()
    cache = DiskCache(tmp_path / "cache", ttl_seconds=100, clock=clock)
    source = FixturePriceSource(FIXTURE)
    first, _ = load_offers(REGION, source, ec2=ec2, cache=cache)

    class NoEc2:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"EC2 called ({name}) although the cache is fresh")

    again, _ = load_offers(REGION, source, ec2=NoEc2(), cache=cache)
    assert again == first and len(first) == 29
    clock.now += 101
    with pytest.raises(AssertionError, match="EC2 called"):
        load_offers(REGION, source, ec2=NoEc2(), cache=cache)


# --- the command -------------------------------------------------------------------------
def _cli(moto_endpoint: str, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "MEADOWRUN_HOME": str(home),
        "MEADOWRUN_AWS_PRICE_FIXTURE": str(FIXTURE),
        "MEADOWRUN_AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }
    return subprocess.run(
        [sys.executable, "-m", "meadowrun_core.cli", "instance-types", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_prints_the_candidates(moto_endpoint: str, ec2: Any, tmp_path: Path) -> None:
    done = _cli(moto_endpoint, tmp_path / "home", "--cpu", "4", "--memory", "16")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == [
        "TYPE",
        "VCPU",
        "GB",
        "GPUS",
        "ON-DEMAND",
        "SPOT",
        "INTERRUPT",
        "MARKET",
        "WORKERS",
        "$/H/WORKER",
    ]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert lines[1].split() == [
        "t3.xlarge",
        "4",
        "16",
        "0",
        "0.1664",
        "0.0499",
        "10-15%",
        "spot",
        "1",
        "0.0499",
    ]
    assert rows["m5.xlarge"][6:8] == [">20%", "on-demand"]
    assert rows["r5.xlarge"][7] == "spot"
    assert not any(name.startswith("m6g") for name in rows)  # arm64 only when asked for
    assert "t3.large" not in rows  # too small

    done = _cli(
        moto_endpoint,
        tmp_path / "home",
        "--cpu",
        "2",
        "--memory",
        "8",
        "--workers",
        "4",
        "--max-eviction-rate",
        "0",
        "--flags",
        "avx512",
    )
    assert done.returncode == 0, done.stderr
    rows_od = [line.split() for line in done.stdout.splitlines()[1:]]
    assert rows_od[0][0] == "t3.2xlarge" and rows_od[0][8] == "4"
    assert {r[7] for r in rows_od} == {"on-demand"}
    assert not any(r[0].startswith("c6a") for r in rows_od)

    done = _cli(moto_endpoint, tmp_path / "home", "--cpu", "500", "--memory", "8")
    assert done.returncode == 1
    assert "the largest is p3dn.24xlarge" in done.stderr


# --- fleets at the optimum (issue 18) ----------------------------------------------------
# Real rows of ../shared/data/aws (us-east-1 snapshot: vCPU, GB, on-demand, lowest spot, and
# the Advisor's bucket): the r5b family, r5n.2xlarge, and accelerators of three vendors.
def _row(name: str, cpu: float, gb: float, od: float, spot: float, bucket: int) -> Ec2Offer:
    return Ec2Offer(name, cpu, gb, "x86_64", "intel", on_demand_price=od, spot_price=spot,
                    interruption_bucket=bucket,
                    cpu_features=known_cpu_features(name, "x86_64"))  # fmt: skip


SNAPSHOT_ROWS = [
    _row("r5b.large", 2, 16, 0.149, 0.0356, 100),
    _row("r5b.xlarge", 4, 32, 0.298, 0.0928, 5),
    _row("r5b.2xlarge", 8, 64, 0.596, 0.242, 10),
    _row("r5b.4xlarge", 16, 128, 1.192, 0.4976, 20),
    _row("r5b.8xlarge", 32, 256, 2.384, 0.7692, 100),
    _row("r5b.12xlarge", 48, 384, 3.576, 0.9803, 100),
    _row("r5b.16xlarge", 64, 512, 4.768, 1.1661, 10),
    _row("r5b.24xlarge", 96, 768, 7.152, 1.71, 15),
    _row("r5b.metal", 96, 768, 7.152, 1.71, 5),
    _row("r5n.2xlarge", 8, 64, 0.596, 0.1695, 5),
]
GPU_ROWS = [
    dataclasses.replace(
        _row("g4dn.xlarge", 4, 16, 0.526, 0.1578, 20),
        gpus=1, gpu_memory_gb=16, gpu_vendor="nvidia", gpu_name="T4",
    ),
    dataclasses.replace(
        _row("g4ad.xlarge", 4, 16, 0.37853, 0.1136, 5), cpu_vendor="amd",
        gpus=1, gpu_memory_gb=8, gpu_vendor="amd", gpu_name="Radeon Pro V520",
    ),
    dataclasses.replace(
        _row("dl1.24xlarge", 96, 768, 13.10904, 3.9327, 15),
        gpus=8, gpu_memory_gb=256, gpu_vendor="habana", gpu_name="Gaudi HL-205",
    ),
]  # fmt: skip


def _launches(offers: list[Ec2Offer], resources: Resources, workers: int) -> list[Choice]:
    """What the allocation loop launches: the first choice, then again for those left."""
    launched = []
    while workers > 0:
        first = rank_for_fleet(choose_instance_types(offers, resources, workers), workers)[0]
        launched.append(first)
        workers -= first.workers_per_instance
    return launched


def test_the_issues_r5b_fleet_is_optimal() -> None:
    resources = Resources(logical_cpu=8, memory_gb=64, max_eviction_rate=20)
    choices = choose_instance_types(SNAPSHOT_ROWS, resources, 16)
    # ranked per worker alone, r5b.metal (12 workers) would come first, then 4 x r5n.2xlarge
    assert choices[0].offer.name == "r5b.metal"
    fleet = plan_fleet(choices, 16)
    assert [(c.offer.name, c.market, n) for c, n in fleet.instances] == [
        ("r5b.16xlarge", "spot", 2)
    ]
    assert fleet.price_per_hour == pytest.approx(2.3322) and fleet.workers == 16
    launched = _launches(SNAPSHOT_ROWS, resources, 16)
    assert [c.offer.name for c in launched] == ["r5b.16xlarge", "r5b.16xlarge"]
    # the ranked list keeps every choice for capacity fallback, the optimum's first
    ranked = rank_for_fleet(choices, 16)
    assert sorted(map(rank_key, ranked)) == sorted(map(rank_key, choices))
    assert (ranked[0].offer.name, ranked[1].offer.name) == ("r5b.16xlarge", "r5b.metal")


def test_ec2_provider_ranks_by_fleet_within_the_room(tmp_path: Path) -> None:
    settings = Settings(10, 60, 15, 256, 2048, 1)
    provider = Ec2Provider(AllocEC2Instance(REGION), REGION, settings, tmp_path)
    provider._offers = SNAPSHOT_ROWS
    resources = Resources(logical_cpu=8, memory_gb=64, max_eviction_rate=20)
    choices = provider.choices(resources, 16, 1e9, 1e9)
    assert [(t.name, t.is_spot, n) for t, n in choices[:2]] == [
        ("r5b.16xlarge", True, 8),
        ("r5b.metal", True, 12),
    ]
    assert len(choices) == len(choose_instance_types(SNAPSHOT_ROWS, resources, 16))
    # room for 64 CPU: nothing larger is offered, and the plan is made without them
    small = provider.choices(resources, 16, 64, 1e9)
    assert small[0][0].name == "r5b.16xlarge" and all(t.logical_cpu <= 64 for t, _ in small)
    small = provider.choices(resources, 16, 63, 1e9)
    assert small[0][0].name == "r5n.2xlarge"


def _brute_force(choices: list[Choice], workers: int) -> float:
    best = float("inf")

    def walk(i: int, left: int, price: float) -> None:
        nonlocal best
        if left <= 0 or i == len(choices):
            if left <= 0:
                best = min(best, price)
            return
        held = choices[i].workers_per_instance
        for n in range(-(-left // held) + 1):
            walk(i + 1, left - n * held, price + n * choices[i].price_per_hour)

    walk(0, workers, 0.0)
    return best


def test_planner_matches_brute_force_on_small_cases() -> None:
    rng = random.Random(18)
    for case in range(60):
        offers = []
        for i in range(rng.randint(1, 5)):
            cpu = rng.choice([1, 2, 4, 8, 16, 32])
            price = round(cpu * rng.uniform(0.02, 0.06), 4)
            offers.append(
                Ec2Offer(f"x{i}.t{case}", cpu, cpu * rng.choice([2, 4, 8]), "x86_64", "intel",
                         on_demand_price=price, spot_price=round(price * rng.uniform(0.2, 0.5), 4),
                         interruption_bucket=rng.choice([5, 10, 100]))
            )  # fmt: skip
        resources = Resources(logical_cpu=rng.choice([0.5, 1, 2, 3]), memory_gb=1,
                              max_eviction_rate=rng.choice([0, 10, 20]))  # fmt: skip
        for workers in range(1, 13):
            try:
                choices = choose_instance_types(offers, resources, workers)
            except ResourcesNotAvailableError:
                break
            optimum = _brute_force(choices, workers)
            assert plan_fleet(choices, workers).price_per_hour == pytest.approx(optimum)
            launched = _launches(offers, resources, workers)
            assert sum(c.price_per_hour for c in launched) == pytest.approx(optimum)
            assert sum(c.workers_per_instance for c in launched) >= workers


def test_gpu_request_without_vendor_flag_means_nvidia() -> None:
    for resources in (
        Resources(1, 4, gpus=1),
        Resources(1, 4, gpu_memory=8),
        Resources(1, 4, gpus=1, max_eviction_rate=0),
        Resources(1, 4, gpus=1, flags=("avx512",)),
    ):
        choices = choose_instance_types(GPU_ROWS, resources, 1)
        assert {c.offer.gpu_vendor for c in choices} == {"nvidia"}, resources
    # the AMD g4ad is cheaper: chosen only when asked for by its vendor flag
    amd = choose_instance_types(GPU_ROWS, Resources(1, 4, gpus=1, flags=("amd_gpu",)), 1)
    assert {c.offer.name for c in amd} == {"g4ad.xlarge"}
    assert choose_instance_types(GPU_ROWS, Resources(1, 4, gpus=1, flags=("cuda",)))
    # CPU-only requests may still land on any type
    cpu_only = choose_instance_types(GPU_ROWS, Resources(4, 16))
    assert {c.offer.name for c in cpu_only} == {"g4dn.xlarge", "g4ad.xlarge", "dl1.24xlarge"}
    with pytest.raises(ResourcesNotAvailableError, match=r"flags=\['nvidia'\]"):
        choose_instance_types(GPU_ROWS[1:], Resources(1, 4, gpus=1), 1, REGION)


# --- custom resources (issue 16) -----------------------------------------------------------
def test_ec2_provider_offers_its_hosts_custom_resources_on_every_type(
    offers: list[Ec2Offer], tmp_path: Path
) -> None:
    """Types described by moto's EC2: every choice carries the host's custom resources (the
    table records them at launch), and they bound the workers per instance."""
    settings = Settings(10, 60, 15, 256, 2048, 1)
    host = AllocEC2Instance(REGION, custom_resources={"licenses": 2})
    provider = Ec2Provider(host, REGION, settings, tmp_path)
    provider._offers = offers
    licensed = Resources(logical_cpu=1, memory_gb=2, custom={"licenses": 1})
    provider.check_satisfiable(licensed)
    choices = provider.choices(licensed, 8, 1e9, 1e9)
    assert choices and {t.custom for t, _ in choices} == {(("licenses", 2),)}
    assert max(n for _, n in choices) == 2  # 8 workers fit the large types by CPU alone
    plain = provider.choices(Resources(logical_cpu=1, memory_gb=2), 8, 1e9, 1e9)
    assert {t.custom for t, _ in plain} == {(("licenses", 2),)}
    assert max(n for _, n in plain) == 8
    with pytest.raises(ResourcesNotAvailableError, match="'seats', which instances of"):
        provider.check_satisfiable(Resources(1, 2, custom={"seats": 1}))
    with pytest.raises(ResourcesNotAvailableError, match=r"asks for 3 of .* offers 2"):
        provider.check_satisfiable(Resources(1, 2, custom={"licenses": 3}))
    bare = Ec2Provider(AllocEC2Instance(REGION), REGION, settings, tmp_path)
    bare._offers = offers
    assert {t.custom for t, _ in bare.choices(Resources(1, 2), 1, 1e9, 1e9)} == {()}
    with pytest.raises(ResourcesNotAvailableError, match="each offers no custom resources"):
        bare.check_satisfiable(licensed)
