"""Deferrable tasks on the local cloud a ``meadowrun`` connection names (its ``meadowrun_home``),
not MEADOWRUN_HOME's: the worker submits there and the trigger follows the job there."""

from __future__ import annotations

import time

from airflow.sdk import DAG

import meadowrun_core as mr
from meadowrun_airflow import MeadowrunOperator

SMALL = mr.Resources(logical_cpu=1, memory_gb=1)


def double(x: int) -> int:
    print(f"doubling {x}", flush=True)
    time.sleep(1)
    return 2 * x


with DAG("meadowrun_home", schedule=None, catchup=False) as dag:
    MeadowrunOperator(
        task_id="double",
        python_callable=double,
        op_args=[21],
        resources=SMALL,
        meadowrun_conn_id="meadowrun_elsewhere",
        deferrable=True,
    )
    MeadowrunOperator(
        task_id="command",
        command="sleep 1; echo from the other cloud",
        resources=SMALL,
        meadowrun_conn_id="meadowrun_elsewhere",
        deferrable=True,
    )
