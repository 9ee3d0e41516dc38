"""Real Prefect for the tests: a temporary Prefect server with private, offline settings
(``private_prefect_server``; the ``prefect_api`` fixture the twin clouds' Prefect tests share,
tests/test_aws_twin_prefect.py and tests/test_azure_twin_prefect.py, one per test), so a flow's
task runs report to a server that knows nothing of the developer's Prefect; and reading task
runs, states and logs back from its API. Imported by the Prefect test modules rather than
listed in conftest's plugins, so that other test modules do not pay for importing Prefect."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterTaskRunId,
)
from prefect.client.schemas.objects import FlowRunResult, State, TaskRun, TaskRunResult
from prefect.settings import (
    PREFECT_API_URL,
    PREFECT_HOME,
    PREFECT_LOGGING_TO_API_BATCH_INTERVAL,
    PREFECT_RESULTS_LOCAL_STORAGE_PATH,
    PREFECT_SERVER_ANALYTICS_ENABLED,
    temporary_settings,
)
from prefect.testing.utilities import prefect_test_harness


@contextlib.contextmanager
def private_prefect_server(root: Path, log_batch_interval: float | None = None) -> Iterator[str]:
    """A temporary Prefect server, its state and settings under ``root``; its API URL."""
    env = {
        "PREFECT_HOME": str(root / "home"),
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(root / "results"),
        "PREFECT_SERVER_MEMO_STORE_PATH": str(root / "memo.toml"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE": "true",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    }
    updates: dict[Any, Any] = {
        PREFECT_HOME: root / "home",
        PREFECT_RESULTS_LOCAL_STORAGE_PATH: root / "results",
        PREFECT_SERVER_ANALYTICS_ENABLED: False,
    }
    if log_batch_interval is not None:
        env["PREFECT_LOGGING_TO_API_BATCH_INTERVAL"] = str(log_batch_interval)
        updates[PREFECT_LOGGING_TO_API_BATCH_INTERVAL] = log_batch_interval
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        # prefect may have been imported before these were set: set them in its context too
        with (
            temporary_settings(updates=updates),
            prefect_test_harness(server_startup_timeout=90),
        ):
            yield str(PREFECT_API_URL.value())


@pytest.fixture
def prefect_api(tmp_path: Path) -> Iterator[None]:
    with private_prefect_server(tmp_path / "prefect-server"):
        yield


# --- reading back from the Prefect API -----------------------------------------------------


def _settled(run: TaskRun) -> bool:
    return run.state is not None and (
        run.state.is_final() or (run.state.is_pending() and run.state.name == "NotReady")
    )


def task_runs(flow_state: State[Any], count: int, timeout: float = 30.0) -> list[TaskRun]:
    """The flow run's task runs, once ``count`` of them have settled in the API
    (states arrive as events, a moment after the flow returns)."""
    flow_run_id = flow_state.state_details.flow_run_id
    assert flow_run_id is not None
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                limit=200,
            )
            if len(runs) >= count and all(_settled(r) for r in runs):
                return runs
            if time.monotonic() > deadline:
                states = sorted(f"{r.name}: {r.state_name}" for r in runs)
                raise AssertionError(f"{len(runs)}/{count} task runs settled: {states}")
            time.sleep(0.2)


def by_task(runs: list[TaskRun], task_name: str) -> list[TaskRun]:
    return [r for r in runs if r.name.rsplit("-", 1)[0] == task_name]


def one(runs: list[TaskRun], task_name: str) -> TaskRun:
    (run,) = by_task(runs, task_name)
    return run


def state_names(task_run_id: UUID) -> list[str]:
    with get_client(sync_client=True) as client:
        states = client.read_task_run_states(task_run_id)
    return [s.name or "" for s in sorted(states, key=lambda s: s.timestamp)]


def logs_text(task_run_id: UUID, contains: str, timeout: float = 15.0) -> str:
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            logs = client.read_logs(LogFilter(task_run_id=LogFilterTaskRunId(any_=[task_run_id])))
            text = "\n".join(log.message for log in logs)
            if contains in text or time.monotonic() > deadline:
                return text
            time.sleep(0.2)


def upstream_ids(run: TaskRun, parameter: str) -> set[UUID]:
    """The task runs and flow runs whose results fed ``parameter`` of ``run``."""
    return {
        i.id
        for i in run.task_inputs.get(parameter, [])
        if isinstance(i, TaskRunResult | FlowRunResult)
    }
