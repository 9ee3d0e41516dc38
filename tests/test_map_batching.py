"""How many tasks an agent hands a map worker at once (``agent/jobs_map._BatchPace``):
about 5 ms of work by the worker's own measure. On a machine with more processes than
cores a reply comes late whatever the task cost; sizing by the delay between replies shrank
batches to one task and collapsed throughput at 64 one-slot instances (issue 18)."""

from __future__ import annotations

import time

from meadowrun_core.agent.jobs_map import _BatchPace


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
