"""Fleets at the optimum (issue 18): planning several instances for many workers on real rows
of a us-east-1 snapshot (the r5b family and accelerators of three vendors), the Ec2Provider's
ranking within the room left, a brute-force check on small random cases, and GPU requests
without a vendor flag meaning NVIDIA. No moto: the rows are given."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest

from meadowrun_core.aws.ec2_provider import Ec2Provider
from meadowrun_core.aws.fleet import plan_fleet, rank_for_fleet
from meadowrun_core.aws.instance_selection import Choice, choose_instance_types, rank_key
from meadowrun_core.aws.instance_types import Ec2Offer, known_cpu_features
from meadowrun_core.config import Settings
from meadowrun_core.exceptions import ResourcesNotAvailableError
from meadowrun_core.hosts import AllocEC2Instance
from meadowrun_core.resources import Resources
from tests.instance_selection_support import REGION


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
