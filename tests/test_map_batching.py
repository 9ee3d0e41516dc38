"""How many tasks an agent hands a map worker at once (``agent/jobs_map._BatchPace``):
about 5 ms of work by the worker's own measure. On a machine with more processes than
cores a reply comes late whatever the task cost; sizing by the delay between replies shrank
batches to one task and collapsed throughput at 64 one-slot instances (issue 18). And how far
ahead a slot queues work for its worker (``MapFeeder.take_spare``)."""

from __future__ import annotations

import time

from meadowrun_core.agent.jobs_map import _BatchPace
from meadowrun_core.agent.map_feeder import MapFeeder, Task, _Held


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
