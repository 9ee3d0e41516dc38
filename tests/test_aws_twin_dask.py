"""Dask on EC2 from a client outside the VPC (the EC2 twin): only port 22 is open to the
client, which reaches the scheduler and its dashboard through the SSH connection meadowrun
holds; workers reach the scheduler inside the network. TLS stays on."""

from __future__ import annotations

import ipaddress
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import dask.array as da
from distributed import Client

import meadowrun_core as mr
from meadowrun_dask import MeadowCluster
from tests import twin_workloads as work
from tests.aws_twin import DEPLOYMENT, AwsTwinCloud


def _host_of(address: str) -> str:
    return address.split("://")[1].rsplit(":", 1)[0]


def _wait(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return value


def test_dask_on_ec2_through_the_ssh_connection(aws: AwsTwinCloud) -> None:
    network = aws.twin.network
    with (
        MeadowCluster(
            host=aws.host(),
            n_workers=2,
            worker_resources=mr.Resources(1, 1, max_eviction_rate=100),
            deployment=DEPLOYMENT,
        ) as cluster,
        Client(cluster) as client,
    ):
        client.wait_for_workers(2, timeout=240)
        # the client talks TLS to a port forwarded over SSH; workers use the VPC address
        assert cluster.scheduler_address.startswith("tls://127.0.0.1:")
        workers = client.scheduler_info()["workers"]
        for address in [cluster.scheduler.address, *workers]:
            assert ipaddress.ip_address(_host_of(address)) in network.subnet, address
        x = da.random.RandomState(0).random((600, 600), chunks=(100, 100))
        expected = float(x.sum().compute(scheduler="synchronous"))
        assert abs(float(client.compute(x.sum()).result()) - expected) < 1e-6
        with urllib.request.urlopen(cluster.dashboard_link, timeout=10) as page:
            assert page.status == 200
        # scale up and down
        cluster.scale(3)
        client.wait_for_workers(3, timeout=240)
        cluster.scale(2)
        _wait(lambda: len(client.scheduler_info()["workers"]) == 2, 60, "scale down to 2")
        # a spot notice on a worker's instance retires it; its data moves, nothing is lost
        futures = client.map(work.random_bytes, range(12), pure=False)
        before = client.gather(futures)
        scheduler_ip = _host_of(cluster.scheduler.address)
        ip_to_instance = {h.ip: i for i, h in aws.twin.hosts().items()}
        holders = [w for w, keys in client.has_what().items() if keys]
        victim = next(w for w in holders if not w.startswith(f"tls://{scheduler_ip}:"))
        victim_ip = _host_of(victim)
        aws.twin.interrupt(ip_to_instance[victim_ip], 20)
        _wait(lambda: victim not in client.scheduler_info()["workers"], 90, "the victim to retire")
        assert client.gather(futures) == before  # moved, not recomputed
