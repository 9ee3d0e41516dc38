"""Dask on EC2 from a client outside the VPC (the EC2 twin): only port 22 is open to the
client, which reaches the scheduler and its dashboard through the SSH connection meadowrun
holds; workers reach the scheduler inside the network. TLS stays on."""

from __future__ import annotations

import pytest
from distributed import Client

import meadowrun_core as mr
from meadowrun_dask import MeadowCluster
from tests.aws_twin import DEPLOYMENT, AwsTwinCloud
from tests.twin_dask_checks import check_cluster_through_ssh, check_eviction_moves_data


@pytest.mark.client_lease(15)  # Prefect, Airflow or Dask share the process: see the mark
def test_dask_on_ec2_through_the_ssh_connection(aws: AwsTwinCloud) -> None:
    with (
        MeadowCluster(
            host=aws.host(),
            n_workers=2,
            worker_resources=mr.Resources(1, 1, max_eviction_rate=100),
            deployment=DEPLOYMENT,
        ) as cluster,
        Client(cluster) as client,  # type: ignore[no-untyped-call]
    ):
        check_cluster_through_ssh(cluster, client, aws.twin.network.subnet)
        ip_to_instance = {h.ip: i for i, h in aws.twin.hosts().items()}
        check_eviction_moves_data(
            cluster, client, lambda ip: aws.twin.interrupt(ip_to_instance[ip], 20)
        )
