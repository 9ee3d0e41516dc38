"""VM sizes from the Compute Resource SKUs API (azure-mgmt-compute against the Azure twin),
prices from the Retail Prices API (the twin serving real-looking rows,
tests/fixtures/azure/), and the cheapest-first fallback ladder, walked against the twin's
capacity and quota errors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError

from meadowrun_core.azure import eviction_rates
from meadowrun_core.azure.pricing import CachedPriceSource, RetailPriceSource, parse_items
from meadowrun_core.azure.vm_selection import Choice, after_failure, choose_vm_sizes
from meadowrun_core.azure.vm_sizes import VmSizeOffer, fetch_vm_sizes, load_offers
from meadowrun_core.disk_cache import DiskCache
from meadowrun_core.exceptions import BadInputError, ResourcesNotAvailableError
from meadowrun_core.resources import Resources
from tests.azure_twin import LOCATION, RESOURCE_GROUP, AzureTwin, fixture_rows, running_twin
from tests.azure_vm_requests import vm_request


@pytest.fixture
def twin(tmp_path: Path) -> Iterator[AzureTwin]:
    with running_twin(tmp_path / "twin", prices_page_size=10) as twin:
        yield twin


def offers_of(twin: AzureTwin, bands: dict[str, str] | None = None) -> list[VmSizeOffer]:
    if bands is None:
        bands = eviction_rates.default_bands(s["name"] for s in twin.arm.skus)
    source = RetailPriceSource(twin.prices_url, twin.ssl_context())
    return load_offers(LOCATION, twin.compute_client(), source, bands)


def by_name(offers: list[VmSizeOffer]) -> dict[str, VmSizeOffer]:
    return {o.name: o for o in offers}


def test_sizes_come_from_the_skus_api_with_restricted_and_other_sizes_left_out(
    twin: AzureTwin,
) -> None:
    sizes = by_name(fetch_vm_sizes(twin.compute_client(), LOCATION))
    assert twin.requests_to("/skus") >= 3  # paged by nextLink, 8 rows a page
    assert "Standard_D2s_v3" not in sizes  # NotAvailableForSubscription in eastus
    assert "Premium_LRS" not in sizes  # a disk SKU
    assert len(sizes) == 16
    arm = sizes["Standard_D2ps_v5"]
    assert (arm.arch, arm.cpu_vendor, arm.logical_cpu, arm.memory_gb) == ("arm64", "ampere", 2, 8)
    t4 = sizes["Standard_NC4as_T4_v3"]
    assert (t4.gpus, t4.gpu_name, t4.gpu_memory_gb, t4.cpu_vendor) == (1, "T4", 16, "amd")
    assert "nvidia" in t4.flags and "avx512" not in t4.flags
    assert "avx512" in sizes["Standard_D2s_v5"].flags
    assert not sizes["Standard_B2s"].spot_capable and sizes["Standard_D2s_v5"].spot_capable
    west = fetch_vm_sizes(twin.compute_client(), "westus2")
    assert sorted(o.name for o in west) == ["Standard_D2s_v5", "Standard_D4s_v5", "Standard_D8s_v5"]


def test_retail_prices_keep_linux_consumption_rows_and_the_latest_price(
    twin: AzureTwin,
) -> None:
    prices = RetailPriceSource(twin.prices_url, twin.ssl_context()).prices(LOCATION)
    assert twin.requests_to("/api/retail/prices") > 1  # followed NextPageLink
    # Not Windows (0.1402), Dev/Test (0.07), a reservation (368), Low Priority (0.0196).
    assert prices.regular["Standard_D2s_v5"] == 0.096
    assert prices.spot["Standard_D2s_v5"] == 0.0115
    assert prices.regular["Standard_F4s_v2"] == 0.169  # not the 2019 price 0.199
    assert "Standard_B2s" not in prices.spot
    west = RetailPriceSource(twin.prices_url, twin.ssl_context()).prices("westus2")
    assert west.regular["Standard_D2s_v5"] == pytest.approx(0.1056)
    # The parser alone, on the fixture: the same answer as through the API's paging.
    assert parse_items(fixture_rows("retail-prices.json"), LOCATION) == prices


def test_sizes_and_prices_are_cached_for_the_ttl(twin: AzureTwin, tmp_path: Path) -> None:
    now = [1000.0]
    cache = DiskCache(ttl_seconds=60, directory=tmp_path / "cache", clock=lambda: now[0])
    source = CachedPriceSource(RetailPriceSource(twin.prices_url, twin.ssl_context()), cache)
    first = load_offers(LOCATION, twin.compute_client(), source, {}, cache)
    skus, prices = twin.requests_to("/skus"), twin.requests_to("/api/retail")
    now[0] += 59
    assert load_offers(LOCATION, twin.compute_client(), source, {}, cache) == first
    assert (twin.requests_to("/skus"), twin.requests_to("/api/retail")) == (skus, prices)
    assert all(p.stat().st_mode & 0o077 == 0 for p in (tmp_path / "cache").iterdir())
    now[0] += 2
    assert load_offers(LOCATION, twin.compute_client(), source, {}, cache) == first
    assert twin.requests_to("/skus") > skus and twin.requests_to("/api/retail") > prices


def test_the_ladder_is_cheapest_per_worker_first_with_regular_fallbacks(
    twin: AzureTwin,
) -> None:
    choices = choose_vm_sizes(offers_of(twin), Resources(logical_cpu=2, memory_gb=4))
    names = [(c.offer.name, c.market) for c in choices]
    assert names[:3] == [
        ("Standard_D2as_v5", "spot"),
        ("Standard_D2s_v5", "spot"),
        ("Standard_F4s_v2", "spot"),
    ]
    prices = [c.price_per_worker for c in choices]
    assert prices == sorted(prices)
    assert all(c.offer.arch == "x86_64" for c in choices)  # arm64 only when asked for
    spot = {c.offer.name for c in choices if c.market == "spot"}
    regular = {c.offer.name for c in choices if c.market == "regular"}
    assert spot < regular and "Standard_B2s" in regular - spot  # B-series: no Spot
    assert choices[0].max_price == 0.086 and choices[-1].max_price is None


def test_spot_only_within_max_eviction_rate(twin: AzureTwin) -> None:
    offers = offers_of(twin)
    regular_only = choose_vm_sizes(offers, Resources(2, 4, max_eviction_rate=0))
    assert {c.market for c in regular_only} == {"regular"}
    assert regular_only[0].offer.name == "Standard_B2s"
    at_5 = choose_vm_sizes(offers, Resources(2, 4, max_eviction_rate=5))
    assert {c.offer.eviction_band for c in at_5 if c.market == "spot"} == {"0-5"}
    at_10 = choose_vm_sizes(offers, Resources(2, 4, max_eviction_rate=10))
    assert ("Standard_F4s_v2", "spot") in [(c.offer.name, c.market) for c in at_10]
    # Sizes without a known band count as 20+: Spot only when 100% is acceptable.
    unbanded = offers_of(twin, bands={})
    assert {c.market for c in choose_vm_sizes(unbanded, Resources(2, 4, max_eviction_rate=99))} == {
        "regular"
    }
    assert choose_vm_sizes(unbanded, Resources(2, 4, max_eviction_rate=100))[0].market == "spot"


def test_gpus_flags_packing_and_what_cannot_fit(twin: AzureTwin) -> None:
    offers = offers_of(twin)
    a100 = choose_vm_sizes(offers, Resources(4, 16, gpus=1, gpu_memory=40))
    assert {c.offer.name for c in a100} == {"Standard_NC24ads_A100_v4"}
    assert choose_vm_sizes(offers, Resources(1, 2, flags=("arm64",)))[0].offer.name == (
        "Standard_D2ps_v5"
    )
    assert {
        c.offer.cpu_vendor for c in choose_vm_sizes(offers, Resources(1, 2, flags=("amd",)))
    } == {"amd"}
    packed = choose_vm_sizes(offers, Resources(2, 8, max_eviction_rate=0), workers=8)
    d16 = next(c for c in packed if c.offer.name == "Standard_D16s_v5")
    assert d16.workers_per_instance == 8
    assert next(c for c in packed if c.offer.name == "Standard_D2s_v5").workers_per_instance == 1
    with pytest.raises(BadInputError, match="unknown Resources flag"):
        choose_vm_sizes(offers, Resources(1, 2, flags=("tpu",)))
    with pytest.raises(ResourcesNotAvailableError, match="the largest is Standard_D64s_v5"):
        choose_vm_sizes(offers, Resources(logical_cpu=128, memory_gb=8))


def vm_body(choice: Choice) -> dict[str, Any]:
    """A minimal create request for a choice (the provider's own comes later)."""
    body = vm_request(choice.offer.name, "meadowrun", {"meadowrun": "true"})
    if choice.market == "spot":
        body["properties"].update(
            priority="Spot", evictionPolicy="Delete", billingProfile={"maxPrice": choice.max_price}
        )
    return body


def create_first(twin: AzureTwin, choices: list[Choice], name: str) -> tuple[Choice, list[str]]:
    """Walk the ladder as the provider will: the choice created, and the codes met."""
    compute, codes, ladder = twin.compute_client(), [], list(choices)
    while ladder:
        choice = ladder[0]
        try:
            compute.virtual_machines.begin_create_or_update(
                RESOURCE_GROUP, name, vm_body(choice)
            ).result()
            return choice, codes
        except HttpResponseError as exc:
            code = exc.error.code if exc.error else ""
            codes.append(code)
            # A VM whose allocation failed is left behind in Failed: delete it first.
            compute.virtual_machines.begin_delete(RESOURCE_GROUP, name).result()
            rest = after_failure(ladder, choice, code, exc.message)
            if rest is None:
                raise
            ladder = rest
    raise AssertionError("the ladder ran out")


def test_capacity_errors_move_down_the_ladder(twin: AzureTwin) -> None:
    choices = choose_vm_sizes(offers_of(twin), Resources(2, 4))
    twin.arm.fail_next("SkuNotAvailable", size="Standard_D2as_v5", priority="Spot")
    twin.arm.fail_next("AllocationFailed", size="Standard_D2s_v5", priority="Spot")
    chosen, codes = create_first(twin, choices, "vm-a")
    assert codes == ["SkuNotAvailable", "AllocationFailed"]
    assert (chosen.offer.name, chosen.market) == ("Standard_F4s_v2", "spot")
    [vm] = twin.arm.vms()
    assert (vm.size, vm.priority, vm.state) == ("Standard_F4s_v2", "Spot", "Succeeded")
    resource = vm.resource["properties"]
    assert resource["evictionPolicy"] == "Delete"
    assert resource["billingProfile"]["maxPrice"] == 0.169


def test_quota_errors_skip_what_the_same_quota_counts(twin: AzureTwin) -> None:
    choices = choose_vm_sizes(offers_of(twin), Resources(2, 4))
    twin.arm.set_quota("lowPriority", 0)  # no Spot cores at all
    twin.arm.set_quota("standardBSFamily", 0)
    chosen, codes = create_first(twin, choices, "vm-q")
    # One Spot quota error skips every Spot choice; one B-family error the B sizes.
    assert codes == ["OperationNotAllowed", "OperationNotAllowed"]
    assert (chosen.offer.name, chosen.market) == ("Standard_D2as_v5", "regular")


def test_other_errors_are_not_fallen_back_on(twin: AzureTwin) -> None:
    choices = choose_vm_sizes(offers_of(twin), Resources(2, 4))
    twin.arm.fail_next("InvalidParameter")
    with pytest.raises(HttpResponseError, match="InvalidParameter"):
        create_first(twin, choices, "vm-x")
    assert twin.arm.vms() == []
    not_quota = "Operation 'start' is not allowed on VM 'x' since the VM is deallocated."
    assert after_failure(choices, choices[0], "OperationNotAllowed", not_quota) is None


def test_eviction_bands_from_resource_graph_rows() -> None:
    rows = [
        {"skuName": "Standard_D2s_v5", "evictionRate": "0-5"},
        {"skuName": "Standard_NC6s_v3", "evictionRate": "20+"},
        {"skuName": "Standard_X", "evictionRate": "sometimes"},
    ]
    bands = eviction_rates.parse_graph_rows(rows)
    assert bands == {"Standard_D2s_v5": "0-5", "Standard_NC6s_v3": "20+"}
    assert [eviction_rates.band_upper(b) for b in ("0-5", "15-20", "20+", None)] == [
        5,
        20,
        100,
        100,
    ]
