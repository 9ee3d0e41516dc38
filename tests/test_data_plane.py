"""The data plane on the local cloud (issue 12; issue 14 item 2): payloads of any size take
the object store path, a client older than the store's expiry still runs jobs, and a damaged
blob is replaced by the client and the job runs."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest

import meadowrun_core as mr
from meadowrun_core.agent.map_feeder import MapFeeder
from meadowrun_core.client import payload
from meadowrun_core.client.runtime import ClientRuntime
from meadowrun_core.local.task_queue import SqliteTaskQueue
from meadowrun_core.seams.object_store import DamagedObjectError
from meadowrun_core.seams.task_queue import QueueMessage
from meadowrun_core.serialization import Signer

MB = 1 << 20


def _grow(blob: bytes) -> bytes:
    return blob + b"r" * MB  # a result of about 2 MB


def _objects(home: Path) -> list[Path]:
    return [p for p in (home / "objects").rglob("*") if p.is_file() and not p.name.startswith(".")]


def _fresh_instances() -> None:
    ClientRuntime.get().forget_backends()
    for instance in ClientRuntime.get().backend(None).table.list_instances():
        os.kill(instance.agent_pid or 0, signal.SIGKILL)
        ClientRuntime.get().backend(None).table.remove_instance(instance.instance_id, "test")


def test_map_of_large_arguments_and_results(local_cloud: Path) -> None:
    args = [bytes([i]) * MB for i in range(50)]
    results = mr.run_map(_grow, args, num_concurrent_tasks=2)
    assert [len(r) for r in results] == [2 * MB] * 50
    assert all(r[:1] == bytes([i]) for i, r in enumerate(results))


def test_large_job_argument_and_result_go_by_reference(local_cloud: Path) -> None:
    big = b"a" * (3 * MB)
    assert mr.run_function(_grow, args=(big,)) == big + b"r" * MB


def test_a_client_older_than_the_store_expiry_still_runs_jobs(
    local_cloud: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert mr.run_function(_grow, args=(b"x",)) == b"x" + b"r" * MB
    now = time.time()
    monkeypatch.setattr(payload, "clock", lambda: now + 8 * 86400)
    for path in _objects(local_cloud):  # what the store's expiry did meanwhile
        path.unlink()
    assert mr.run_function(_grow, args=(b"y",)) == b"y" + b"r" * MB


def test_a_damaged_blob_heals(local_cloud: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert mr.run_function(_grow, args=(b"x",)) == b"x" + b"r" * MB
    assert mr.run_map(_grow, [b"m"]) == [b"m" + b"r" * MB]
    for path in _objects(local_cloud):  # one byte of every object flipped
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))
    _fresh_instances()  # nothing loaded: the new worker must read every blob
    assert mr.run_function(_grow, args=(b"y",)) == b"y" + b"r" * MB
    assert "damaged in the store" in caplog.text
    for path in _objects(local_cloud):
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))
    _fresh_instances()
    assert mr.run_map(_grow, [b"n", b"o"]) == [b"n" + b"r" * MB, b"o" + b"r" * MB]


def test_a_damaged_kept_outcome_names_its_object(local_cloud: Path) -> None:
    mr.run_function(_grow, args=(b"k",), job_key="dp-kept")
    for path in _objects(local_cloud):
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))
    with pytest.raises(DamagedObjectError) as info:
        mr.attach_job("dp-kept").result()
    assert info.value.key in str(info.value) and "delete the object" in str(info.value)


class _ThreadedSqliteQueue(SqliteTaskQueue):
    """The real SQLite queue, called as a cloud's queue is: every call in a thread, a
    receive a long poll (as ``SqsTaskQueue.receive_async``)."""

    local = False

    async def receive_async(
        self, name: str, max_messages: int, visibility_timeout: float, wait_seconds: float
    ) -> list[QueueMessage]:
        return await asyncio.to_thread(
            self.receive, name, max_messages, visibility_timeout, wait_seconds
        )


@pytest.mark.parametrize("local", [True, False], ids=["local-queue", "cloud-queue"])
def test_feeder_long_polls_and_stops_at_once(tmp_path: Path, local: bool) -> None:
    """One receive in flight for all slots (a cloud's with the queue's long wait, a local
    queue's looked at from the loop itself); a slot told to stop returns without waiting."""
    queues = (SqliteTaskQueue if local else _ThreadedSqliteQueue)(tmp_path / "queues.db")
    waits: list[float] = []
    in_flight = [0, 0]  # now, most
    receive = queues.receive

    def counted(name: str, n: int, visibility: float, wait: float) -> list:  # type: ignore[type-arg]
        waits.append(wait)
        in_flight[0] += 1
        in_flight[1] = max(in_flight)
        try:
            return receive(name, n, visibility, wait)
        finally:
            in_flight[0] -= 1

    queues.receive = counted  # type: ignore[method-assign]
    queues.create_queue("req")

    async def scenario() -> float:
        feeder = MapFeeder(queues, Signer(b"k" * 32), "req", "res", 3, 30)
        feeder.slots = 2
        stop = asyncio.Event()
        slots = [asyncio.create_task(feeder.next_task(stop)) for _ in range(2)]
        await asyncio.sleep(0.5)
        began = time.monotonic()
        stop.set()
        assert await asyncio.gather(*slots) == [None, None]
        return time.monotonic() - began

    assert asyncio.run(scenario()) < 0.2
    if local:
        assert waits and set(waits) == {0.0} and in_flight[1] == 1
        return
    assert waits == [queues.max_wait_seconds]
    queues.send_batch("req", [b"MRWAKE"])  # let the abandoned poll's thread end


def test_a_local_receive_is_woken_by_its_sender(tmp_path: Path) -> None:
    """A receive waiting from an event loop returns when another process's send rings its
    doorbell, not at the next fallback look (every 0.25 s), and rings reach every waiter."""
    queues = SqliteTaskQueue(tmp_path / "queues.db")
    queues.create_queue("q")
    sender = (
        "import sys, time; from pathlib import Path; "
        "from meadowrun_core.local.task_queue import SqliteTaskQueue; "
        "q = SqliteTaskQueue(Path(sys.argv[1])); "
        "[(time.sleep(0.6), print(time.time(), flush=True), q.send_batch('q', [b'm'])) "
        "for _ in range(5)]"
    )

    async def receive_all() -> list[float]:
        latencies = []
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", sender, str(tmp_path / "queues.db"),
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert process.stdout is not None
        for _ in range(5):
            messages = await queues.receive_async("q", 1, 30, 10)
            arrived = time.time()
            sent = float((await process.stdout.readline()).decode())
            assert len(messages) == 1
            queues.delete("q", [messages[0].receipt])
            latencies.append(arrived - sent)
        await process.wait()
        return latencies

    latencies = sorted(asyncio.run(receive_all()))
    assert latencies[2] < 0.1, latencies  # the fallback alone: 0.125 s on average
