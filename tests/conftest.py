"""Shared fixtures: every test gets its own real local cloud under a temporary
MEADOWRUN_HOME, torn down (instances terminated) afterwards."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from meadowrun_core.client.runtime import ClientRuntime
from meadowrun_core.config import meadowrun_home
from meadowrun_core.local import admin
from tests.moto_server import SerialMotoServer, reset_moto

# The EC2 twin's fixtures (``aws``, ``twin_network``), for every module that runs on it, and
# Azurite (``azurite``: the storage account of the Azure storage emulator), ``azure``
# (AllocAzureVM on the Azure twin) and ``azure_admin`` (the twin and Azurite, no VM hosts);
# ``airflow`` (real Airflow in a process of its own) and its ``airflow_env``.
pytest_plugins = [
    "tests.aws_twin",
    "tests.azurite",
    "tests.azure_cloud",
    "tests.azure_admin_cloud",
    "tests.airflow_runner",
]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "chaos: hostile-user probes of the local cloud (tests/test_chaos*.py); they run in the "
        "default run and in CI, `-m chaos` runs only them",
    )
    config.addinivalue_line(
        "markers",
        "client_lease(seconds): the client lease the twin fixtures (aws, azure) give this "
        "test, instead of their short one (tests/process_env.py)",
    )


@pytest.fixture
def local_cloud(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private local cloud: short lease, 4 CPU limit, instances cleaned at the end."""
    home = tmp_path / "meadowrun-home"
    monkeypatch.setenv("MEADOWRUN_HOME", str(home))
    monkeypatch.setenv("MEADOWRUN_LEASE_SECONDS", "3")
    monkeypatch.setenv("MEADOWRUN_IDLE_TIMEOUT", "60")
    monkeypatch.setenv("MEADOWRUN_VISIBILITY_TIMEOUT", "6")
    monkeypatch.setenv("MEADOWRUN_LOCAL_MAX_CPU", "4")
    monkeypatch.setenv("MEADOWRUN_LOCAL_MAX_MEMORY_GB", "16")
    monkeypatch.delenv("MEADOWRUN_HOST", raising=False)
    logging.getLogger("meadowrun_core").setLevel(logging.INFO)
    meadowrun_home()  # created private (0700), as a first run would
    yield home
    ClientRuntime.get().forget_backends()
    admin.clean()


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    """moto's server over HTTP on loopback for one test module, answering one request at a
    time (see tests/moto_server.py). moto keeps its state per process, not per server, so the
    module starts from an empty account and leaves one behind."""
    server = SerialMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    reset_moto(endpoint)
    yield endpoint
    reset_moto(endpoint)
    server.stop()
