"""MeadowrunOperator running a command: templated command and environment, output streamed to
the task log while the job runs, the last stdout line as the XCom (as BashOperator)."""

from __future__ import annotations

from airflow.sdk import DAG

import meadowrun_core as mr
from meadowrun_airflow import MeadowrunOperator

with DAG("meadowrun_command", schedule=None, catchup=False, params={"greet": "hola"}) as dag:
    MeadowrunOperator(
        task_id="command",
        command="echo first {{ params.greet }}; sleep 2; echo second $GREETING >&2; "
        "echo last-line-{{ ds_nodash }}",
        environment={"GREETING": "{{ params.greet }}-env"},
        resources=mr.Resources(logical_cpu=1, memory_gb=1),
    )
