"""MeadowCluster with real dask.distributed on the local cloud: answers, scaling, adaptivity,
replacement of dead workers, spot interruptions, and nothing left running afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import dask.dataframe as dd
import numpy as np
import pandas as pd
import psutil
import pytest
from distributed import Client
from distributed.core import Status

import meadowrun_core as mr
from meadowrun_core.config import meadowrun_home
from meadowrun_core.local import admin
from meadowrun_core.local.allocation_table import SqliteAllocationTable
from meadowrun_dask import MeadowCluster
from tests.dask_workers import scheduler_workers

pytestmark = pytest.mark.timeout(180)


def _table() -> SqliteAllocationTable:
    return SqliteAllocationTable(meadowrun_home() / "state.db")


def _wait(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def _n_workers(client: Client) -> int:
    return len(scheduler_workers(client))


def _job_pids() -> set[int]:
    return {a.worker_pid for a in _table().list_allocations() if a.worker_pid}


def _refuses(address: str) -> bool:
    host, port = address.split("://")[1].rsplit(":", 1)
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, int(port))) != 0


def _listening(pid: int) -> list[Any]:
    try:
        return [c for c in psutil.Process(pid).net_connections("inet") if c.status == "LISTEN"]
    except psutil.NoSuchProcess:
        return []


def _assert_nothing_left(scheduler_address: str, pids: set[int], timeout: float) -> None:
    """No allocation, no server listening: the scheduler's port is closed and every process
    that ran a scheduler or worker has exited or (a pooled meadowrun worker) holds no port."""
    _wait(lambda: not _table().list_allocations(), timeout, "every allocation to be freed")
    assert _refuses(scheduler_address)
    _wait(lambda: not any(_listening(pid) for pid in pids), 5, "no dask server to listen")


def _random_bytes(i: int) -> bytes:
    return os.urandom(64) + bytes([i])


def test_array_dataframe_scale_and_close_leave_nothing(
    local_cloud: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    deployment = mr.Deployment.mirror_local(environment_variables={"MEADOW_DASK_TEST": "yes"})
    with (
        MeadowCluster(n_workers=2, deployment=deployment) as cluster,
        Client(cluster) as client,
    ):
        client.wait_for_workers(2, timeout=60)
        # the caller's deployment, plus what Dask's Nanny gives LocalCluster's workers
        environ = client.run(
            lambda: (os.environ.get("MEADOW_DASK_TEST"), os.environ.get("OMP_NUM_THREADS"))
        )
        assert set(environ.values()) == {("yes", "1")}
        key_text = cluster.security.tls_client_key
        assert key_text and "PRIVATE KEY" in key_text
        assert cluster.scheduler_address.startswith("tls://")
        assert all(a.startswith("tls://") for a in scheduler_workers(client))

        x = da.arange(1_000_000, chunks=100_000)
        assert (x * x).sum().compute() == int((np.arange(1_000_000) ** 2).sum())

        rng = np.random.default_rng(0)
        pdf = pd.DataFrame({"k": rng.integers(0, 7, 20_000), "v": rng.random(20_000)})
        got = dd.from_pandas(pdf, npartitions=8).groupby("k")["v"].sum().compute()
        pd.testing.assert_series_equal(got.sort_index(), pdf.groupby("k")["v"].sum())

        # each job's process, for the checks after close
        pids = _job_pids()
        assert len(pids) == 3

        cluster.scale(3)
        client.wait_for_workers(3, timeout=60)
        pids |= _job_pids()
        futures = client.map(_random_bytes, range(30), pure=False)
        before = client.gather(futures)
        assert len([w for w, keys in client.has_what().items() if keys]) >= 2
        cluster.scale(1)
        _wait(lambda: _n_workers(client) == 1, 60, "the scale-down to 1 worker")
        _wait(lambda: len(_table().list_allocations()) == 2, 10, "scheduler + 1 allocation")
        # retired workers handed their data over: the random values were not recomputed
        assert client.gather(futures) == before

        logs = cluster.get_logs()
        assert "Scheduler" in logs and len(logs) >= 3
        assert cluster.dashboard_link.startswith("http://127.0.0.1:")
        scheduler_address = cluster.scheduler_address

    _assert_nothing_left(scheduler_address, pids, timeout=5)

    # the certificates never left the client in the clear: not in any log line, command line
    # or environment of the local cloud's processes, nor in any file under MEADOWRUN_HOME
    secret = key_text.splitlines()[3]
    assert not any(secret in r.getMessage() for r in caplog.records)
    for proc in psutil.process_iter(["cmdline", "environ"]):
        with contextlib.suppress(psutil.Error):
            assert secret not in " ".join(proc.info["cmdline"] or [])
            assert secret not in " ".join((proc.info["environ"] or {}).values())
    for path in local_cloud.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def _sleep_then(x: int) -> int:
    time.sleep(0.5)
    return x


def test_adapt_grows_under_load_and_shrinks_when_idle(local_cloud: Path) -> None:
    async def main() -> None:
        async with (
            MeadowCluster(asynchronous=True) as cluster,
            Client(cluster, asynchronous=True) as client,
        ):
            cluster.adapt(
                minimum=1, maximum=3, interval="300ms", wait_count=3, target_duration="1s"
            )
            await client.wait_for_workers(1, timeout=60)
            futures = client.map(_sleep_then, range(24))
            peak = 0
            while not all(f.done() for f in futures):
                peak = max(peak, len(cluster.scheduler_info["workers"]))
                await asyncio.sleep(0.1)
            assert await client.gather(futures) == list(range(24))
            assert peak >= 2, "adapt did not add workers under load"
            deadline = time.monotonic() + 40
            while len(cluster.scheduler_info["workers"]) > 1 or len(cluster.workers) > 1:
                assert time.monotonic() < deadline, "adapt did not remove idle workers"
                await asyncio.sleep(0.2)
            # the removed workers' allocations are freed: scheduler + the minimum of 1
            while len(_table().list_allocations()) > 2:
                assert time.monotonic() < deadline, "idle workers' allocations not freed"
                await asyncio.sleep(0.2)

    asyncio.run(main())
    assert not _table().list_allocations()


def _slow_block(block: np.ndarray) -> np.ndarray:
    time.sleep(0.15)
    return block


def test_worker_sigkilled_mid_computation_is_replaced(local_cloud: Path) -> None:
    with MeadowCluster(n_workers=2) as cluster, Client(cluster) as client:
        client.wait_for_workers(2, timeout=60)
        x = da.random.RandomState(0).random((1200, 1200), chunks=(200, 200))
        expected = float(x.sum().compute())
        future = client.compute(x.map_blocks(_slow_block).sum())
        victim = next(iter(scheduler_workers(client)))
        _wait(lambda: client.processing().get(victim), 30, "work on the victim")
        victim_name = scheduler_workers(client)[victim]["name"]
        pid = client.run(os.getpid, workers=[victim])[victim]
        os.kill(pid, signal.SIGKILL)

        assert future.result(timeout=120) == pytest.approx(expected)
        # the scale target holds: a new worker, under a new name, takes the dead one's place
        client.wait_for_workers(2, timeout=60)
        names = {w["name"] for w in scheduler_workers(client).values()}
        assert victim_name not in names and len(names) == 2
        assert len(cluster.worker_spec) == 2
        assert any("starting" in line for _, line in cluster._cluster_manager_logs)
    assert not _table().list_allocations()


def test_spot_interruption_moves_the_workers_data(local_cloud: Path) -> None:
    with MeadowCluster(n_workers=2) as cluster, Client(cluster) as client:
        client.wait_for_workers(2, timeout=60)
        futures = client.map(_random_bytes, range(16), pure=False)
        before = client.gather(futures)
        holders = {w: keys for w, keys in client.has_what().items() if keys}
        victim = next(iter(holders))
        instance_id = client.run(lambda: os.environ["MEADOWRUN_INSTANCE_ID"], workers=[victim])[
            victim
        ]
        assert len({a.instance_id for a in _table().list_allocations()}) == 3

        notice_delay = 15
        admin.interrupt(instance_id, notice_delay)
        deadline = time.time() + notice_delay
        _wait(
            lambda: victim not in scheduler_workers(client),
            notice_delay,
            "the victim to retire",
        )
        assert time.time() < deadline, "the worker left only when its instance was killed"

        # its keys now live elsewhere, with the same (random) values: moved, not recomputed
        who_has = client.who_has(futures)
        assert all(where and victim not in where for where in who_has.values())
        assert client.gather(futures) == before
        # and a replacement restores the target, on another instance
        client.wait_for_workers(2, timeout=60)
        assert len(cluster.worker_spec) == 2
        assert instance_id not in client.run(lambda: os.environ["MEADOWRUN_INSTANCE_ID"]).values()
    assert not _table().list_allocations()


_KILLED_CLIENT = """
import os, signal, sys
from distributed import Client
from distributed.core import Status
from meadowrun_dask import MeadowCluster

