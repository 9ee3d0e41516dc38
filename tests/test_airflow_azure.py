"""A deferrable MeadowrunOperator on Azure (the Azure twin, tests/azure_cloud.py), as
tests/test_airflow_ec2.py on EC2: ``MEADOWRUN_HOST=azure`` picks the host, the trigger
carries it, so the triggerer follows the job on Azure, not in a local cloud."""

from __future__ import annotations

import pytest

from tests.airflow_runner import DagRunner, link_file
from tests.azure_cloud import AzureTwinCloud


@pytest.mark.client_lease(15)  # Prefect, Airflow or Dask share the process: see the mark
def test_deferrable_job_on_azure_is_followed_on_azure(
    azure: AzureTwinCloud,
    airflow: DagRunner,
) -> None:
    # the Airflow process started before this test's twin: it gets the twin's settings (the
    # subscription, endpoints, the token endpoint, the twin's CA) with this run's request
    env = {**azure.environment, "MEADOWRUN_HOST": "azure"}
    summary, log = airflow.run(
        "meadowrun_azure_deferrable.py", "meadowrun_azure_deferrable", env=env, timeout=300
    )
    task = summary["tasks"]["where"]
    assert "new_state=deferred" in log and "running trigger in line" in log
    assert task["state"] == "success", log[-3000:]
    (vm,) = azure.vms()
    assert task["xcom:return_value"] == vm.name  # ran on the Azure VM's host
    assert any("on-azure" in line and "MeadowrunJobTrigger" in line for line in log.splitlines()), (
        "the trigger did not follow the job's output on Azure"
    )
    # the "Meadowrun job log" link: the Azure job's output, saved by the worker when it resumed
    saved = link_file(task["xcom:_link_MeadowrunJobLogLink"]).read_text()
    assert saved == f"on-azure\n{task['xcom:return_value']}\n"
