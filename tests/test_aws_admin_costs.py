"""Job costs on AWS (``job_costs``): exact figures from a stub history with spot, on-demand and
unpriced types, and the same report from DynamoDB's and SQLite's allocation tables.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from meadowrun_core.aws.costs import CostReport, costs_of_rows, job_costs
from meadowrun_core.aws.pricing import FixturePriceSource, PriceData
from meadowrun_core.local.allocation_table import SqliteAllocationTable
from tests.aws_admin_support import FIXTURE, ONE, REGION, SMALL, make_table

# the fixtures aws and checkip: pytest finds them in this module
from tests.aws_admin_support import checkip_server as checkip_server
from tests.aws_admin_support import moto_account as moto_account


def _row(instance_type: str, cpu: float, instance_cpu: float, seconds: float, price: float) -> Any:
    return {
        "instance_type": instance_type,
        "cpu": cpu,
        "instance_cpu": instance_cpu,
        "started": 1000.0,
        "ended": 1000.0 + seconds,
        "price_per_hour": price,
    }


class _History:
    def __init__(self, rows: list[Any]) -> None:
        self.rows = rows
        self.limits: list[int] = []

    def job_history(self, limit: int = 100) -> list[Any]:
        self.limits.append(limit)
        return self.rows[:limit]


def test_job_costs_exact_figures() -> None:
    prices = FixturePriceSource(FIXTURE).prices(REGION)
    assert (prices.on_demand["m5.large"], prices.on_demand["t3.large"]) == (0.096, 0.0832)
    history = _History(
        [
            _row("m5.large", 1, 2, 3600, 0.0359),  # spot, half the instance for an hour
            _row("t3.large", 2, 2, 1800, 0.0832),  # on-demand, the whole instance
            _row("local.small", 1, 1, 360, 0.1),  # a type with no on-demand price
        ]
    )
    report = job_costs(history, prices)
    assert history.limits == [10000]
    assert report.jobs == 3
    assert report.job_seconds == pytest.approx(5760)
    assert report.instance_seconds == pytest.approx(1800 + 1800 + 360)
    assert report.cost == pytest.approx(0.0359 / 2 + 0.0832 / 2 + 0.01)
    assert report.on_demand_cost == pytest.approx(0.096 / 2 + 0.0832 / 2 + 0.01)
    assert report.unpriced_types == ("local.small",)
    assert report.savings == pytest.approx(1 - 0.06955 / 0.0996)
    without_prices = job_costs(history, limit=1)
    assert without_prices == CostReport(1, 3600, 1800, 0.0359 / 2, None)
    assert without_prices.savings is None
    assert costs_of_rows([], {}) == CostReport(0, 0, 0, 0, 0)


def test_job_costs_reads_both_tables(aws: str, tmp_path: Path) -> None:
    """Rows as DynamoDB (dicts) and SQLite (``sqlite3.Row``) give them."""
    prices = PriceData(REGION, on_demand={"m5.large": 0.096})
    for table in (make_table(aws), SqliteAllocationTable(tmp_path / "state.db")):
        assert table.allocate_on_new_instance("i-1", SMALL, ["j-1"], ONE, "c", "d", 9, 9)
        assert table.deallocate("j-1", "succeeded")
        report = job_costs(table, prices)
        assert report.jobs == 1 and report.unpriced_types == ()
        held = report.job_seconds / 2  # 1 of 2 CPUs
        assert report.instance_seconds == pytest.approx(held)
        assert report.cost == pytest.approx(held / 3600 * 0.0359)
        assert report.on_demand_cost == pytest.approx(held / 3600 * 0.096)
