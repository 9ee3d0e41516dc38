"""How many tasks an agent hands a map worker at once (``agent/jobs_map._BatchPace``):
about 5 ms of work by the worker's own measure. On a machine with more processes than
cores a reply comes late whatever the task cost; sizing by the delay between replies shrank
batches to one task and collapsed throughput at 64 one-slot instances (issue 18). How far
ahead a slot queues work for its worker (``MapFeeder.take_spare``), and how results that
finish close together share a message (``map_feeder.HOLD_SECONDS``)."""

from __future__ import annotations

import asyncio
import pickle
import time
from pathlib import Path

import pytest

from meadowrun_core.agent import map_feeder
from meadowrun_core.agent.jobs_map import _BatchPace
from meadowrun_core.agent.map_feeder import MapFeeder, Task, _Held
from meadowrun_core.local.task_queue import SqliteTaskQueue
from meadowrun_core.map_messages import decode_message, encode_messages
from meadowrun_core.serialization import Signer


def test_tiny_tasks_replied_late_still_share_a_frame() -> None:
    pace = _BatchPace()
    for _ in range(5):
        time.sleep(0.02)  # the reply waited for a core
        held = pace.record(task_seconds=0.00002)  # the no-op itself took 20 us
        assert held >= 0.02  # the slot was held that long: what the task's cost prices
    assert pace.size == _BatchPace.MAX_TASKS


def test_long_tasks_go_one_by_one() -> None:
    pace = _BatchPace()
    for _ in range(5):
        pace.record(task_seconds=0.05)
    assert pace.size == 1


def test_without_the_workers_measure_the_reply_delay_counts() -> None:
    pace = _BatchPace()
    for _ in range(3):
        time.sleep(0.01)
        pace.record()
    assert pace.size == 1


def _feeder_with(pending: int, slots: int) -> MapFeeder:
    feeder = MapFeeder(None, None, "requests", "results", 1, 6.0)  # type: ignore[arg-type]
    held = _Held("receipt", {})
    feeder.pending.extend(Task(i, 1, b"", held) for i in range(pending))
    feeder.slots = slots
    return feeder


def test_a_slot_queues_work_ahead_only_from_tasks_to_spare() -> None:
    """A slot sends its worker a second batch while one runs (no gap between them), but
    only from the tasks beyond one for every slot on the instance: none is left waiting."""
    feeder = _feeder_with(pending=5, slots=2)
    assert [t.task_id for t in feeder.take_spare(4)] == [0, 1, 2]
    assert len(feeder.pending) == 2 and feeder.take_spare(4) == []
    assert _feeder_with(pending=2, slots=2).take_spare(1) == []
    assert [t.task_id for t in _feeder_with(pending=9, slots=1).take_spare(3)] == [0, 1, 2]


def test_results_wait_for_the_tasks_still_running_and_the_last_goes_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A result waits (up to ``HOLD_SECONDS``) while other tasks run on the instance, so
    results finishing close together share one message; once none runs, they go at once."""
    monkeypatch.setattr(map_feeder, "HOLD_SECONDS", 30.0)  # only the last result sends
    queues, signer = SqliteTaskQueue(tmp_path / "queues.db"), Signer(b"k" * 32)
    queues.create_queue("req")
    queues.create_queue("res")
    tasks = [(i, 1, pickle.dumps(i)) for i in range(3)]
    queues.send_batch("req", encode_messages(signer, None, tasks, 10, queues.max_message_bytes))

    async def scenario() -> tuple[list[int], float]:
        feeder = MapFeeder(queues, signer, "req", "res", 3, 30)
        feeder.slots = 2
        feeder.start()
        stop = asyncio.Event()
        first, rest = await feeder.next_tasks(stop, 1), await feeder.next_tasks(stop, 2)
        for task in [*first, rest[0]]:
            feeder.complete(task, True, pickle.dumps(task.task_id))
            await asyncio.sleep(0.3)
            assert queues.receive("res", 10, 30, 0.0) == [], "sent while a task still ran"
        began = time.monotonic()
        feeder.complete(rest[1], True, b"")
        (message,) = await queues.receive_async("res", 10, 30, 10.0)
        waited = time.monotonic() - began
        await feeder.close()
        return [r[0] for r in decode_message(signer, None, message.body)], waited

    sent, waited = asyncio.run(scenario())
    assert sent == [0, 1, 2]  # in one message
    assert waited < 10  # not held for the others: none was left running
