"""This process's environment changed for a block and put back afterwards: for set-ups that
run outside pytest's ``monkeypatch`` (the twins' shared set-up, the benchmarks)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from typing import Any


@contextlib.contextmanager
def environment(values: dict[str, str], unset: Iterable[str] = ()) -> Iterator[None]:
    """``values`` set and ``unset`` removed for the block, then what was there put back."""
    removed = [name for name in unset if name not in values]
    saved = {name: os.environ.get(name) for name in [*values, *removed]}
    os.environ.update(values)
    for name in removed:
        os.environ.pop(name, None)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# The client lease the twin fixtures give tests: short, so a test of a killed client sees its
# jobs stopped within seconds. A test of an integration marks itself
# ``@pytest.mark.client_lease(seconds)`` for a longer one: Prefect, Airflow or Dask in the
# test's process can hold up the renewals on a loaded machine, and the lease is not what it
# tests.
TWIN_LEASE_SECONDS = 3.0


def lease_seconds(node: Any) -> float:
    """The client lease for a test item: its ``client_lease`` mark's, or the twins' default."""
    marker = node.get_closest_marker("client_lease")
    return float(marker.args[0]) if marker is not None else TWIN_LEASE_SECONDS
