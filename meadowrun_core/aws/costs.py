"""What finished jobs cost, from any allocation table's job history (local or AWS).

Each job pays its CPU share of its instance's hourly price for the seconds it held it: a
1-CPU job on a 4-CPU instance held a quarter of that instance (the rule of
``meadowrun_core.job_cost``, which ``JobHandle.cost()`` uses too). The price paid is the one
the table recorded at launch (spot or on-demand); comparing it with the on-demand price of
the same instance type shows what choosing spot (and small types) saved.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from meadowrun_core.job_cost import cpu_share

if TYPE_CHECKING:  # only the type: the local cloud must not need boto3 to count costs
    from meadowrun_core.aws.pricing import PriceData


class HasJobHistory(Protocol):
    def job_history(self, limit: int = ...) -> Sequence[Any]: ...


@dataclass(frozen=True)
class CostReport:
    """Totals over ``jobs`` finished jobs.

    ``instance_seconds`` are the jobs' seconds weighted by their CPU share of the instance.
    ``on_demand_cost`` is None without prices; types with no on-demand price
    (``unpriced_types``) count there at the price paid."""

    jobs: int
    job_seconds: float
    instance_seconds: float
    cost: float
    on_demand_cost: float | None
    unpriced_types: tuple[str, ...] = ()

    @property
    def savings(self) -> float | None:
        """The fraction of the on-demand cost saved (0.7: paid 30% of on-demand)."""
        if not self.on_demand_cost:
            return None
        return 1 - self.cost / self.on_demand_cost


def _share(row: Any) -> float:
    return cpu_share(float(row["cpu"]), float(row["instance_cpu"] or 0))


def costs_of_rows(rows: Sequence[Any], on_demand: Mapping[str, float] | None) -> CostReport:
    """The report for history rows (dicts or ``sqlite3.Row``: ``started``, ``ended``, ``cpu``,
    ``instance_cpu``, ``price_per_hour``, ``instance_type``)."""
    job_seconds = instance_seconds = cost = on_demand_cost = 0.0
    unpriced: set[str] = set()
    for row in rows:
        seconds = max(0.0, float(row["ended"]) - float(row["started"]))
        held = seconds * _share(row)
        paid = float(row["price_per_hour"] or 0)
        job_seconds += seconds
        instance_seconds += held
        cost += held / 3600 * paid
        if on_demand is not None:
            instance_type = str(row["instance_type"])
            price = on_demand.get(instance_type)
            if price is None:
                unpriced.add(instance_type)
                price = paid
            on_demand_cost += held / 3600 * price
    return CostReport(
        jobs=len(rows),
        job_seconds=job_seconds,
        instance_seconds=instance_seconds,
        cost=cost,
        on_demand_cost=None if on_demand is None else on_demand_cost,
        unpriced_types=tuple(sorted(unpriced)),
    )


def job_costs(
    table: HasJobHistory, prices: PriceData | None = None, limit: int = 10000
) -> CostReport:
    """The cost of the last ``limit`` finished jobs, compared with on-demand when ``prices``
    are given."""
    return costs_of_rows(table.job_history(limit), None if prices is None else prices.on_demand)
