"""MeadowrunTaskRunner against what Prefect's own runners (ThreadPoolTaskRunner, prefect-dask's
DaskTaskRunner) do: working directory, a failing flow body, run counts, a runner used before
it starts, nested submission and asset lineage. Real Prefect server, real local cloud."""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import test_prefect
from prefect import flow, task
from prefect.assets import Asset, materialize
from prefect.client.orchestration import get_client
from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter
from prefect.states import StateType
from prefect.task_runners import ThreadPoolTaskRunner
from test_prefect import (
    _kill_first_time,
    _wait_for,
    allocations,
    one,
    runner,
    state_names,
    task_runs,
)

import meadowrun_core as mr
from meadowrun_prefect import MeadowrunTaskRunner

# the Prefect server and private local cloud of test_prefect (fixtures)
prefect_server = test_prefect.prefect_server
cloud = test_prefect.cloud

# --- tasks (module level: the workers import this module from the mirrored code) ---------


@task
def writes_relative() -> dict[str, Any]:
    """Reads and writes paths relative to its working directory, as a flow's code does."""
    Path("out").mkdir(exist_ok=True)
    Path("out/result.txt").write_text("written")
    return {"cwd": os.getcwd(), "sees_code": Path("helper_module.py").exists()}


@task
def sleeps(marker: str) -> None:
    Path(marker).write_text(str(os.getpid()))
    time.sleep(300)


@task(retries=1)
def dies_once(marker: str) -> int:
    _kill_first_time(marker)
    return os.getpid()


def _agent_of_this_worker() -> int:
    return psutil.Process().parent().pid  # type: ignore[union-attr]


@task(tags=["meadowrun:logical_cpu=2"])
def child() -> dict[str, int]:
    return {"agent": _agent_of_this_worker(), "worker": os.getpid()}


@task(tags=["meadowrun:logical_cpu=2"])
def parent() -> dict[str, Any]:
    return {
        "agent": _agent_of_this_worker(),
        "worker": os.getpid(),
        "child": child.submit().result(),
    }


@task
def nests(depth: int) -> int:
    if depth == 0:
        return 0
    return 1 + nests.submit(depth - 1).result()


RAW = Asset(key="file://parity/raw")
CLEAN = Asset(key="file://parity/clean")


@materialize(RAW)
def make_raw() -> int:
    return 1


@materialize(CLEAN)
def make_clean(raw: int) -> int:
    return raw + 1


# --- tests --------------------------------------------------------------------------------


def test_tasks_run_in_the_mirror_of_the_callers_working_directory(
    cloud: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "helper_module.py").write_text("VALUE = 1\n")
    monkeypatch.chdir(project)
    monkeypatch.syspath_prepend(str(project))

    def run(task_runner: Any) -> dict[str, Any]:
        @flow(task_runner=task_runner)
        def relative_paths() -> dict[str, Any]:
            return writes_relative.submit().result()

        out: dict[str, Any] = relative_paths()
        return out

    threads = run(ThreadPoolTaskRunner(max_workers=2))
    assert threads == {"cwd": str(project), "sees_code": True}
    (project / "out" / "result.txt").unlink()

    remote = run(runner())
    assert remote["sees_code"] is True  # relative paths mean what they mean to the caller
    cwd = Path(remote["cwd"])
    assert cwd != cloud and cloud in cwd.parents  # the instance's copy, not MEADOWRUN_HOME
    assert (cwd / "out" / "result.txt").read_text() == "written"
    assert not (project / "out" / "result.txt").exists()  # a remote write stays remote


def test_a_failing_flow_body_cancels_its_running_tasks(cloud: Path, tmp_path: Path) -> None:
    marker = tmp_path / "sleeping"

    @flow(task_runner=runner())
    def failing() -> None:
        sleeps.submit(str(marker))
        _wait_for(marker.exists, 90, "the task to start on its worker")
        raise ValueError("the flow body failed")

    started = time.monotonic()
    state = failing(return_state=True)
    assert state.is_failed()
    assert time.monotonic() - started < 120  # not the task's 300 s
    worker_pid = int(marker.read_text())
    _wait_for(lambda: not psutil.pid_exists(worker_pid), 10, "the worker to stop")
    _wait_for(lambda: allocations() == [], 10, "the allocation to be freed")
    run = one(task_runs(state, 1), "sleeps")
    assert run.state_type == StateType.CANCELLED


