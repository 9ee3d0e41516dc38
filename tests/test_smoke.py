from __future__ import annotations

from pathlib import Path

import meadowrun_core as mr


def double(x: int) -> int:
    return 2 * x


def test_run_function_returns_result(local_cloud: Path) -> None:
    assert mr.run_function(double, args=(21,)) == 42


def test_run_map_in_order(local_cloud: Path) -> None:
    assert mr.run_map(double, range(50)) == [2 * i for i in range(50)]
