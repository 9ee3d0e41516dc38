"""What each map task cost (``TaskResult.cost``): the seconds it ran on its worker slot, as the
agent measured them, times the slot's CPU share of its instance, at the instance's price.

A slot's start-up (launching, building its environment) and its idle time between tasks are
not any one task's: they are in the slot's own record (``meadowrun jobs --history``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from meadowrun_core.backend import Backend
from meadowrun_core.job_cost import NO_COST, JobCost, cpu_share, priced
from meadowrun_core.resources import Resources


class TaskCosts:
    """The cost of each task's attempts received so far, until the task is reported."""

    def __init__(self, backend: Backend, resources: Resources) -> None:
        self._backend = backend
        self._resources = resources
        self._costs: dict[int, JobCost] = {}
        self._on_demand: dict[str, float | None] = {}

    def add(self, result: Sequence[Any], placements: Mapping[str, Any]) -> None:
        """Count one result message item (``map_messages.ResultTuple``) against its task;
        items from agents that did not measure (earlier versions, lost tasks) count nothing."""
        if len(result) < 7 or result[5] not in placements:
            return
        instance = placements[result[5]].instance
        if instance.instance_type not in self._on_demand:
            self._on_demand[instance.instance_type] = self._backend.provider.on_demand_price(
                instance.instance_type
            )
        cost = priced(
            float(result[6]),
            cpu_share(self._resources.logical_cpu, instance.cpu_total),
            instance.price_per_hour,
            self._on_demand[instance.instance_type],
        )
        self._costs[result[0]] = self._costs.get(result[0], NO_COST) + cost

    def carry(self, task_id: int, cost: JobCost | None) -> None:
        """Count attempts made elsewhere (a task moved to a wave of bigger slots after it ran
        out of memory keeps the cost of its earlier attempts)."""
        if cost is not None:
            self._costs[task_id] = self._costs.get(task_id, NO_COST) + cost

    def pop(self, task_id: int) -> JobCost | None:
        """The task's cost as it is reported (None: nothing measured)."""
        return self._costs.pop(task_id, None)
