"""Choosing EC2 instance types: type data from moto's server over HTTP, prices from the real
rows in tests/fixtures/aws, launches on moto with injected capacity errors, and the custom
resources an Ec2Provider's hosts offer. Where the prices come from is
tests/test_aws_price_sources.py and tests/test_aws_price_cache.py; fleets,
tests/test_aws_fleet.py; the instance-types command, tests/test_aws_instance_types_cli.py.

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
from pathlib import Path

import pytest

from meadowrun_core.aws.ec2_provider import Ec2Provider
from meadowrun_core.aws.instance_selection import (
    Choice,
    choose_instance_types,
    workers_per_instance,
)
from meadowrun_core.aws.instance_types import Ec2Offer
from meadowrun_core.config import Settings
from meadowrun_core.exceptions import BadInputError, ResourcesNotAvailableError
from meadowrun_core.hosts import AllocEC2Instance
from meadowrun_core.resources import Resources
from tests.instance_selection_support import REGION

# the fixtures moto_endpoint, ec2, prices, offers: pytest finds them in this module
from tests.instance_selection_support import fixture_prices as fixture_prices
from tests.instance_selection_support import moto_ec2 as moto_ec2
from tests.instance_selection_support import moto_offers as moto_offers
from tests.instance_selection_support import moto_server_endpoint as moto_server_endpoint


def _by_name(offers: list[Ec2Offer]) -> dict[str, Ec2Offer]:
    return {o.name: o for o in offers}


def _first(offers: list[Ec2Offer], resources: Resources, workers: int = 1) -> Choice:
    return choose_instance_types(offers, resources, workers, REGION)[0]


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
