"""MeadowrunTaskRunner with real Prefect: flows run against a temporary Prefect server, tasks
run on a private local cloud, and every test reads the final state of every task run back
from the Prefect API."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import psutil
import pytest
from prefect import flow, get_run_logger, task
from prefect.cache_policies import INPUTS
from prefect.client.orchestration import get_client
from prefect.states import StateType
from prefect.utilities.annotations import allow_failure, unmapped

import meadowrun_core as mr
from meadowrun_core.client.runtime import ClientRuntime
from meadowrun_core.hosts import AllocLocalInstance
from meadowrun_prefect import MeadowrunTaskRunner, meadowrun_options
from tests.prefect_api import (
    by_task,
    logs_text,
    one,
    private_prefect_server,
    state_names,
    task_runs,
    upstream_ids,
)

SMALL = mr.Resources(logical_cpu=1, memory_gb=1)


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A temporary Prefect server for the module, logs sent to it every 0.3 s."""
    root = tmp_path_factory.mktemp("prefect")
    with private_prefect_server(root, log_batch_interval=0.3) as api_url:
        yield api_url


@pytest.fixture
def cloud(prefect_server: str, local_cloud: Path) -> Path:
    return local_cloud


def runner(**kwargs: Any) -> MeadowrunTaskRunner:
    return MeadowrunTaskRunner(resources=SMALL, **kwargs)


def allocations() -> list[Any]:
    return ClientRuntime.get().backend(AllocLocalInstance()).table.list_allocations()


# --- tasks (module level: the workers import this module from the mirrored code) ---------


@task
def load(n: int) -> list[int]:
    return list(range(n))


@task
def square_all(values: list[int]) -> list[int]:
    return [v * v for v in values]


@task
def combine(values: list[int], squares: list[int], offset: int = 0) -> int:
    return sum(values) + sum(squares) + offset


@task
def explode(x: int) -> int:
    raise ValueError(f"boom {x}")


@task
def describe(value: Any) -> str:
    return f"got {type(value).__name__}"


@task(cache_policy=INPUTS, persist_result=True)
def cached_pid(key: str) -> int:
    return os.getpid()


@task
def add(x: int, y: int) -> int:
    return x + y


@task(retries=2)
def flaky(marker: str) -> str:
    path = Path(marker)
    attempts = int(path.read_text()) if path.exists() else 0
    path.write_text(str(attempts + 1))
    if attempts == 0:
        raise RuntimeError("first attempt fails")
    return f"succeeded on attempt {attempts + 1}"


def _kill_first_time(marker: str) -> None:
    path = Path(marker)
    if not path.exists():
        path.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)


@task(retries=1)
def killed_once(marker: str) -> int:
    _kill_first_time(marker)
    return os.getpid()


@task
def instance_killed(marker: str) -> int:
    """Kills the instance's agent (the worker's parent), as if the machine went away."""
    os.kill(os.getppid(), signal.SIGKILL)
    time.sleep(60)
    return 0


@task
async def async_double(x: int) -> int:
    await asyncio.sleep(0.01)
    return 2 * x


@task
def my_allocation(_: int = 0) -> dict[str, Any]:
    """What the local cloud allocated to the job running this task, read from its table."""
    import meadowrun_core as mr_remote
    from meadowrun_core.client.runtime import ClientRuntime as Runtime

    table = Runtime.get().backend(mr_remote.AllocLocalInstance()).table
    (mine,) = [a for a in table.list_allocations() if a.worker_pid == os.getpid()]
    return {"cpu": mine.cpu, "memory_gb": mine.memory_gb, "env": os.environ.get("STAGE")}


# --- tests --------------------------------------------------------------------------------


