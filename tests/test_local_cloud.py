"""Lifecycle of the local cloud: concurrency, crashes, leases, idleness and interruptions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from functools import partial
from pathlib import Path

import psutil
import pytest
import workloads

import meadowrun_core as mr
from meadowrun_core.local import admin
from meadowrun_core.local.object_store import FileObjectStore
from meadowrun_core.serialization import Signer, UnauthenticatedDataError
from tests.waiting import local_table, wait_until

TESTS_DIR = Path(__file__).parent


_table = local_table
_wait_until = wait_until


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_sixteen_racing_clients_never_over_allocate(local_cloud: Path, tmp_path: Path) -> None:
    records = tmp_path / "records"
    records.mkdir()
    script = textwrap.dedent(
        f"""
        import meadowrun_core as mr, workloads
        for _ in range(2):
            mr.run_function(workloads.sleep_and_record, args=(0.3, {str(records)!r}),
                            resources=mr.Resources(logical_cpu=1, memory_gb=1))
        """
    )
    violations: list[str] = []
    capacity: dict[str, float] = {}  # every instance seen, even if later terminated
    stop = threading.Event()
    table = _table(local_cloud)

    def sample() -> None:
        while not stop.is_set():
            instances = table.list_instances()
            capacity.update((i.instance_id, i.cpu_total) for i in instances)
            if sum(i.cpu_total for i in instances) > 4 + 1e-9:
                violations.append(f"launched past the limit: {instances}")
            violations.extend(
                f"over-allocated {i.instance_id}: cpu_free={i.cpu_free}"
                for i in instances
                if i.cpu_free < -1e-9 or i.memory_free < -1e-9
            )
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        clients = [
            subprocess.Popen([sys.executable, "-c", script], cwd=TESTS_DIR) for _ in range(16)
        ]
        assert [c.wait(timeout=240) for c in clients] == [0] * 16
    finally:
        stop.set()
        sampler.join()
    assert violations == []
    runs = [json.loads(p.read_text()) for p in records.iterdir()]
    assert len(runs) == 32
    capacity.update((i.instance_id, i.cpu_total) for i in table.list_instances())
    assert set(r["instance"] for r in runs) <= set(capacity)
    for instance_id, cpus in capacity.items():
        mine = [r for r in runs if r["instance"] == instance_id]
        for run in mine:
            overlapping = sum(
                1 for r in mine if r["start"] < run["end"] and r["end"] > run["start"]
            )
            assert overlapping <= cpus, f"{overlapping} jobs at once on a {cpus}-CPU instance"
    assert table.list_allocations() == []


def test_sigkilled_worker_frees_its_allocation(local_cloud: Path) -> None:
    with pytest.raises(mr.WorkerDiedError, match="SIGKILL"):
        mr.run_function(workloads.kill_self)
    assert _table(local_cloud).list_allocations() == []
    # the instance is still usable afterwards
    assert mr.run_function(workloads.double, args=(2,)) == 4


def test_sigkilled_map_worker_task_is_retried(local_cloud: Path, tmp_path: Path) -> None:
    results = list(
        mr.run_map_as_completed(
            partial(workloads.kill_self_first_time, marker_dir=str(tmp_path)),
            range(9),
            num_concurrent_tasks=2,
            max_num_task_attempts=2,
        )
    )
    assert sorted(r.task_id for r in results) == list(range(9)), "each task reported once"
    assert all(r.is_success for r in results)
    assert {r.task_id: r.result for r in results} == {x: x * 10 for x in range(9)}
    assert {r.task_id for r in results if r.attempt == 2} == {0, 3, 6}
    assert _table(local_cloud).list_allocations() == []


def test_sigkilled_map_worker_without_retries_fails_that_task_only(
    local_cloud: Path, tmp_path: Path
) -> None:
    results = {
        r.task_id: r
        for r in mr.run_map_as_completed(
            partial(workloads.kill_self_first_time, marker_dir=str(tmp_path)),
            range(4),
            num_concurrent_tasks=2,
        )
    }
    assert sorted(results) == [0, 1, 2, 3]
    assert not results[0].is_success and not results[3].is_success
    assert results[0].exception is not None and "SIGKILL" in str(results[0].exception)
    assert results[1].result == 10 and results[2].result == 20


def test_sigkilled_client_leaves_no_running_workers(local_cloud: Path, tmp_path: Path) -> None:
    pid_file = tmp_path / "worker_pid"
    script = textwrap.dedent(
        f"""
        import time, meadowrun_core as mr, workloads
        from meadowrun_core.local.allocation_table import SqliteAllocationTable
        from meadowrun_core.config import meadowrun_home
        handle = mr.run_function(workloads.worker_pid_and_sleep, args=(120,), wait_for_result=False)
        table = SqliteAllocationTable(meadowrun_home() / "state.db")
        while not any(a.worker_pid for a in table.list_allocations()):
            time.sleep(0.05)
        open({str(pid_file)!r}, "w").write(str(table.list_allocations()[0].worker_pid))
        time.sleep(600)
        """
    )
    client = subprocess.Popen([sys.executable, "-c", script], cwd=TESTS_DIR)
    try:
        _wait_until(pid_file.exists, 30, "the client's job to start")
        worker_pid = int(pid_file.read_text())
        assert _alive(worker_pid)
        client.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        lease = float(os.environ["MEADOWRUN_LEASE_SECONDS"])
        # documented bound: lease + reconcile interval (+ slack for a loaded machine)
        _wait_until(lambda: not _alive(worker_pid), lease + 6, "the worker to be stopped")
        _wait_until(lambda: _table(local_cloud).list_allocations() == [], 5, "allocation freed")
        assert time.monotonic() - killed_at >= lease - 1.5, "stopped before the lease expired"
    finally:
        client.kill()
        client.wait()


def test_idle_instances_terminate(local_cloud: Path) -> None:
    host = mr.AllocLocalInstance(idle_timeout=1.0)
    assert mr.run_function(workloads.double, args=(3,), host=host) == 6
    (instance,) = _table(local_cloud).list_instances()
    assert _alive(instance.agent_pid)
    _wait_until(lambda: _table(local_cloud).list_instances() == [], 15, "idle termination")
    _wait_until(lambda: not _alive(instance.agent_pid), 5, "the agent to exit")


class _MapInBackground:
    """Runs ``run_map_as_completed`` of ``slow_square`` in a thread, collecting results, so a
    test can hurt an instance while tasks are in flight."""

    def __init__(self, tasks: int, seconds: float, cpu: float) -> None:
        self.tasks = tasks
        self.results: list[mr.TaskResult] = []
        self.errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, args=(seconds, cpu))
        self._thread.start()

    def _run(self, seconds: float, cpu: float) -> None:
        try:
            self.results.extend(
                mr.run_map_as_completed(
                    partial(workloads.slow_square, seconds=seconds),
                    range(self.tasks),
                    num_concurrent_tasks=2,
                    resources_per_task=mr.Resources(logical_cpu=cpu, memory_gb=1),
                )
            )
        except BaseException as exc:
            self.errors.append(exc)

    def instance_of_a_recent_task(self, count: int = 5) -> str:
        _wait_until(lambda: len(self.results) >= count, 60, "the first results")
        return str(self.results[-1].result[1])

    def assert_every_task_once(self) -> None:
        self._thread.join(timeout=120)
        assert not self._thread.is_alive() and self.errors == []
        assert sorted(r.task_id for r in self.results) == list(range(self.tasks))
        assert all(r.is_success and r.result[0] == r.task_id**2 for r in self.results)


def test_simulated_interruption_loses_no_map_task(local_cloud: Path) -> None:
    run = _MapInBackground(tasks=40, seconds=0.2, cpu=1)
    victim = run.instance_of_a_recent_task()
    admin.interrupt(victim, delay_seconds=1.0)
    run.assert_every_task_once()
    results = run.results
    assert all(r.attempt == 1 for r in results), "an interruption must not count an attempt"
    assert victim not in {i.instance_id for i in _table(local_cloud).list_instances()}
    late = [r for r in results[5:] if r.result[1] == victim]
    assert len(late) < 35, "tasks kept running on the interrupted instance"


def test_tasks_outlasting_the_interruption_notice_are_rerun_without_an_attempt(
    local_cloud: Path,
) -> None:
    """A task still running when the instance goes (a late notice, or a task longer than
    the notice) is the instance's loss: it runs again elsewhere, its attempt not used up."""
    run = _MapInBackground(tasks=12, seconds=1.5, cpu=1)
    victim = run.instance_of_a_recent_task(count=2)
    admin.interrupt(victim, delay_seconds=0.2)  # shorter than any task: some are cut off
    run.assert_every_task_once()
    assert all(r.attempt == 1 for r in run.results), "an interruption must not count an attempt"
    assert victim not in {i.instance_id for i in _table(local_cloud).list_instances()}


