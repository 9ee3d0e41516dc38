"""The Amazon provider's conventions on MeadowrunOperator: the ``meadowrun_default``
connection used when no connection is named, ``host`` and ``resources`` rendered from
templates, ``wait_for_completion=False`` (fire and forget, the job key in XCom), the
"Meadowrun job log" extra link, and a missing connection named explicitly failing the task."""

from __future__ import annotations

import time
from pathlib import Path

from airflow.sdk import DAG, task

import meadowrun_core as mr
from meadowrun_airflow import MeadowrunOperator

SMALL = mr.Resources(logical_cpu=1, memory_gb=1)


def where(tag: str) -> dict[str, object]:
    import os

    print(f"templated job {tag} running", flush=True)
    return {"tag": tag, "pid": os.getpid()}


def wait_for_release(release_file: str) -> str:
    print("fire-and-forget job started", flush=True)
    deadline = time.monotonic() + 120
    while not Path(release_file).exists():
        if time.monotonic() > deadline:
            raise TimeoutError("never released")
        time.sleep(0.05)
    print("fire-and-forget job released", flush=True)
    return "released"


def follow(key: str, release_file: str) -> dict[str, object]:
    """Runs after the fire-and-forget task ended: its job is still running until released,
    then found again by its key."""
    from meadowrun_airflow.hooks import MeadowrunHook

    host = MeadowrunHook().get_host()  # the job ran on meadowrun_default's host
    status_before = mr.job_status(key, host=host)
    Path(release_file).touch()
    output: list[bytes] = []
    result = mr.attach_job(key, host=host, on_output=lambda _s, d: output.append(d)).result(
        timeout=60
    )
    mr.forget_job(key, host=host)
    return {
        "status_before": status_before,
        "result": result,
        "output": b"".join(output).decode(),
    }


with DAG(
    "meadowrun_conventions",
    schedule=None,
    catchup=False,
    params={"home": "", "cpu": 1, "memory_gb": 1, "release_file": "/nonexistent"},
) as dag:
    MeadowrunOperator(
        task_id="templated",
        python_callable=where,
        op_args=["{{ params.cpu }}-cpu"],
        host={"host": "local", "meadowrun_home": "{{ params.home }}"},
        resources={"logical_cpu": "{{ params.cpu }}", "memory_gb": "{{ params.memory_gb }}"},
        meadowrun_conn_id=None,
    )
    # no meadowrun_conn_id: meadowrun_default's host
    MeadowrunOperator(
        task_id="default_conn", command="echo on the default connection", resources=SMALL
    )
    submitted = MeadowrunOperator(
        task_id="fire_and_forget",
        python_callable=wait_for_release,
        op_args=["{{ params.release_file }}"],
        resources=SMALL,
        wait_for_completion=False,
        deferrable=True,  # ignored: nothing to wait for
    )
    task(follow, task_id="follow")(submitted.output, "{{ params.release_file }}")
    MeadowrunOperator(
        task_id="missing_conn",
        command="echo never",
        resources=SMALL,
        meadowrun_conn_id="meadowrun_nowhere",
    )
