"""A deferrable MeadowrunOperator whose worker dies after submitting: the next run of the task
must reattach to the job instead of starting another."""

from __future__ import annotations

import os
import time
from pathlib import Path

from airflow.sdk import DAG

import meadowrun_core as mr
from meadowrun_airflow import MeadowrunOperator


def wait_for_release(marker_dir: str) -> str:
    """Counts its own starts, then waits until the test releases it."""
    markers = Path(marker_dir)
    with open(markers / "starts.txt", "a") as f:
        f.write(f"{os.getpid()}\n")
    print("job started, waiting for release", flush=True)
    deadline = time.monotonic() + 120
    while not (markers / "release").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    starts = len((markers / "starts.txt").read_text().split())
    print(f"released after {starts} start(s)", flush=True)
    return f"released after {starts} start(s)"


with DAG("meadowrun_reattach", schedule=None, catchup=False, params={"marker_dir": ""}) as dag:
    MeadowrunOperator(
        task_id="long",
        python_callable=wait_for_release,
        op_args=["{{ params.marker_dir }}"],
        resources=mr.Resources(logical_cpu=1, memory_gb=1),
        deferrable=True,
    )
