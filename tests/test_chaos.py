"""Chaos suite, part 1: what a hostile user does to the wire and to running maps.

Hostile frames and queue messages, and SIGKILLs of workers, agents and clients in the middle of
maps, with exact counts of tasks lost, reported twice and processes or allocations orphaned.
(Part 2, damaged state and leftovers: tests/test_chaos_state.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from functools import partial
from pathlib import Path

import chaos_workloads
import psutil
import pytest
import workloads

import meadowrun_core as mr
from meadowrun_core.agent.gate import HELLO_TIMEOUT_SECONDS, MAX_UNAUTHENTICATED
from meadowrun_core.local.task_queue import SqliteTaskQueue
from meadowrun_core.protocol import HelloGuard, hello_frame
from meadowrun_core.serialization import Signer, UnauthenticatedDataError, load_or_create_key
from tests.waiting import local_table, wait_until

pytestmark = pytest.mark.chaos
TESTS_DIR = Path(__file__).parent


_table = local_table
_wait_until = wait_until


def _agent(home: Path) -> tuple[str, int, psutil.Process]:
    mr.run_function(workloads.double, args=(1,))
    (instance,) = _table(home).list_instances()
    assert instance.address is not None and instance.agent_pid is not None
    host, port = instance.address.rsplit(":", 1)
    return host, int(port), psutil.Process(instance.agent_pid)


# --- hostile frames ---------------------------------------------------------------------------
def _stream_junk(host: str, port: int, megabytes: int, first: bytes) -> int:
    """Send ``first`` then zeros until the agent closes the connection; bytes it accepted."""
    sent = 0
    chunk = b"\0" * (1 << 20)
    with socket.create_connection((host, port)) as sock:
        try:
            sock.sendall(first)
            for _ in range(megabytes):
                sock.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass
    return sent


def test_junk_streams_cost_the_agent_no_memory(local_cloud: Path) -> None:
    """Two connections streaming 300 MB each (a maximal length prefix, then zeros) must not
    make the agent buffer them: the hello cap refuses them after the 4-byte prefix."""
    host, port, agent = _agent(local_cloud)
    before = agent.memory_info().rss
    firsts = [b"\x7f\xff\xff\xff", b"\0\0\x0f\xa0"]  # 2 GiB - 1; 4000 (a hello-sized junk)
    sent: list[int] = []
    threads = [
        threading.Thread(target=lambda f=f: sent.append(_stream_junk(host, port, 300, f)))
        for f in firsts
    ]
    for t in threads:
        t.start()
    peak = before
    while any(t.is_alive() for t in threads):
        peak = max(peak, agent.memory_info().rss)
        time.sleep(0.01)
    growth_mb = (peak - before) / 2**20
    assert growth_mb < 20, f"the agent grew by {growth_mb:.0f} MB while refusing junk"
    assert all(s < 300 * 2**20 for s in sent), "the agent read a whole junk stream"
    assert mr.run_function(workloads.double, args=(21,)) == 42  # still serves real clients


def test_idle_unauthenticated_connections_are_capped_and_timed_out(local_cloud: Path) -> None:
    host, port, _ = _agent(local_cloud)
    extra = 8
    socks = [socket.create_connection((host, port)) for _ in range(MAX_UNAUTHENTICATED + extra)]
    try:
        time.sleep(1.0)
        closed_at_once = 0
        for sock in socks:
            sock.settimeout(0.05)
            with contextlib.suppress(TimeoutError):
                closed_at_once += sock.recv(1) == b""
        assert closed_at_once >= extra, "connections over the cap must be closed at once"
        deadline = time.monotonic() + HELLO_TIMEOUT_SECONDS + 10
        for sock in socks:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            assert sock.recv(1) == b"", "an idle unauthenticated connection must be closed"
    finally:
        for sock in socks:
            sock.close()
    assert mr.run_function(workloads.double, args=(2,)) == 4


def test_hello_is_signed_fresh_and_used_once() -> None:
    signer = Signer(b"k" * 32)
    hello = hello_frame(signer)
    guard = HelloGuard()

    async def read(frame: bytes, reader_signer: Signer = signer) -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(frame)
        reader.feed_eof()
        await guard.read_hello(reader, reader_signer)

    asyncio.run(read(hello))
    with pytest.raises(UnauthenticatedDataError, match="replayed"):
        asyncio.run(read(hello))
    with pytest.raises(UnauthenticatedDataError):
        asyncio.run(read(hello_frame(Signer(b"x" * 32))))
    with pytest.raises(ValueError, match="over the limit"):
        asyncio.run(read(b"\x00\x10\x00\x00" + b"\0" * 64))


# --- hostile queue messages -------------------------------------------------------------------
class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, ...]:
        return (chaos_workloads.write_file, (str(self.marker),))


def test_junk_queue_messages_are_dropped_never_unpickled(local_cloud: Path, tmp_path: Path) -> None:
    marker = tmp_path / "unpickled"
    evil = pickle.dumps([_Evil(marker)])
    signer = Signer(load_or_create_key(local_cloud / "cluster.key"))
    junk = [
        evil,  # a plain pickle
        b"MR1" + b"\0" * 32 + evil,  # a forged signature
        b"MRREF1:" + b"ab" * 32,  # a reference to an object that does not exist
        signer.sign(pickle.dumps("not a list of tasks")),  # signed, wrong shape
    ]
    queues = SqliteTaskQueue(local_cloud / "queues.db")
    injected: set[str] = set()
    stop = threading.Event()

    def inject() -> None:  # into both queues of the map, while it runs
        while not stop.is_set():
            for name, _ in queues.list_queues():
                if name not in injected:
                    injected.add(name)
                    queues.send_batch(name, junk)
            time.sleep(0.02)

    injector = threading.Thread(target=inject)
    injector.start()
    try:
        results = mr.run_map(
            partial(workloads.slow_square, seconds=0.05), range(30), num_concurrent_tasks=2
        )
    finally:
        stop.set()
        injector.join()
    assert [r[0] for r in results] == [x * x for x in range(30)]
    assert len(injected) == 2, "the junk went into the request and the result queue"
    assert not marker.exists(), "an unsigned pickle was loaded"


# --- SIGKILLs during maps -----------------------------------------------------------------------
def test_sigkill_of_a_worker_and_an_agent_mid_map_loses_and_duplicates_nothing(
    local_cloud: Path, tmp_path: Path
) -> None:
    records = tmp_path / "records"
    records.mkdir()
    tasks = 40
    results: list[mr.TaskResult] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.extend(
                mr.run_map_as_completed(
                    partial(chaos_workloads.record_and_sleep, record_dir=str(records), seconds=0.3),
                    range(tasks),
                    resources_per_task=mr.Resources(logical_cpu=1, memory_gb=1),
                    num_concurrent_tasks=4,
                    max_num_task_attempts=3,
                )
            )
        except BaseException as exc:
            errors.append(exc)

    driver = threading.Thread(target=run)
    driver.start()
    table = _table(local_cloud)
    _wait_until(
        lambda: len(os.listdir(records)) >= 4 or not driver.is_alive(), 60, "the map to start"
    )
    assert driver.is_alive(), f"the map ended before it started: {errors}"
    worker_pid = next(a.worker_pid for a in table.list_allocations() if a.worker_pid)
    os.kill(worker_pid, signal.SIGKILL)
    _wait_until(lambda: len(os.listdir(records)) >= 12, 60, "the map to go on")
    instances = [i for i in table.list_instances() if i.running_jobs and i.agent_pid]
    victim = psutil.Process(instances[0].agent_pid)
    victim_children = victim.children(recursive=True)
    victim.kill()
    driver.join(timeout=240)
    assert not driver.is_alive() and not errors, errors

    reported = [r.task_id for r in results]
    lost = set(range(tasks)) - set(reported)
    duplicated = len(reported) - len(set(reported))
    assert (len(lost), duplicated) == (0, 0)
    assert all(r.is_success and r.result == r.task_id**2 for r in results)
    executed = chaos_workloads.executions(str(records))
    assert set(executed) == set(range(tasks))  # at least once each; retries may repeat some
    # orphans: no worker of the killed agent survives, no allocation or queue is left
    _wait_until(lambda: not any(p.is_running() for p in victim_children), 15, "orphan workers")
    _wait_until(lambda: table.list_allocations() == [], 15, "allocations to be freed")
    assert SqliteTaskQueue(local_cloud / "queues.db").list_queues() == []


def test_sigkill_of_a_client_mid_map_leaves_no_orphans(local_cloud: Path, tmp_path: Path) -> None:
    records = tmp_path / "records"
    records.mkdir()
    script = textwrap.dedent(
        f"""
        import functools, meadowrun_core as mr, chaos_workloads
        f = functools.partial(
            chaos_workloads.record_and_sleep, record_dir={str(records)!r}, seconds=60
        )
        mr.run_map(f, range(20), resources_per_task=mr.Resources(logical_cpu=1, memory_gb=1),
                   num_concurrent_tasks=4)
        """
    )
    client = subprocess.Popen([sys.executable, "-c", script], cwd=TESTS_DIR)
    table = _table(local_cloud)
    try:
        _wait_until(lambda: len(os.listdir(records)) >= 4, 90, "the client's map to start")
        workers = [psutil.Process(a.worker_pid) for a in table.list_allocations() if a.worker_pid]
        assert len(workers) == 4
        client.send_signal(signal.SIGKILL)
        lease = float(os.environ["MEADOWRUN_LEASE_SECONDS"])
        _wait_until(lambda: not any(w.is_running() for w in workers), lease + 10, "workers")
        _wait_until(lambda: table.list_allocations() == [], 10, "allocations to be freed")
        _wait_until(
            lambda: SqliteTaskQueue(local_cloud / "queues.db").list_queues() == [],
            10,
            "the map's queues to be deleted",
        )
        assert len(os.listdir(records)) == 4, "no task started after the client died"
    finally:
        client.kill()
        client.wait()
