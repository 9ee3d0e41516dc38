"""MeadowCluster as a new user meets it, checked against LocalCluster's behaviour: defaults
that fit the local cloud, a clear reason (at WARNING, then in the error) when room is
missing, and SpecCluster's cluster-manager contract (scale by cores or memory, failures at
start, registered workers on return, worker names, a reset Dask config)."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import dask
import pytest
from distributed import Client

import meadowrun_core as mr
from meadowrun_dask import MeadowCluster
from tests.dask_workers import scheduler_workers
from tests.waiting import local_table

pytestmark = pytest.mark.timeout(240)


def _nthreads(cluster: MeadowCluster) -> list[int]:
    return sorted(w["nthreads"] for w in cluster.scheduler_info["workers"].values())


def test_defaults_fit_a_two_cpu_machine_and_workers_are_registered_on_return(
    local_cloud: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEADOWRUN_LOCAL_MAX_CPU", "2")
    monkeypatch.setenv("MEADOWRUN_LOCAL_MAX_MEMORY_GB", "8")
    # as LocalCluster on 2 CPUs: 2 workers of 1 thread, the memory shared out
    with MeadowCluster() as cluster, Client(cluster) as client:
        # registered when the constructor returns, as LocalCluster's are
        assert len(client.run(lambda: 1)) == 2
        assert _nthreads(cluster) == [1, 1]
        assert len(scheduler_workers(client)) == 2
        limits = {w["memory_limit"] for w in cluster.scheduler_info["workers"].values()}
        assert limits == {int(3.5 * 2**30 * 0.9)}
        assert client.submit(sum, [1, 2]).result(timeout=30) == 3
    # and asked for explicitly, two workers on two CPUs just work too
    with MeadowCluster(n_workers=2) as cluster, Client(cluster) as client:
        assert len(client.run(lambda: 1)) == 2


def test_a_cluster_larger_than_the_local_cloud_fails_at_once(
    local_cloud: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEADOWRUN_LOCAL_MAX_CPU", "2")
    began = time.monotonic()
    with pytest.raises(mr.ResourcesNotAvailableError, match="MEADOWRUN_LOCAL_MAX_CPU") as info:
        MeadowCluster(n_workers=3)
    assert "3 worker(s) of 1 CPU" in str(info.value)
    assert time.monotonic() - began < 10
    assert not local_table(local_cloud).list_allocations()


def _hold(seconds: float) -> None:
    time.sleep(seconds)


def test_waiting_for_room_warns_within_seconds_and_fails_with_the_reason(
    local_cloud: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("MEADOWRUN_LOCAL_MAX_CPU", "2")
    caplog.set_level(logging.WARNING, logger="meadowrun_dask")
    occupier = mr.run_function(
        _hold,
        args=(120,),
        resources=mr.Resources(logical_cpu=2, memory_gb=1),
        wait_for_result=False,
    )
    assert occupier.wait_started(60)
    began, began_wall = time.monotonic(), time.time()
    try:
        with (
            dask.config.set({"meadowrun.worker-start-timeout": "12s"}),
            pytest.raises(RuntimeError, match="did not start within 12 s") as info,
        ):
            MeadowCluster(n_workers=1, worker_resources={"logical_cpu": 1, "memory_gb": 1})
        failed_after = time.monotonic() - began
        reason = str(info.value)
        assert "wait for room" in reason and "2 CPU" in reason
        assert "MEADOWRUN_LOCAL_MAX_CPU" in reason
        warnings = [r for r in caplog.records if "waited" in r.getMessage()]
        assert warnings and warnings[0].levelno == logging.WARNING
        assert "worker 0" in warnings[0].getMessage()
        assert "MEADOWRUN_LOCAL_MAX_CPU" in warnings[0].getMessage()
        assert warnings[0].created - began_wall < 10, "the warning came late"
        assert failed_after < 60
        # nothing of the cluster is left; the occupier still runs
        assert [a.job_id for a in local_table(local_cloud).list_allocations()] == [occupier.job_id]
    finally:
        occupier.cancel(wait=True)


def test_no_workers_with_pending_work_warns(
    local_cloud: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with (
        dask.config.set({"meadowrun.no-workers-warning": "1s"}),
        MeadowCluster(n_workers=0) as cluster,
        Client(cluster) as client,
    ):
        future = client.submit(sum, [1, 2])
        deadline = time.monotonic() + 30
        while not any("no workers" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, "no warning about the missing workers"
            time.sleep(0.2)
        record = next(r for r in caplog.records if "no workers" in r.getMessage())
        assert record.levelno >= logging.WARNING
        cluster.scale(1)
        assert future.result(timeout=60) == 3


class _Named(MeadowCluster):
    def _new_worker_name(self, worker_number: int) -> str:
        return f"meadow-{worker_number}"


def test_scale_by_cores_and_memory_and_adapt_by_them(local_cloud: Path) -> None:
    async def main() -> None:
        async with (
            _Named(
                n_workers=1, worker_resources={"logical_cpu": 1, "memory_gb": 2}, asynchronous=True
            ) as cluster,
            Client(cluster, asynchronous=True) as client,
        ):
            assert set(cluster.worker_spec) == {"meadow-0"}
            cluster.scale(cores=2)
            await cluster  # returns with the new worker registered, as LocalCluster's
            assert len(await client.run(lambda: 1)) == 2
            assert set(cluster.worker_spec) == {"meadow-0", "meadow-1"}
            # 2 GB workers hand Dask 0.9 x 2 GB: 3 GB takes two of them
            cluster.scale(memory="3GiB")
            await cluster
            assert len(cluster.worker_spec) == 2
            adaptive = cluster.adapt(minimum_cores=1, maximum_memory="4GiB")
            assert (adaptive.minimum, adaptive.maximum) == (1, 2)

    asyncio.run(main())


def test_a_worker_that_fails_at_start_fails_the_constructor(local_cloud: Path) -> None:
    began = time.monotonic()
    with pytest.raises(RuntimeError, match="no_such_option"):
        MeadowCluster(n_workers=1, worker_options={"no_such_option": 1})
    assert time.monotonic() - began < 60
    assert not local_table(local_cloud).list_allocations()


def test_a_reset_dask_config_keeps_the_defaults(local_cloud: Path) -> None:
    """As Dask's test utilities do (``distributed.utils_test.reset_config``): the config is
    replaced by a copy taken before meadowrun_dask was imported."""
    saved: dict[str, Any] = dask.config.config.pop("meadowrun")
    try:
        with MeadowCluster(n_workers=1) as cluster, Client(cluster) as client:
            assert client.submit(sum, [1, 2]).result(timeout=30) == 3
    finally:
        dask.config.config["meadowrun"] = saved
