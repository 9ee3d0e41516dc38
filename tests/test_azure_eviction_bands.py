"""Live Spot eviction-rate bands from Azure Resource Graph (the twin's ``SpotResources``
rows, tests/fixtures/azure/spot-eviction-rates.json) through the product's own ARM client:
paging by ``$skipToken``, the TTL cache, the fallback to the built-in table when Resource
Graph refuses, and the bands deciding Spot or regular for the VMs the client launches and
for ``meadowrun instance-types --cloud azure``.

The fixture's bands differ from the built-in table where it matters here: Standard_D2as_v5,
the cheapest Spot size for small jobs, is ``5-10`` live and ``0-5`` built in."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

import meadowrun_core as mr
from meadowrun_core.azure.arm import Arm
from meadowrun_core.azure.eviction_graph import GraphBandSource, fetch_graph_rows
from meadowrun_core.cli import app
from meadowrun_core.disk_cache import DiskCache
from tests import twin_workloads as work
from tests.azure_admin_cloud import AdminCloud
from tests.azure_cloud import DEPLOYMENT, AzureTwinCloud
from tests.azure_twin import LOCATION, SUBSCRIPTION, AzureTwin, running_twin
from tests.azure_twin_http import TwinCredential

EASTUS_BANDS = 16  # rows of type skuspotevictionrate/location in eastus


@pytest.fixture
def twin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[AzureTwin]:
    with running_twin(tmp_path / "twin", graph_page_size=5) as twin:
        monkeypatch.setenv("MEADOWRUN_AZURE_ARM_URL", twin.base_url)
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(twin.certificate.cert_path))
        yield twin


def arm_of(twin: AzureTwin) -> Arm:
    return Arm(twin.credential, SUBSCRIPTION)


def source(twin: AzureTwin, cache: DiskCache) -> GraphBandSource:
    return GraphBandSource(arm_of(twin), cache, "-twin")


def test_rows_are_read_across_skip_tokens(twin: AzureTwin) -> None:
    rows = fetch_graph_rows(arm_of(twin), LOCATION)
    assert len(rows) == EASTUS_BANDS  # not the price-history row, not westus2
    assert {"skuName": "standard_d2as_v5", "evictionRate": "5-10"} in rows
    queries = twin.graph.queries
    assert len(queries) == 4  # 5 rows a page
    assert "$skipToken" not in queries[0]["options"]
    tokens = [q["options"]["$skipToken"] for q in queries[1:]]
    assert len(set(tokens)) == 3
    assert all(q["subscriptions"] == [SUBSCRIPTION] for q in queries)
    assert all(q["options"]["resultFormat"] == "objectArray" for q in queries)


def test_bands_are_cached_per_location_for_the_ttl(twin: AzureTwin, tmp_path: Path) -> None:
    now = [1000.0]
    cache = DiskCache(ttl_seconds=60, directory=tmp_path / "cache", clock=lambda: now[0])
    bands = source(twin, cache).bands(LOCATION)
    assert bands["Standard_D2as_v5"] == "5-10"  # Resource Graph's names are lower-case
    assert bands.get("Standard_NC24ads_A100_v4") == "20+"
    assert bands.get("Standard_B2s") is None  # not Spot-capable: not listed
    first = len(twin.graph.queries)
    now[0] += 59
    assert dict(source(twin, cache).bands(LOCATION)) == dict(bands)
    assert len(twin.graph.queries) == first  # from the cache
    west = source(twin, cache).bands("westus2")  # another location: its own entry
    assert west["Standard_D2s_v5"] == "5-10" and len(west) == 3
    assert len(twin.graph.queries) == first + 1
    now[0] += 2  # past the TTL for eastus
    assert dict(source(twin, cache).bands(LOCATION)) == dict(bands)
    assert len(twin.graph.queries) == 2 * first + 1


def test_a_refused_query_falls_back_to_the_built_in_table_with_one_warning(
    twin: AzureTwin, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    twin.graph.refuse = True
    cache = DiskCache(ttl_seconds=3600, directory=tmp_path / "cache")
    with caplog.at_level(logging.WARNING, logger="meadowrun_core.azure.eviction_graph"):
        bands = source(twin, cache).bands(LOCATION)
        again = source(twin, cache).bands(LOCATION)
    assert bands.get("Standard_D2as_v5") == "0-5" == again.get("Standard_D2as_v5")  # built in
    assert bands.get("Standard_NC6s_v3") == "15-20"
    assert len(twin.graph.queries) == 1  # the refusal is not asked again within the TTL
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "AuthorizationFailed" in warning.getMessage()
    assert "built-in table" in warning.getMessage()
    assert not list((tmp_path / "cache").glob("*"))  # a fallback is never cached as live


def test_an_unreachable_resource_graph_falls_back_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("MEADOWRUN_AZURE_ARM_URL", f"https://127.0.0.1:{port}")
    arm = Arm(TwinCredential(), SUBSCRIPTION)
    cache = DiskCache(ttl_seconds=3600, directory=tmp_path / "cache")
    with caplog.at_level(logging.WARNING, logger="meadowrun_core.azure.eviction_graph"):
        bands = GraphBandSource(arm, cache).bands("westus2")
        GraphBandSource(arm, cache).bands("westus2")
    assert bands.get("Standard_D2s_v5") == "0-5"  # the built-in table
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "westus2" in warning.getMessage() and "built-in table" in warning.getMessage()


def test_instance_types_shows_the_live_bands(azure_admin: AdminCloud) -> None:
    for _ in range(2):
        result = CliRunner().invoke(
            app, ["instance-types", "--cpu", "2", "--memory", "4", "--cloud", "azure"]
        )
        assert result.exit_code == 0, result.output
        rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[1:]}
        assert "5-10%" in rows["Standard_D2as_v5"]  # live; the built-in table says 0-5
        assert "0-5%" in rows["Standard_D2s_v5"]
        assert "20+%" in rows["Standard_B2s"]  # not Spot-capable: no band
    assert len(azure_admin.twin.graph.queries) == 2  # 16 rows, 8 a page; then the cache


def test_a_size_whose_live_band_exceeds_the_limit_is_not_launched_as_spot(
    azure: AzureTwinCloud,
) -> None:
    # At 5%, D2as_v5 (cheapest, live band 5-10) is out for Spot; D2s_v5 (0-5) is next.
    answer = mr.run_function(
        work.square,
        args=(3,),
        host=azure.host(),
        resources=mr.Resources(1, 1, max_eviction_rate=5),
        deployment=DEPLOYMENT,
    )
    assert answer == 9
    (vm,) = azure.vms()
    assert (vm.hardware_profile.vm_size, vm.priority) == ("Standard_D2s_v5", "Spot")
    assert azure.twin.graph.queries


def test_sizes_whose_live_bands_are_all_too_high_are_launched_regular(
    azure: AzureTwinCloud,
) -> None:
    for row in azure.twin.graph.tables["spotresources"]:
        row["properties"] = {**row["properties"], "evictionRate": "20+"}
    answer = mr.run_function(
        work.square,
        args=(4,),
        host=azure.host(),
        resources=mr.Resources(1, 1, max_eviction_rate=80),
        deployment=DEPLOYMENT,
    )
    assert answer == 16
    (vm,) = azure.vms()
    assert vm.priority in (None, "Regular")  # the built-in table would have allowed Spot
    assert vm.hardware_profile.vm_size == "Standard_B2s"  # the cheapest regular size
