"""The ``prefect_api`` fixture the twin clouds' Prefect tests share (tests/test_aws_twin_prefect.py,
tests/test_azure_twin_prefect.py): a temporary Prefect server on the client's loopback with
private, offline settings, one per test, so a flow's task runs on a twin instance report to
a server that knows nothing of the developer's Prefect. Imported by those modules rather than
listed in conftest's plugins, so that other test modules do not pay for importing Prefect."""

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
    # prefect may have been imported before these were set: set them in its context too
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
