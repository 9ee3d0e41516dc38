"""Dask on Azure VMs from a client outside the VNet (the Azure twin, tests/azure_cloud.py), as
tests/test_aws_twin_dask.py is on EC2: the VMs' network security group admits only SSH from
the client, so the client reaches the scheduler and its dashboard through the SSH connection
meadowrun holds; workers reach the scheduler inside the VNet. TLS stays on."""

from __future__ import annotations

import pytest
from distributed import Client

import meadowrun_core as mr
from meadowrun_dask import MeadowCluster
from tests.azure_cloud import DEPLOYMENT, AzureTwinCloud
from tests.twin_dask_checks import check_cluster_through_ssh, check_eviction_moves_data


@pytest.mark.client_lease(15)  # Prefect, Airflow or Dask share the process: see the mark
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
        check_cluster_through_ssh(cluster, client, azure.network.subnet)
        ip_to_vm = {h.ip: name for name, h in azure.hosts.hosts().items()}
        check_eviction_moves_data(cluster, client, lambda ip: azure.hosts.preempt(ip_to_vm[ip], 20))
