"""What jobs cost (``JobHandle.cost()``, ``TaskResult.cost``, ``meadowrun jobs``), on the real
local cloud: the seconds a job held its instance times its CPU share, at the instance's
price."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest
import workloads
from typer.testing import CliRunner

import meadowrun_core as mr
from meadowrun_core.cli import app
from meadowrun_core.local.allocation_table import SqliteAllocationTable
from meadowrun_core.seams.allocation_table import InstanceRecord

# What the client adds around a 1 s job on a warm instance (sending, worker start), with room
# for a loaded machine.
SLACK_SECONDS = 1.5


def _instances(home: Path) -> dict[str, InstanceRecord]:
    return {i.instance_id: i for i in SqliteAllocationTable(home / "state.db").list_instances()}


def test_a_jobs_cost_is_its_cpu_share_of_its_instances_price(local_cloud: Path) -> None:
    # a warm 2-CPU instance, so the 1-CPU job below holds half of it and no launch is counted
    assert mr.run_function(workloads.double, args=(1,), resources=mr.Resources(2, 2)) == 2
    (warm,) = _instances(local_cloud).values()
    assert warm.cpu_total == 2 and warm.price_per_hour > 0
    handle = mr.run_function(
        workloads.print_and_sleep,
        args=(1, 1.0),
        resources=mr.Resources(1, 1),
        wait_for_result=False,
        job_key="costed",
    )
    with pytest.raises(RuntimeError, match="has not ended"):
        handle.cost()
    assert handle.result(timeout=60) == "finished"
    assert handle.instance_id == warm.instance_id
    cost = handle.cost()
    assert isinstance(cost, mr.JobCost)
    assert 0.5 * 1.0 <= cost.instance_seconds <= 0.5 * (1.0 + SLACK_SECONDS)
    assert cost.cost > 0
    assert cost.cost == pytest.approx(cost.instance_seconds * warm.price_per_hour / 3600)
    assert cost.on_demand_cost == pytest.approx(cost.cost)  # the local cloud has no spot
    # another process's handle on the same keyed job reads the same record
    attached = mr.attach_job("costed")
    attached.result(timeout=30)
    assert attached.cost() == cost
    # and `meadowrun jobs` shows the same figures
    result = CliRunner().invoke(app, ["jobs", "--history", "5", "--json"])
    assert result.exit_code == 0, result.output
    (row,) = [r for r in json.loads(result.stdout) if r["job_id"] == handle.job_id]
    assert row["cost"] == pytest.approx(cost.cost)
    assert row["on_demand_cost"] == pytest.approx(cost.on_demand_cost)
    assert row["instance_seconds"] == pytest.approx(cost.instance_seconds, abs=1e-3)
    table = CliRunner().invoke(app, ["jobs", "--history", "5"]).stdout
    assert "COST" in table and f"${cost.cost:.6f}" in table


def test_a_job_never_placed_cost_nothing(local_cloud: Path) -> None:
    host = mr.AllocLocalInstance(max_cpu=1)
    busy = mr.run_function(
        workloads.print_and_sleep, args=(1, 3.0), host=host, wait_for_result=False
    )
    assert busy.wait_started(timeout=60)
    waiting = mr.run_function(workloads.double, args=(1,), host=host, wait_for_result=False)
    assert not waiting.wait_started(timeout=0.5)  # no room: still waiting for capacity
    waiting.cancel()
    assert waiting.done() and waiting.job_id is None
    assert waiting.cost() == mr.JobCost(0.0, 0.0, 0.0)
    assert busy.result(timeout=60) == "finished" and busy.cost().cost > 0


def test_each_map_task_result_carries_its_cost(local_cloud: Path) -> None:
    results = list(
        mr.run_map_as_completed(
            partial(workloads.slow_square, seconds=0.4),
            range(4),
            resources_per_task=mr.Resources(1, 1),
            num_concurrent_tasks=2,
        )
    )
    assert sorted(r.result[0] for r in results) == [0, 1, 4, 9]
    instances = _instances(local_cloud)
    for r in results:
        assert r.cost is not None, r
        instance = instances[r.result[1]]
        share = 1 / instance.cpu_total
        # the task's own run time on its slot: not the slot's start-up
        assert 0.4 * share <= r.cost.instance_seconds <= (0.4 + 0.3) * share, r.cost
        assert r.cost.cost == pytest.approx(
            r.cost.instance_seconds * instance.price_per_hour / 3600
        )
        assert r.cost.on_demand_cost == pytest.approx(r.cost.cost)
    # a failed task is priced too
    (failed,) = mr.run_map_as_completed(workloads.fail_with_value_error, ["boom"])
    assert not failed.is_success and failed.cost is not None and failed.cost.cost >= 0