cluster = MeadowCluster(n_workers=1)
client = Client(cluster)
client.wait_for_workers(1, timeout=60)
print(cluster.scheduler_address, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_killed_client_leaves_nothing_running(local_cloud: Path, tmp_path: Path) -> None:
    script = tmp_path / "client.py"
    script.write_text(textwrap.dedent(_KILLED_CLIENT))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    scheduler_address = proc.stdout.readline().strip()
    pids = _job_pids()
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert scheduler_address.startswith("tls://") and len(pids) == 2
    # the lease (3 s here) lapses, the agents stop the jobs and free their allocations
    _assert_nothing_left(scheduler_address, pids, timeout=3 + 5)


def test_idle_timeout_closes_the_cluster_and_frees_everything(local_cloud: Path) -> None:
    cluster = MeadowCluster(n_workers=1, idle_timeout="10s")
    try:
        scheduler_address = cluster.scheduler_address
        cluster.wait_for_workers(1, timeout=60)
        pids = _job_pids()
        _wait(lambda: cluster.status == Status.closed, 60, "the idle cluster to close")
        _assert_nothing_left(scheduler_address, pids, timeout=5)
    finally:
        cluster.close()


def test_scheduler_address_reported_by_its_job(local_cloud: Path) -> None:
    """``listen-host: any`` is the cloud's path: the port is the scheduler's own choice and
    only the job knows the address, which it reports; the workers start once it has."""
    with (
        dask.config.set({"meadowrun.listen-host": "any"}),
        MeadowCluster(n_workers=1) as cluster,
        Client(cluster) as client,
    ):
        assert not cluster.scheduler_address.startswith("tls://127.0.0.1:")
        client.wait_for_workers(1, timeout=60)
        assert client.submit(sum, [1, 2]).result() == 3
    _wait(lambda: not _table().list_allocations(), 5, "every allocation to be freed")


def test_scheduler_that_cannot_start_fails_fast_and_frees_everything(local_cloud: Path) -> None:
    with pytest.raises(RuntimeError, match="no_such_option"):
        MeadowCluster(n_workers=1, scheduler_options={"no_such_option": 1})
    _wait(lambda: not _table().list_allocations(), 5, "every allocation to be freed")
