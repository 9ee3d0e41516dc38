"""MeadowrunTaskRunner on the EC2 twin: the flow's Prefect API is on the client's loopback;
task runs on the instance report to it through the SSH connection (``mr.expose_port``)."""

from __future__ import annotations

import pytest

from tests import twin_prefect_flow
from tests.aws_twin import DEPLOYMENT, AwsTwinCloud
from tests.prefect_api import prefect_api  # noqa: F401


@pytest.mark.client_lease(15)  # Prefect, Airflow or Dask share the process: see the mark
def test_prefect_tasks_run_on_ec2(aws: AwsTwinCloud, prefect_api: None) -> None:  # noqa: F811
    results = twin_prefect_flow.run_on(aws.host(), DEPLOYMENT)
    hosts = {f"ip-{h.ip.replace('.', '-')}" for h in aws.twin.hosts().values()}
    assert [value for _, value in results] == [0, 1, 4]
    assert {name for name, _ in results} <= hosts  # every task ran on a twin instance
