"""MeadowrunTaskRunner on the EC2 twin: the flow's Prefect API is on the client's loopback;
task runs on the instance report to it through the SSH connection (``mr.expose_port``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.settings import (
    PREFECT_HOME,
    PREFECT_RESULTS_LOCAL_STORAGE_PATH,
    PREFECT_SERVER_ANALYTICS_ENABLED,
    temporary_settings,
)
from prefect.testing.utilities import prefect_test_harness

from tests import twin_prefect_flow
from tests.aws_twin import DEPLOYMENT, AwsTwinCloud


@pytest.fixture
def prefect_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    env = {
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(tmp_path / "results"),
        "PREFECT_SERVER_MEMO_STORE_PATH": str(tmp_path / "memo.toml"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE": "true",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with (
        temporary_settings(
            updates={
                PREFECT_HOME: tmp_path / "prefect",
                PREFECT_RESULTS_LOCAL_STORAGE_PATH: tmp_path / "results",
                PREFECT_SERVER_ANALYTICS_ENABLED: False,
            }
        ),
        prefect_test_harness(server_startup_timeout=90),
    ):
        yield


def test_prefect_tasks_run_on_ec2(aws: AwsTwinCloud, prefect_api: None) -> None:
    results = twin_prefect_flow.run_on(aws.host(), DEPLOYMENT)
    hosts = {f"ip-{h.ip.replace('.', '-')}" for h in aws.twin.hosts().values()}
    assert [value for _, value in results] == [0, 1, 4]
    assert {name for name, _ in results} <= hosts  # every task ran on a twin instance