def test_reconciler_frees_allocation_of_dead_worker_pid(local_cloud: Path) -> None:
    mr.run_function(workloads.double, args=(1,))  # start an instance
    table = _table(local_cloud)
    (instance,) = table.list_instances()
    placed = table.allocate_on_existing(
        ["orphan-job"], mr.Resources(logical_cpu=1, memory_gb=1), mr.api.current_client_id(), "x"
    )
    assert placed == {"orphan-job": instance.instance_id}
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    pid_dir = local_cloud / "instances" / instance.instance_id / "pids"
    (pid_dir / "orphan-job.pid").write_text(str(dead.pid))
    _wait_until(lambda: table.list_allocations() == [], 10, "the reconciler to free it")
    history = {row["job_id"]: row["outcome"] for row in table.job_history()}
    assert history["orphan-job"] == "worker died"


def test_agent_rejects_unauthenticated_clients(local_cloud: Path) -> None:
    import asyncio

    from meadowrun_core.protocol import encode_frame

    mr.run_function(workloads.double, args=(1,))
    (instance,) = _table(local_cloud).list_instances()
    assert instance.address is not None
    host, port = instance.address.rsplit(":", 1)

    async def attack() -> bytes:
        reader, writer = await asyncio.open_connection(host, int(port))
        forged = Signer(b"not-the-cluster-key-at-all-1234")
        writer.write(
            encode_frame(
                forged,
                {"type": "run", "job_id": "x", "kind": "command", "args": ["touch", "/tmp/pwned"]},
            )
        )
        await writer.drain()
        return await reader.read()

    assert asyncio.run(attack()) == b"", "the agent must close the connection"
    assert _table(local_cloud).list_allocations() == []


