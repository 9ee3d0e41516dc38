"""The other clients of tests/test_priority.py: each runs in a process of its own (a client
with its own id and lease, sharing the test's ``MEADOWRUN_HOME``), so the raffle is tested
across clients, not only across threads of one."""

from __future__ import annotations

import workloads

import meadowrun_core as mr


def start_of_one_job(priority: float, go: str, max_cpu: float) -> float:
    """Runs one 1-CPU job at ``priority`` (it waits for room like any other); when it
    started on its instance."""
    return float(
        mr.run_function(
            workloads.start_time_after_waiting_for,
            args=(go,),
            host=mr.AllocLocalInstance(max_cpu=max_cpu),
            resources=mr.Resources(logical_cpu=1, memory_gb=0.5),
            priority=priority,
        )
    )