def test_dependent_tasks_upstream_failures_and_caching(cloud: Path) -> None:
    @flow(task_runner=runner())
    def pipeline() -> dict[str, Any]:
        values = load.submit(4)
        squares = square_all.submit(values)
        total = combine.submit(values, squares, offset=100, wait_for=[values])
        failed = explode.submit(1)
        tolerant = describe.submit(allow_failure(failed))
        blocked = describe.submit(failed)
        first = cached_pid.submit("k")
        second = cached_pid.submit("k", wait_for=[first])
        blocked.wait()
        return {
            "total": total.result(),
            "tolerant": tolerant.result(),
            "first": first.result(),
            "second": second.result(),
            "failed": failed.state.type,
            "blocked": blocked.state.name,
        }

    state = pipeline(return_state=True)
    out = state.result()
    assert out["total"] == 100 + (0 + 1 + 2 + 3) + (0 + 1 + 4 + 9)
    assert out["tolerant"] == "got ValueError"
    assert out["failed"] == StateType.FAILED and out["blocked"] == "NotReady"
    assert out["second"] == out["first"] and out["first"] != os.getpid()

    runs = task_runs(state, 8)
    assert len(runs) == 8
    for name in ("load", "square_all", "combine"):
        assert one(runs, name).state_type == StateType.COMPLETED, name
    assert one(runs, "explode").state_type == StateType.FAILED
    described = {r.state_name for r in by_task(runs, "describe")}
    assert described == {"Completed", "NotReady"}
    cached = sorted(r.state_name or "" for r in by_task(runs, "cached_pid"))
    assert cached == ["Cached", "Completed"]
    # the dependency graph Prefect shows: inputs point at the upstream task runs
    load_id, squares_id = one(runs, "load").id, one(runs, "square_all").id
    assert upstream_ids(one(runs, "square_all"), "values") == {load_id}
    assert upstream_ids(one(runs, "combine"), "squares") == {squares_id}
    assert upstream_ids(one(runs, "combine"), "wait_for") == {load_id}
    # the failure's traceback from the worker is in the task run's logs in Prefect
    text = logs_text(one(runs, "explode").id, "ValueError: boom 1")
    assert "Traceback" in text and "ValueError: boom 1" in text and "in explode" in text


def test_map_over_100_inputs(cloud: Path) -> None:
    @flow(task_runner=runner())
    def mapped() -> list[int]:
        return add.map(range(100), unmapped(1000)).result()

    state = mapped(return_state=True)
    assert state.result() == [1000 + i for i in range(100)]
    runs = task_runs(state, 100)
    assert len(runs) == 100
    assert {r.state_type for r in runs} == {StateType.COMPLETED}


def test_task_that_fails_then_succeeds_on_retry(cloud: Path, tmp_path: Path) -> None:
    @flow(task_runner=runner())
    def retrying(marker: str) -> str:
        return flaky.submit(marker).result()

    state = retrying(str(tmp_path / "attempts"), return_state=True)
    assert state.result() == "succeeded on attempt 2"
    run = one(task_runs(state, 1), "flaky")
    assert run.state_type == StateType.COMPLETED
    assert run.run_count == 2
    assert "Retrying" in state_names(run.id)


def test_worker_sigkilled_and_instance_lost(cloud: Path, tmp_path: Path) -> None:
    """A dead worker or instance is reported (never left Running), and Prefect's retries
    rerun the task on a fresh worker."""

    @flow(task_runner=runner())
    def killing(marker: str, never: str) -> dict[str, Any]:
        survivor = killed_once.submit(marker)
        victim = instance_killed.submit(never)
        victim.wait()
        return {"survivor": survivor.result(), "victim": victim.state.type}

    marker = tmp_path / "killed"
    state = killing(str(marker), str(tmp_path / "never"), return_state=True)
    out = state.result()
    first_pid = int(marker.read_text())
    assert out["survivor"] != first_pid  # the retry ran in a fresh worker
    assert not psutil.pid_exists(first_pid)
    assert out["victim"] == StateType.CRASHED

    runs = task_runs(state, 2)
    survivor, victim = one(runs, "killed_once"), one(runs, "instance_killed")
    assert survivor.state_type == StateType.COMPLETED
    assert "AwaitingRetry" in state_names(survivor.id)
    assert victim.state_type == StateType.CRASHED
    assert victim.state is not None and "instance died" in (victim.state.message or "")
    assert "Crash detected" in logs_text(victim.id, "Crash detected")
    # (the dead instance's allocation is the local cloud's to reap, once it stops heartbeating)


def test_async_task_in_async_flow(cloud: Path) -> None:
    @flow(task_runner=runner())
    async def async_flow() -> list[int]:
        futures = async_double.map(range(3))
        single = async_double.submit(10)
        return [f.result() for f in futures] + [single.result()]

    state = asyncio.run(async_flow(return_state=True))
    assert state.result() == [0, 2, 4, 20]
    runs = task_runs(state, 4)
    assert {r.state_type for r in runs} == {StateType.COMPLETED}


