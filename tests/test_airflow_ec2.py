"""A deferrable MeadowrunOperator on EC2 (the EC2 twin): the trigger carries the job's host,
so the triggerer follows the job on EC2, not in a local cloud."""

from __future__ import annotations

import os

import pytest

from tests.airflow_runner import DagRunner, link_file
from tests.aws_twin import AwsTwinCloud


@pytest.mark.client_lease(15)  # Prefect, Airflow or Dask share the process: see the mark
def test_deferrable_job_on_ec2_is_followed_on_ec2(aws: AwsTwinCloud, airflow: DagRunner) -> None:
    aws_settings = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    env = {"MEADOWRUN_HOST": "ec2", **{k: os.environ[k] for k in aws_settings}}
    summary, log = airflow.run(
        "meadowrun_ec2_deferrable.py", "meadowrun_ec2_deferrable", env=env, timeout=300
    )
    task = summary["tasks"]["where"]
    assert "new_state=deferred" in log and "running trigger in line" in log
    assert task["state"] == "success", log[-3000:]
    (instance,) = aws.instances()
    host = aws.twin_host(instance["InstanceId"])
    assert task["xcom:return_value"] == f"ip-{host.ip.replace('.', '-')}"  # ran on EC2
    assert any("on-ec2" in line and "MeadowrunJobTrigger" in line for line in log.splitlines()), (
        "the trigger did not follow the job's output on EC2"
    )
    # the "Meadowrun job log" link: the EC2 job's output, saved by the worker when it resumed
    saved = link_file(task["xcom:_link_MeadowrunJobLogLink"]).read_text()
    assert saved == f"on-ec2\n{task['xcom:return_value']}\n"