def test_a_retry_after_a_dead_worker_counts_both_attempts(cloud: Path, tmp_path: Path) -> None:
    @flow(task_runner=runner())
    def retried() -> int:
        return dies_once.submit(str(tmp_path / "died")).result()

    state = retried(return_state=True)
    assert state.result() != int((tmp_path / "died").read_text())
    run = one(task_runs(state, 1), "dies_once")
    assert run.state_type == StateType.COMPLETED
    assert "AwaitingRetry" in state_names(run.id)
    assert run.run_count == 2  # as Prefect's engine counts: one per attempt that ran


def test_using_the_runner_before_it_starts_raises_prefects_error() -> None:
    with pytest.raises(RuntimeError, match="Task runner is not started"):
        MeadowrunTaskRunner().submit(child, {})
    with pytest.raises(RuntimeError, match="Task runner is not started"):
        ThreadPoolTaskRunner().submit(child, {})  # the wording checked against Prefect's own


def test_nested_submission_launches_instances_outside_the_parent_job(cloud: Path) -> None:
    @flow(task_runner=runner())
    def nested() -> dict[str, Any]:
        return parent.submit().result()

    out = nested()
    assert out["child"]["agent"] != out["agent"]  # the child needed an instance of its own
    ancestors = {p.pid for p in psutil.Process(out["child"]["agent"]).parents()}
    assert out["worker"] not in ancestors and out["agent"] not in ancestors


class _WaitWarnings(logging.Handler):
    """Collects the warnings that say a job waits for room (forwarded from any worker)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "wait for room" in record.getMessage():
            self.messages.append(record.getMessage())
            self.seen.set()


_wait_warnings = _WaitWarnings()


def _until_a_wait_warning() -> None:
    """(module level: a flow defined in a test pickles it by reference, not its globals)"""
    if not _wait_warnings.seen.wait(90):
        raise AssertionError("no warning said what waits")


def test_nesting_that_fills_the_local_cloud_says_what_waits(cloud: Path) -> None:
    # 4 CPUs, tasks of 1 CPU: depth 4 needs a 5th CPU, held up by its waiting parents
    @flow(task_runner=runner(cancel_timeout=10))
    def too_deep() -> None:
        nests.submit(4)
        _until_a_wait_warning()
        raise RuntimeError("stop waiting")

    logging.getLogger().addHandler(_wait_warnings)
    try:
        state = too_deep(return_state=True)
    finally:
        logging.getLogger().removeHandler(_wait_warnings)
    assert state.is_failed()
    message = _wait_warnings.messages[0]
    assert "1 job(s) of 1 CPU" in message, message  # what waits
    assert "at its limit" in message and "MEADOWRUN_LOCAL_MAX_CPU" in message  # how to raise it
    assert "submitted from inside task run" in message  # for what


def test_asset_lineage_keeps_its_upstream_edge(cloud: Path) -> None:
    def asset_events(task_runner: Any) -> list[str]:
        @flow(task_runner=task_runner)
        def assets() -> int:
            return make_clean.submit(make_raw.submit()).result()

        since = datetime.datetime.now(datetime.UTC)
        assert assets() == 2
        return _asset_events_since(since)

    threads = asset_events(ThreadPoolTaskRunner(max_workers=2))
    assert threads.count("prefect.asset.referenced") == 1  # what Prefect's own runner emits
    remote = asset_events(runner())
    assert sorted(remote) == sorted(threads)


def _asset_events_since(since: datetime.datetime, expected: int = 3) -> list[str]:
    """The names of asset events that reached the API since ``since`` (events arrive a
    moment after the flow returns), once ``expected`` arrived and no more came for 1 s."""
    query = EventFilter(
        occurred=EventOccurredFilter(since=since), event=EventNameFilter(prefix=["prefect.asset."])
    )
    deadline = time.monotonic() + 20
    names: list[str] = []
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            found = [e.event for e in client.read_events(filter=query, limit=50).events]
            if len(found) >= expected and found == names:
                break
            names = found
            time.sleep(1.0)
    return names


def test_async_twin_prepares_off_the_event_loop(cloud: Path) -> None:
    """run_function_async pickles and uploads in a thread: the caller's loop keeps running."""

    async def main() -> tuple[int, float, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.002)
                ticks += 1

        ticking = asyncio.create_task(ticker())
        await asyncio.sleep(0.01)
        ticks = 0
        started = time.perf_counter()
        handle = await mr.run_function_async(  # pickling this takes a while
            len, args=([str(i) for i in range(1_500_000)],), wait_for_result=False
        )
        preparing, prepared_s = ticks, time.perf_counter() - started
        result: int = await handle
        ticking.cancel()
        return result, prepared_s, preparing

    result, prepared_s, ticks = asyncio.run(main())
    assert result == 1_500_000
    assert prepared_s > 0.05  # long enough to tell
    assert ticks >= 5  # a blocked loop would not have ticked at all
