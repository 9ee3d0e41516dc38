"""A deferrable MeadowrunOperator whose job runs on an Azure VM (the Azure twin in the tests):
the worker submits it with the default host (``MEADOWRUN_HOST=azure``), the trigger carries
that host and finds the job on Azure again, the task resumes with the job's output."""

from __future__ import annotations

from airflow.sdk import DAG

import meadowrun_core as mr
from meadowrun_airflow import MeadowrunOperator

# The agent's own environment, installed at boot: the VM cannot reach a package index.
AGENT = mr.Deployment.preinstalled_interpreter("/opt/meadowrun/venv/bin/python")

with DAG("meadowrun_azure_deferrable", schedule=None, catchup=False) as dag:
    MeadowrunOperator(
        task_id="where",
        command="echo on-azure; sleep 2; hostname",
        resources=mr.Resources(logical_cpu=1, memory_gb=1),
        deployment=AGENT,
        deferrable=True,
    )
