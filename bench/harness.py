"""What the cloud benchmarks (bench_aws, bench_clouds) share: one cloud's figures, percentiles,
a scoped environment, the machine-noise meter, and the cold start's milestones from log records.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass
class Figures:
    """One cloud's figures, and the cores other processes used while each was measured."""

    values: dict[str, float] = field(default_factory=dict)
    others: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    error: str | None = None


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), linear between the closest ranks."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@contextlib.contextmanager
def metered(figures: Figures, key: str, quiet_wait: float) -> Iterator[None]:
    """Wait for a quiet machine, then record the cores others used during the block."""
    from bench.load import CpuMeter, wait_until_quiet

    if quiet_wait:
        wait_until_quiet(quiet_wait)
    meter = CpuMeter()
    meter.start()
    yield
    figures.others[key] = meter.stop()


class Milestones(logging.Handler):
    """When the cold start's steps happened, from the log records that mark them."""

    LOGGERS: ClassVar[dict[str, tuple[int, dict[str, str]]]] = {  # logger: (level, {text: step})
        "meadowrun_core.client.payload": (logging.DEBUG, {"uploaded ": "code mirrored"}),
        "meadowrun_core.client.allocation": (
            logging.INFO,
            {"launching ": "launch decided", "waiting for capacity": "waiting for capacity"},
        ),
        "meadowrun_core.aws.ec2_provider": (logging.INFO, {"launched EC2": "RunInstances done"}),
        "tests.ec2_hosts": (logging.INFO, {" up: ssh ": "test host up"}),
        "meadowrun_core.azure.vm_provider": (logging.INFO, {"created Azure": "VM created"}),
        "tests.ec2_twin": (logging.INFO, {"twin host for": "twin host booted"}),
        "tests.azure_twin_hosts": (logging.INFO, {"twin host for": "twin host booted"}),
        "meadowrun_core.remote.ssh": (logging.DEBUG, {"not ready yet": "SSH retry"}),
    }

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.steps: list[tuple[float, str]] = []
        self._saved: dict[str, tuple[int, bool]] = {}

    def emit(self, record: logging.LogRecord) -> None:
        _, texts = self.LOGGERS.get(record.name, (0, {}))
        message = record.getMessage()
        self.steps.extend(
            (time.perf_counter(), step) for text, step in texts.items() if text in message
        )

    def __enter__(self) -> Milestones:
        for name, (level, _) in self.LOGGERS.items():
            logger = logging.getLogger(name)
            self._saved[name] = (logger.level, logger.propagate)
            logger.setLevel(level)
            logger.propagate = False
            logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        for name, (level, propagate) in self._saved.items():
            logger = logging.getLogger(name)
            logger.removeHandler(self)
            logger.setLevel(level)
            logger.propagate = propagate

    def describe(self, began: float) -> str:
        return ", ".join(f"{step} {at - began:.2f}" for at, step in self.steps)


def checked_noop_map(host: Any, deployment: Any, tasks: int, resources: Any, at_once: int) -> None:
    """``run_map`` of ``tasks`` no-op tasks on ``host``; raises unless every result came back
    right (a benchmark of wrong answers measures nothing)."""
    import meadowrun_core as mr
    from bench.workloads import noop

    results = mr.run_map(
        noop,
        range(tasks),
        host=host,
        resources_per_task=resources,
        num_concurrent_tasks=at_once,
        deployment=deployment,
    )
    if results != list(range(tasks)):
        raise RuntimeError("run_map returned wrong answers")


def footnotes(results: dict[str, Figures]) -> list[str]:
    """Each system's notes, then its failure if it failed."""
    lines = [f"{name}: {note}" for name, figures in results.items() for note in figures.notes]
    lines += [f"{name} FAILED: {f.error}" for name, f in results.items() if f.error]
    return lines


def aligned(table: list[list[str]]) -> list[str]:
    """``table`` (a header row first) as text columns, a rule under the header."""
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines
