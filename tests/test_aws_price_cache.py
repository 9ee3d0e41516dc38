"""The local cache of EC2 prices and type data (``DiskCache``, ``CachedPriceSource``): its TTL,
its private files, its default and environment setting, and type data served from it without
calling EC2. Split from the instance-selection tests: the cache is its own seam."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest

from meadowrun_core.aws.instance_types import load_offers
from meadowrun_core.aws.pricing import CachedPriceSource, DiskCache, FixturePriceSource, PriceData
from tests.instance_selection_support import FIXTURE, REGION

# the fixtures moto_endpoint, ec2: pytest finds them in this module
from tests.instance_selection_support import moto_ec2 as moto_ec2
from tests.instance_selection_support import moto_server_endpoint as moto_server_endpoint


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
