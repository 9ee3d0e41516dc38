"""What a job's time on its instance cost, in one small record that ``JobHandle.cost()``,
``TaskResult.cost`` and ``meadowrun jobs`` / ``costs`` all compute the same way.

A job pays its CPU share of its instance's hourly price for the seconds it held it: a 1-CPU
job on a 4-CPU instance held a quarter of that instance. The price is the one recorded when
the instance launched (spot or on-demand); the on-demand cost prices the same
instance-seconds at the type's on-demand price, so the two show what spot saved.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class JobCost:
    """What a job (or one map task) cost.

    ``instance_seconds``: the seconds it held its instance times its CPU share of that
    instance (10 s of a 1-CPU job on a 4-CPU instance: 2.5). ``cost``: USD at the price the
    instance launched at (spot or on-demand; the local cloud's modelled prices).
    ``on_demand_cost``: USD for the same instance-seconds at the type's on-demand price (the
    local cloud has no spot: equal to ``cost``).

    Example::

        handle = mr.run_function(f, wait_for_result=False)
        handle.result()
        print(handle.cost().cost)
    """

    instance_seconds: float
    cost: float
    on_demand_cost: float

    def __add__(self, other: JobCost) -> JobCost:
        return JobCost(
            self.instance_seconds + other.instance_seconds,
            self.cost + other.cost,
            self.on_demand_cost + other.on_demand_cost,
        )


NO_COST = JobCost(0.0, 0.0, 0.0)


def cpu_share(cpu: float, instance_cpu: float) -> float:
    """The fraction of its instance a job of ``cpu`` CPUs holds (the whole of an instance
    whose size is unknown)."""
    return float(cpu) / float(instance_cpu) if instance_cpu else 1.0


def priced(
    seconds: float, share: float, price_per_hour: float, on_demand_per_hour: float | None
) -> JobCost:
    """``seconds`` held at ``share`` of an instance; ``on_demand_per_hour`` None: not known,
    counted at the price paid."""
    held = max(0.0, seconds) * share
    on_demand = price_per_hour if on_demand_per_hour is None else on_demand_per_hour
    return JobCost(held, held / 3600 * price_per_hour, held / 3600 * on_demand)


def cost_of_history_row(row: Any, on_demand_per_hour: float | None) -> JobCost:
    """The cost of one finished job from its job-history row (SQLite or DynamoDB: ``started``,
    ``ended``, ``cpu``, ``instance_cpu``, ``price_per_hour``)."""
    return priced(
        float(row["ended"]) - float(row["started"]),
        cpu_share(float(row["cpu"]), float(row["instance_cpu"] or 0)),
        float(row["price_per_hour"] or 0),
        on_demand_per_hour,
    )