def test_per_task_resources_and_deployment(cloud: Path) -> None:
    staged = mr.Deployment.mirror_local(environment_variables={"STAGE": "gpu-stage"})
    big = my_allocation.with_options(tags=["meadowrun:logical_cpu=2", "meadowrun:memory_gb=3"])
    impossible = my_allocation.with_options(tags=["meadowrun:logical_cpu=64"])

    @flow(task_runner=runner())
    def sized() -> dict[str, Any]:
        default = my_allocation.submit(0)
        tagged = big.submit(1)
        with meadowrun_options(
            resources=mr.Resources(logical_cpu=0.5, memory_gb=1.5), deployment=staged
        ):
            scoped = my_allocation.submit(2)
        never = impossible.submit(3)
        never.wait()
        return {
            "default": default.result(),
            "tagged": tagged.result(),
            "scoped": scoped.result(),
            "never": never.state.type,
        }

    state = sized(return_state=True)
    out = state.result()
    assert out["default"] == {"cpu": 1, "memory_gb": 1, "env": None}
    assert out["tagged"] == {"cpu": 2, "memory_gb": 3, "env": None}
    assert out["scoped"] == {"cpu": 0.5, "memory_gb": 1.5, "env": "gpu-stage"}
    assert out["never"] == StateType.FAILED
    runs = task_runs(state, 4)
    states = sorted(r.state_type.value for r in runs if r.state_type)
    assert states == ["COMPLETED", "COMPLETED", "COMPLETED", "FAILED"]
    failed = next(r for r in runs if r.state_type == StateType.FAILED)
    assert failed.state is not None and "can ever fit" in (failed.state.message or "")


CANCEL_SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    import meadowrun_core as mr
    from prefect import flow, task
    from prefect.runtime import flow_run
    from meadowrun_prefect import MeadowrunTaskRunner

    @task
    def sleeper(marker: str) -> None:
        Path(marker).write_text(str(os.getpid()))
        time.sleep(300)

    @flow(task_runner=MeadowrunTaskRunner(resources=mr.Resources(logical_cpu=1, memory_gb=1)))
    def long_flow(marker: str) -> None:
        Path(marker + ".flow").write_text(str(flow_run.id))
        sleeper.submit(marker).result()

    long_flow(sys.argv[1])
    """
)


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_cancelling_the_flow_cancels_its_jobs(
    cloud: Path, prefect_server: str, tmp_path: Path
) -> None:
    """SIGTERM is how Prefect cancels a flow run's process: the jobs stop, their allocations
    are freed and the task run ends Cancelled in the API."""
    script = tmp_path / "long_flow.py"
    script.write_text(CANCEL_SCRIPT)
    marker = tmp_path / "sleeper"
    env = {**os.environ, "PREFECT_API_URL": prefect_server}
    proc = subprocess.Popen([sys.executable, str(script), str(marker)], env=env)
    try:
        _wait_for(marker.exists, 90, "the task to start on its worker")
        worker_pid = int(marker.read_text())
        assert len(allocations()) == 1
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    _wait_for(lambda: allocations() == [], 10, "the allocation to be freed")
    _wait_for(lambda: not psutil.pid_exists(worker_pid), 10, "the worker to stop")

    # Prefect re-raises a raw SIGTERM at once (its runner sends an intent first to get a
    # Cancelled flow run), so the flow run itself stays as it was; the task run does not.
    flow_run_id = UUID(Path(str(marker) + ".flow").read_text())
    with get_client(sync_client=True) as client:
        flow_state = client.read_flow_run(flow_run_id).state
    assert flow_state is not None
    run = one(task_runs(flow_state, 1), "sleeper")
    assert run.state_type == StateType.CANCELLED


@task
def logs_a_line(x: int) -> int:
    get_run_logger().info("working on %d", x)
    return x


def test_task_logs_reach_the_client_at_their_own_level(
    cloud: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)

    @flow(task_runner=runner())
    def logged() -> int:
        return logs_a_line.submit(7).result()

    assert logged() == 7
    remote = [r for r in caplog.records if r.name.startswith("meadowrun_core.job.prefect")]
    working = [r for r in remote if "working on 7" in r.getMessage()]
    assert [r.levelno for r in working] == [logging.INFO]
    assert any("Finished in state Completed" in r.getMessage() for r in remote)
    # no copy as stderr text re-logged at WARNING
    assert not [
        r for r in caplog.records if r.name == "meadowrun_core.job" and r.levelno >= logging.WARNING
    ]
