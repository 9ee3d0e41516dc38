"""This process's environment changed for a block and put back afterwards: for set-ups that
run outside pytest's ``monkeypatch`` (the twins' shared set-up, the benchmarks)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator


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