def test_state_is_private_and_blobs_are_authenticated(local_cloud: Path) -> None:
    mr.run_function(workloads.double, args=(1,))
    assert (local_cloud.stat().st_mode & 0o077) == 0
    for name in ("cluster.key", "state.db", "queues.db"):
        assert ((local_cloud / name).stat().st_mode & 0o077) == 0, name
    store = FileObjectStore(local_cloud / "objects")
    signer = Signer((local_cloud / "cluster.key").read_bytes())
    key = store.put(signer.dumps({"a": 1}))
    assert signer.loads(store.get(key)) == {"a": 1}
    tampered = bytearray(store.get(key))
    tampered[-1] ^= 1
    with pytest.raises(UnauthenticatedDataError):
        signer.loads(bytes(tampered))


def test_cli_shows_live_state(local_cloud: Path) -> None:
    handle = mr.run_function(workloads.worker_pid_and_sleep, args=(30,), wait_for_result=False)
    meadowrun = [sys.executable, "-m", "meadowrun_core.cli"]
    _wait_until(
        lambda: any(a.worker_pid for a in _table(local_cloud).list_allocations()),
        20,
        "the job to start",
    )
    instances = subprocess.run(
        [*meadowrun, "instances"], capture_output=True, text=True, check=True
    )
    (instance,) = _table(local_cloud).list_instances()
    assert instance.instance_id in instances.stdout and "alive" in instances.stdout
    jobs = subprocess.run([*meadowrun, "jobs"], capture_output=True, text=True, check=True)
    assert "worker_pid_and_sleep" in jobs.stdout
    handle.cancel()
    _wait_until(lambda: _table(local_cloud).list_allocations() == [], 10, "cancel")
    jobs = subprocess.run([*meadowrun, "jobs"], capture_output=True, text=True, check=True)
    assert "no running jobs" in jobs.stdout


def test_crashed_instance_loses_no_map_task_and_frees_its_room(local_cloud: Path) -> None:
    """An agent SIGKILLed without notice: its tasks come back after the visibility timeout,
    its slots are replaced, and its capacity is freed for new launches."""
    run = _MapInBackground(tasks=60, seconds=0.1, cpu=2)
    victim = run.instance_of_a_recent_task()
    (record,) = [i for i in _table(local_cloud).list_instances() if i.instance_id == victim]
    assert record.agent_pid is not None
    os.kill(record.agent_pid, signal.SIGKILL)
    run.assert_every_task_once()
    assert victim not in {i.instance_id for i in _table(local_cloud).list_instances()}


def test_idle_instances_make_room_at_the_limit(local_cloud: Path) -> None:
    """At the launch limit, idle small instances are terminated for a bigger job rather than
    the job waiting for them to idle out."""
    small = mr.Resources(logical_cpu=1, memory_gb=1)
    handles = [
        mr.run_function(
            workloads.slow_square, args=(i, 0.5), resources=small, wait_for_result=False
        )
        for i in range(4)
    ]
    assert [h.result(timeout=60)[0] for h in handles] == [0, 1, 4, 9]
    # any instance left up blocks a 4-CPU launch under the 4-CPU limit
    assert _table(local_cloud).list_instances()
    started = time.monotonic()
    value, instance = mr.run_function(
        workloads.slow_square, args=(5, 0.0), resources=mr.Resources(logical_cpu=4, memory_gb=2)
    )
    assert value == 25
    assert time.monotonic() - started < 20, "waited for idle instances instead of replacing them"
    assert [i.instance_id for i in _table(local_cloud).list_instances()] == [instance]
