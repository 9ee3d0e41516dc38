"""MeadowrunTaskRunner on the Azure twin (tests/azure_cloud.py), as
tests/test_aws_twin_prefect.py on EC2: the flow's Prefect API is on the client's loopback;
task runs on the VMs report to it through the SSH connection (``mr.expose_port``), since the
VMs' network security group admits nothing but SSH from the client."""

from __future__ import annotations

import pytest

from tests import twin_prefect_flow
from tests.azure_cloud import DEPLOYMENT, AzureTwinCloud
from tests.prefect_api import prefect_api  # noqa: F401


@pytest.mark.client_lease(15)  # Prefect, Airflow or Dask share the process: see the mark
def test_prefect_tasks_run_on_azure(azure: AzureTwinCloud, prefect_api: None) -> None:  # noqa: F811
    results = twin_prefect_flow.run_on(azure.host(), DEPLOYMENT)
    assert [value for _, value in results] == [0, 1, 4]
    vms = [vm.name for vm in azure.vms()]
    assert vms and {name for name, _ in results} <= set(vms)  # every task ran on a VM
