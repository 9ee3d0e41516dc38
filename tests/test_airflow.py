"""MeadowrunOperator, @task.meadowrun and deferrable mode on real Airflow 3.

DAGs in tests/airflow_dags/ run with ``dag.test()`` against a sqlite metadata DB under a
temporary AIRFLOW_HOME, in a separate process (tests/airflow_dags/_run_dag.py --serve) shared by
the tests of this module: Airflow never touches the pytest process or the developer's setup.
Each test still gets its own local cloud (``local_cloud``); its MEADOWRUN_* settings travel
with each request.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import meadowrun_core as mr
from meadowrun_core.local.allocation_table import SqliteAllocationTable
from tests.airflow_runner import (
    RUNNER,
    TESTS,
    DagRunner,
    allocations,
    link_file,
    log_time,
)

if importlib.util.find_spec("airflow") is None:  # fail, never skip, when it is missing
    raise RuntimeError("apache-airflow is not installed: scripts/setup installs every extra")


def test_callable_result_feeds_downstream_task(local_cloud: Path, airflow: DagRunner) -> None:
    summary, log = airflow.run("meadowrun_sync.py", "meadowrun_sync", conf={"a": 5, "b": 3})
    tasks = summary["tasks"]
    assert summary["state"] == "success", log[-3000:]
    # op_args and op_kwargs are templated from the run's params; ds came from the context
    added = tasks["add"]["xcom:return_value"]
    assert added["sum"] == 8 and re.fullmatch(r"\d{4}-\d\d-\d\d", added["ds"])
    assert tasks["consume"]["xcom:return_value"] == 80
    assert "adding 5 and 3 in pid" in log  # the remote print reached the task log
    # no meadowrun_default connection: the default host (here MEADOWRUN_HOME's local cloud)
    assert "No connection 'meadowrun_default': running on the default meadowrun host" in log
    assert allocations(local_cloud) == [] and any(
        r["description"] == "run_function add"
        for r in SqliteAllocationTable(local_cloud / "state.db").job_history()
    )


def test_command_streams_output_and_returns_last_line(
    local_cloud: Path, airflow: DagRunner
) -> None:
    summary, log = airflow.run("meadowrun_command.py", "meadowrun_command", conf={"greet": "hej"})
    assert summary["state"] == "success", log[-3000:]
    xcom = summary["tasks"]["command"]["xcom:return_value"]
    assert re.fullmatch(r"last-line-\d{8}", xcom)
    assert "second hej-env" in log  # templated environment, stderr in the log too
    # streamed: the first line was logged about 2 s before the second, not all at the end
    assert log_time(log, "second hej-env") - log_time(log, "first hej") > 1.5


def test_remote_failure_fails_task_with_remote_traceback(
    local_cloud: Path, airflow: DagRunner
) -> None:
    summary, log = airflow.run("meadowrun_failure.py", "meadowrun_failure")
    tasks = summary["tasks"]
    assert tasks["raises"]["state"] == "failed"
    assert tasks["exits_3"]["state"] == "failed"
    assert tasks["exits_99"]["state"] == "skipped"  # skip_on_exit_code, as BashOperator
    assert "Remote traceback" in log
    assert 'in explode_remotely\n    raise ValueError(f"remote kaboom {value}")' in log
    assert "ValueError: remote kaboom 1234" in log
    assert "exited with code 3" in log
    # the job-log link of a failed task: the job's output up to its failure
    assert link_file(tasks["raises"]["xcom:_link_MeadowrunJobLogLink"]).read_text() == (
        "about to raise 1234\n"
    )
    assert link_file(tasks["exits_3"]["xcom:_link_MeadowrunJobLogLink"]).read_text() == (
        "about to fail\n"
    )
    assert allocations(local_cloud) == []


def test_on_kill_cancels_the_job(local_cloud: Path, airflow: DagRunner, tmp_path: Path) -> None:
    pid_file = tmp_path / "job.pid"
    summary, log = airflow.run(
        "meadowrun_kill.py", "meadowrun_kill", conf={"pid_file": str(pid_file)}
    )
    tasks = summary["tasks"]
    assert tasks["sleepy"]["state"] == "failed"
    assert "AirflowTaskTimeout" in log and "Cancelling the meadowrun job" in log
    # checked by the next task, in the same process, while its client lease still held:
    # only on_kill can have stopped the job there
    assert tasks["jobs_left"]["xcom:return_value"] == []
    job_pid = int(pid_file.read_text())
    import psutil

    assert not psutil.pid_exists(job_pid) or psutil.Process(job_pid).status() == "zombie"


def test_deferrable_mode_end_to_end(local_cloud: Path, airflow: DagRunner, tmp_path: Path) -> None:
    summary, log = airflow.run(
        "meadowrun_deferrable.py",
        "meadowrun_deferrable",
        conf={"pid_file": str(tmp_path / "overrun.pid")},
    )
    tasks = summary["tasks"]
    # deferred (the worker slot is given back), followed by the trigger, resumed
    assert "new_state=deferred" in log and "running trigger in line" in log
    assert tasks["square"]["state"] == "success", log[-3000:]
    assert tasks["square"]["xcom:return_value"] == 49
    # the job-log link of a deferred task: the job's whole output, saved when it resumed
    link = tasks["square"]["xcom:_link_MeadowrunJobLogLink"]
    saved = link_file(link).read_text()
    assert saved == "".join(f"deferred step {i}\n" for i in range(3))
    assert tasks["square"]["xcom:meadowrun_job_key"].startswith("airflow-")
    assert tasks["consume"]["xcom:return_value"] == 50
    assert any(
        "deferred step 2" in line and "MeadowrunJobTrigger" in line for line in log.splitlines()
    ), "the trigger did not relay the job's output"
    # every line once: the submitting worker logs none, the trigger replays all from the start
    for text in ("deferred step 0", "deferred step 1", "deferred step 2", "deferred-command-out"):
        assert len([line for line in log.splitlines() if f"] {text}" in line]) == 1, text
    assert tasks["command"]["state"] == "success"
    assert re.fullmatch(r"last \d{8}", tasks["command"]["xcom:return_value"])
    # past execution_timeout the deferred job is stopped and its allocation freed
    assert tasks["overrun"]["state"] == "failed"
    assert "ran past the execution_timeout" in log
    assert tasks["jobs_left"]["xcom:return_value"] == []
    # a deferred task killed the way the triggerer kills it: the job is cancelled
    assert tasks["kill_deferred"]["xcom:return_value"] == {"status": "cancelled", "allocations": []}
    # finished jobs leave no keyed record behind
    assert mr.job_status(tasks["square"]["xcom:meadowrun_job_key"]) == "unknown"


def test_deferred_task_reattaches_after_worker_restart(
    local_cloud: Path, airflow: DagRunner, airflow_env: dict[str, str], tmp_path: Path
) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    starts = markers / "starts.txt"
    args = [
        "meadowrun_reattach",
        "--logical-date",
        "2026-01-02T03:04:05+00:00",
        "--conf",
        json.dumps({"marker_dir": str(markers)}),
    ]
    dag_file = str(Path(airflow_env["AIRFLOW__CORE__DAGS_FOLDER"]) / "meadowrun_reattach.py")
    env = {**airflow_env, **{k: v for k, v in os.environ.items() if k.startswith("MEADOWRUN_")}}
    # a first worker submits the job, then dies (its whole process group, as on a restart)
    with open(tmp_path / "first-worker.log", "w") as out:
        first = subprocess.Popen(
            [sys.executable, str(RUNNER), dag_file, *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 150
            while not starts.exists():
                assert first.poll() is None, (tmp_path / "first-worker.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "the first worker never started the job"
                time.sleep(0.1)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    assert len(allocations(local_cloud)) == 1, "the detached job died with its worker"

    def release_once_reattached(line: str) -> None:
        if "Reattaching to meadowrun job" in line:
            (markers / "release").touch()

    summary, log = airflow.run(
        "meadowrun_reattach.py",
        "meadowrun_reattach",
        conf={"marker_dir": str(markers)},
        logical_date="2026-01-02T03:04:05+00:00",
        on_line=release_once_reattached,
    )
    assert "Reattaching to meadowrun job" in log, log[-3000:]
    # printed while the first worker followed the job: replayed to the new trigger
    assert any(
        "job started, waiting for release" in line and "MeadowrunJobTrigger" in line
        for line in log.splitlines()
    )
    assert summary["tasks"]["long"]["state"] == "success"
    assert summary["tasks"]["long"]["xcom:return_value"] == "released after 1 start(s)"
    assert len(starts.read_text().split()) == 1
    assert allocations(local_cloud) == []


def test_connection_selects_another_local_cloud(
    local_cloud: Path, airflow: DagRunner, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "not-this-cloud"
    connection = {
        "conn_type": "meadowrun",
        "extra": {"host": "local", "meadowrun_home": str(local_cloud)},
    }
    summary, log = airflow.run(
        "meadowrun_home.py",
        "meadowrun_home",
        env={
            "MEADOWRUN_HOME": str(elsewhere),
            "AIRFLOW_CONN_MEADOWRUN_ELSEWHERE": json.dumps(connection),
        },
    )
    tasks = summary["tasks"]
    assert summary["state"] == "success", log[-3000:]
    assert tasks["double"]["xcom:return_value"] == 42
    assert tasks["command"]["xcom:return_value"] == "from the other cloud"
    assert len([line for line in log.splitlines() if "doubling 21" in line]) == 1
    # the jobs ran in the connection's cloud, and MEADOWRUN_HOME's was never opened
    assert not (elsewhere / "state.db").exists()
    history = SqliteAllocationTable(local_cloud / "state.db").job_history()
    assert {"run_function double", "run_command bash"} <= {r["description"] for r in history}
    assert allocations(local_cloud) == []


def test_taskflow_decorator_with_mapping_and_connection(
    local_cloud: Path, airflow: DagRunner
) -> None:
    summary, log = airflow.run("meadowrun_taskflow.py", "meadowrun_taskflow", providers=True)
    providers = summary["providers"]
    assert "meadowrun" in providers["decorators"]
    assert "meadowrun" in providers["connection_types"]
    assert "meadowrun-core" in providers["providers"]
    tasks = summary["tasks"]
    assert summary["state"] == "success", log[-3000:]
    assert tasks["numbers"]["xcom:return_value"] == [1, 2, 3]
    assert [tasks[f"cube[{i}]"]["xcom:return_value"] for i in range(3)] == [1, 8, 27]
    assert tasks["total"]["xcom:return_value"] == 36
    described = tasks["describe"]
    assert described["xcom:total"] == 36 and described["xcom:run_id"] == summary["run_id"]
    assert "cubing 3" in log
    assert "Using meadowrun host AllocLocalInstance(idle_timeout=None, max_cpu=4.0" in log


def test_example_dag(local_cloud: Path, airflow: DagRunner) -> None:
    summary, log = airflow.run("meadowrun_example.py", "meadowrun_example")
    assert summary["state"] == "success", log[-3000:]
    assert summary["tasks"]["total"]["xcom:return_value"] == 30
    # the report task really deferred: the triggerer ran its trigger and relayed the output
    assert "new_state=deferred" in log and "running trigger in line" in log
    assert any(
        "sum of squares: 30" in line and "MeadowrunJobTrigger" in line for line in log.splitlines()
    )
    assert summary["tasks"]["report"]["xcom:return_value"] == "sum of squares: 30"
    assert summary["tasks"]["report"]["xcom:meadowrun_job_key"].startswith("airflow-")


def test_provider_conventions(local_cloud: Path, airflow: DagRunner, tmp_path: Path) -> None:
    """meadowrun_default when no connection is named (typed form fields in its extra),
    templated host and resources, fire and forget, the job-log link, a missing named
    connection; and the provider's form, extra link and documentation URL as Airflow reads
    them."""
    elsewhere = tmp_path / "not-this-cloud"
    # as the connection form saves it: every typed field, the unused ones empty (one under
    # the extra__meadowrun__ name of older forms)
    default_connection = {
        "conn_type": "meadowrun",
        "extra": {
            "host": "local",
            "meadowrun_home": str(local_cloud),
            "max_cpu": "3",
            "extra__meadowrun__max_memory_gb": 8,
            "idle_timeout": None,
            "region_name": "",
            "use_private_ip": None,
            "location": None,
        },
    }
    release = tmp_path / "release"
    summary, log = airflow.run(
        "meadowrun_conventions.py",
        "meadowrun_conventions",
        conf={"home": str(local_cloud), "cpu": 2, "memory_gb": 1.5, "release_file": str(release)},
        providers=True,
        env={
            "MEADOWRUN_HOME": str(elsewhere),
            "AIRFLOW_CONN_MEADOWRUN_DEFAULT": json.dumps(default_connection),
        },
    )
    tasks = summary["tasks"]
    history = {
        r["job_id"]: r for r in SqliteAllocationTable(local_cloud / "state.db").job_history()
    }
    assert not (elsewhere / "state.db").exists(), "a job ran in MEADOWRUN_HOME's cloud"

    # 1. no meadowrun_conn_id: meadowrun_default, its typed fields read
    assert tasks["default_conn"]["state"] == "success", log[-3000:]
    assert tasks["default_conn"]["xcom:return_value"] == "on the default connection"
    assert "max_cpu=3.0, max_memory_gb=8.0" in log and "from connection 'meadowrun_default'" in log
    assert tasks["default_conn"]["xcom:meadowrun_job"]["job_id"] in history
    # a missing connection named explicitly fails the task
    assert tasks["missing_conn"]["state"] == "failed"
    assert "The conn_id `meadowrun_nowhere` isn't defined" in log

    # 5. host and resources rendered from the run's params
    templated = tasks["templated"]
    assert templated["state"] == "success", log[-3000:]
    assert templated["xcom:return_value"]["tag"] == "2-cpu"
    row = history[templated["xcom:meadowrun_job"]["job_id"]]
    assert (row["cpu"], row["memory_gb"]) == (2.0, 1.5)

    # 4. the job-log link: a file URL of the job's own output
    link = templated["xcom:_link_MeadowrunJobLogLink"]
    assert link.startswith("file:///")
    saved = link_file(link).read_text()
    assert saved == "templated job 2-cpu running\n"

    # 3. fire and forget: the task ended while its job ran on; the key is its XCom
    fired = tasks["fire_and_forget"]
    assert fired["state"] == "success", log[-3000:]
    key = fired["xcom:return_value"]
    assert key.startswith("airflow-") and fired["xcom:meadowrun_job_key"] == key
    assert fired["xcom:_link_MeadowrunJobLogLink"] == ""  # nobody followed it: no saved log
    followed = tasks["follow"]["xcom:return_value"]
    assert followed["status_before"] == "running"
    assert followed["result"] == "released"
    assert "fire-and-forget job started" in followed["output"]
    assert "new_state=deferred" not in log  # deferrable=True is moot without waiting

    # 2, 6. the provider as Airflow reads it: typed form fields, the link, the docs URL
    providers = summary["providers"]
    form = providers["meadowrun_form"]
    assert form["extra__meadowrun__max_cpu"]["schema"]["type"] == ["number", "null"]
    assert form["extra__meadowrun__host"]["schema"]["enum"] == ["azure", "ec2", "local"]
    assert form["extra__meadowrun__meadowrun_home"]["schema"]["title"].startswith("MEADOWRUN_HOME")
    assert {"region_name", "max_memory_gb", "use_private_ip"} <= {
        name.removeprefix("extra__meadowrun__") for name in form
    }
    assert "extra" not in providers["meadowrun_behaviour"]["hidden_fields"]
    assert "meadowrun_airflow.links.MeadowrunJobLogLink" in providers["extra_links"]
    docs = providers["meadowrun_info"]["integrations"][0]["external-doc-url"]
    assert docs == (TESTS.parent / "docs" / "airflow.md").resolve().as_uri()
    assert allocations(local_cloud) == []
