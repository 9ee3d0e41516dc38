"""Failures on the instance: a callable that raises (its remote traceback must reach the task
log) and a command that exits non-zero."""

from __future__ import annotations

from airflow.sdk import DAG

import meadowrun_core as mr
from meadowrun_airflow import MeadowrunOperator

SMALL = mr.Resources(logical_cpu=1, memory_gb=1)


def explode_remotely(value: int) -> None:
    print(f"about to raise {value}", flush=True)
    raise ValueError(f"remote kaboom {value}")


with DAG("meadowrun_failure", schedule=None, catchup=False) as dag:
    MeadowrunOperator(
        task_id="raises", python_callable=explode_remotely, op_args=[1234], resources=SMALL
    )
    MeadowrunOperator(task_id="exits_3", command="echo about to fail; exit 3", resources=SMALL)
    MeadowrunOperator(task_id="exits_99", command="exit 99", resources=SMALL)
