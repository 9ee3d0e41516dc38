"""Dask on Azure VMs from a client outside the VNet (the Azure twin, tests/azure_cloud.py), as
tests/test_aws_twin_dask.py is on EC2: the VMs' network security group admits only SSH from
the client, so the client reaches the scheduler and its dashboard through the SSH connection
meadowrun holds; workers reach the scheduler inside the VNet. TLS stays on."""

from __future__ import annotations

import ipaddress
import urllib.request

import dask.array as da
from distributed import Client

import meadowrun_core as mr
from meadowrun_dask import MeadowCluster
from tests import twin_workloads as work
from tests.azure_cloud import DEPLOYMENT, AzureTwinCloud
from tests.waiting import wait_until


def _host_of(address: str) -> str:
    return address.split("://")[1].rsplit(":", 1)[0]


def test_dask_on_azure_through_the_ssh_connection(azure: AzureTwinCloud) -> None:
    with (
        MeadowCluster(
            host=azure.host(),
            n_workers=2,
            worker_resources=mr.Resources(1, 1, max_eviction_rate=100),
            deployment=DEPLOYMENT,
        ) as cluster,
        Client(cluster) as client,  # type: ignore[no-untyped-call]
    ):
        client.wait_for_workers(2, timeout=240)
        # the client talks TLS to a port forwarded over SSH; workers use the VNet address
        assert cluster.scheduler_address.startswith("tls://127.0.0.1:")
        workers = client.scheduler_info()["workers"]
        for address in [cluster.scheduler.address, *workers]:
            assert address.startswith("tls://"), address
            assert ipaddress.ip_address(_host_of(address)) in azure.network.subnet, address
        x = da.random.RandomState(0).random((600, 600), chunks=(100, 100))  # type: ignore[no-untyped-call]
        expected = float(x.sum().compute(scheduler="synchronous"))
        assert abs(float(client.compute(x.sum()).result()) - expected) < 1e-6
        with urllib.request.urlopen(cluster.dashboard_link, timeout=10) as page:
            assert page.status == 200
        # scale up and down
        cluster.scale(3)
        client.wait_for_workers(3, timeout=240)
        cluster.scale(2)
        wait_until(lambda: len(client.scheduler_info()["workers"]) == 2, 60, "scale down to 2")
        # a Spot eviction notice on a worker's VM retires it; its data moves, nothing is lost
        futures = client.map(work.random_bytes, range(12), pure=False)
        before = client.gather(futures)
        scheduler_ip = _host_of(cluster.scheduler.address)
        ip_to_vm = {h.ip: name for name, h in azure.hosts.hosts().items()}
        holders = [w for w, keys in client.has_what().items() if keys]
        victim = next(w for w in holders if not w.startswith(f"tls://{scheduler_ip}:"))
        azure.hosts.preempt(ip_to_vm[_host_of(victim)], 20)
        wait_until(
            lambda: victim not in client.scheduler_info()["workers"], 90, "the victim to retire"
        )
        assert client.gather(futures) == before  # moved, not recomputed
