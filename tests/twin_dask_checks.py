"""What the Dask-on-a-cloud tests check once a ``MeadowCluster`` is up on a twin (EC2:
tests/test_aws_twin_dask.py, Azure: tests/test_azure_twin_dask.py): the client reaches the
scheduler and its dashboard through the SSH connection over TLS while the workers use the
private network, work computes, the cluster scales, and a Spot notice on a worker's instance
retires it with its data moved, not recomputed."""

from __future__ import annotations

import ipaddress
import urllib.request
from collections.abc import Callable
from typing import Any

import dask.array as da

from tests import twin_workloads as work
from tests.dask_workers import scheduler_workers
from tests.waiting import wait_until


def host_of(address: str) -> str:
    return address.split("://")[1].rsplit(":", 1)[0]


def check_cluster_through_ssh(cluster: Any, client: Any, subnet: Any) -> None:
    """TLS to a port forwarded over SSH for the client, private addresses for the workers; a
    computation, the dashboard, scaling up and down."""
    client.wait_for_workers(2, timeout=240)
    assert cluster.scheduler_address.startswith("tls://127.0.0.1:")
    workers = scheduler_workers(client)
    for address in [cluster.scheduler.address, *workers]:
        assert address.startswith("tls://"), address
        assert ipaddress.ip_address(host_of(address)) in subnet, address
    x = da.random.RandomState(0).random((600, 600), chunks=(100, 100))  # type: ignore[no-untyped-call]
    expected = float(x.sum().compute(scheduler="synchronous"))
    assert abs(float(client.compute(x.sum()).result()) - expected) < 1e-6
    with urllib.request.urlopen(cluster.dashboard_link, timeout=10) as page:
        assert page.status == 200
    cluster.scale(3)
    client.wait_for_workers(3, timeout=240)
    cluster.scale(2)
    wait_until(lambda: len(scheduler_workers(client)) == 2, 60, "scale down to 2")


def check_eviction_moves_data(cluster: Any, client: Any, evict: Callable[[str], object]) -> None:
    """``evict(ip)`` sends a Spot notice to the instance at ``ip``: the worker there (not the
    scheduler's) retires and its results move to another worker."""
    futures = client.map(work.random_bytes, range(12), pure=False)
    before = client.gather(futures)
    scheduler_ip = host_of(cluster.scheduler.address)
    holders = [w for w, keys in client.has_what().items() if keys]
    victim = next(w for w in holders if not w.startswith(f"tls://{scheduler_ip}:"))
    evict(host_of(victim))
    wait_until(lambda: victim not in scheduler_workers(client), 90, "the victim to retire")
    assert client.gather(futures) == before  # moved, not recomputed
