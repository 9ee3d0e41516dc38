"""The benchmark's table: metrics, targets, ratios, and the text and Markdown renderings.

Every ratio and every pass/fail is computed from the figures of one run; nothing here holds a
measured number.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

SECTION_HEADING = "## Core (issue 2)"
OURS = "meadowrun"
PEERS = ("dask", "ppe", "ray")

Figures = dict[str, dict[str, float]]


@dataclass
class Report:
    config: dict[str, Any]
    command: str
    machine: dict[str, str]
    figures: Figures
    notes: dict[str, list[str]]
    errors: dict[str, str]


@dataclass(frozen=True)
class Metric:
    key: str
    label: Callable[[dict[str, Any]], str]
    unit: str
    higher_is_better: bool | None  # None: context, not a figure to compare
    digits: int


@dataclass(frozen=True)
class Target:
    text: str
    check: Callable[[Figures], bool | None]


METRICS = (
    Metric("warm_p50_ms", lambda c: "warm run_function round trip, p50", "ms", False, 2),
    Metric("warm_p95_ms", lambda c: "warm run_function round trip, p95", "ms", False, 2),
    Metric("warm_cpu_us", lambda c: "machine CPU per warm round trip", "us", False, 0),
    Metric(
        "lone_p50_ms",
        lambda c: "warm round trip of lone calls (80 ms apart), p50",
        "ms",
        False,
        2,
    ),
    Metric("noop_tasks_per_s", lambda c: f"{c['map_tasks']:,} no-op tasks", "tasks/s", True, 0),
    Metric(
        "cpu_wall_s",
        lambda c: (
            f"{c['cpu_tasks']} tasks x {c['cpu_seconds'] * 1000:g} ms CPU on {c['workers']} workers"
        ),
        "s wall",
        False,
        2,
    ),
    Metric("cold_start_s", lambda c: "cold start, nothing to first result", "s", False, 2),
    Metric(
        "others_cores",
        lambda c: "CPU used by other processes, whole section (approx.)",
        "cores",
        None,
        2,
    ),
    Metric(
        "others_cores_cpu_map",
        lambda c: "CPU used by other processes during the CPU map",
        "cores",
        None,
        2,
    ),
)


def _figure(figures: Figures, system: str, key: str) -> float | None:
    return figures.get(system, {}).get(key)


def _absolute(key: str, limit: float, strict: bool) -> Callable[[Figures], bool | None]:
    def check(figures: Figures) -> bool | None:
        ours = _figure(figures, OURS, key)
        if ours is None:
            return None
        return ours < limit if strict else ours <= limit

    return check


def _relative(
    key: str, peer: str, factor: float, higher_is_better: bool
) -> Callable[[Figures], bool | None]:
    def check(figures: Figures) -> bool | None:
        ours, theirs = _figure(figures, OURS, key), _figure(figures, peer, key)
        if ours is None or theirs is None:
            return None
        return ours >= theirs * factor if higher_is_better else ours <= theirs * factor

    return check


def _all(*checks: Callable[[Figures], bool | None]) -> Callable[[Figures], bool | None]:
    def check(figures: Figures) -> bool | None:
        results = [c(figures) for c in checks]
        if any(r is False for r in results):
            return False
        return None if any(r is None for r in results) else True

    return check


# issue 2's targets, tightened by issue 18 (warm round trip, CPU map)
TARGETS = {
    "warm_p50_ms": Target(
        "<= 1.2 ms and <= ray",
        _all(
            _absolute("warm_p50_ms", 1.2, strict=False),
            _relative("warm_p50_ms", "ray", 1.0, False),
        ),
    ),
    "noop_tasks_per_s": Target(">= dask", _relative("noop_tasks_per_s", "dask", 1.0, True)),
    "cpu_wall_s": Target("<= 1.03 x ppe", _relative("cpu_wall_s", "ppe", 1.03, False)),
    "cold_start_s": Target("< 2 s", _absolute("cold_start_s", 2.0, strict=True)),
}


def _fmt(value: float | None, digits: int) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _ratio(figures: Figures, peer: str, key: str) -> str:
    ours, theirs = _figure(figures, OURS, key), _figure(figures, peer, key)
    if ours is None or not theirs:
        return "-"
    return f"{ours / theirs:.2f}x"


def _verdict(metric: Metric, figures: Figures) -> tuple[str, str]:
    target = TARGETS.get(metric.key)
    if target is None:
        return "-", "-"
    result = target.check(figures)
    return target.text, "n/a" if result is None else ("pass" if result else "FAIL")


HEADER = ["metric", "unit", OURS, *PEERS, *(f"mr/{p}" for p in PEERS), "target", "result"]


def table_rows(report: Report) -> list[list[str]]:
    rows = []
    for metric in METRICS:
        values = [
            _fmt(_figure(report.figures, s, metric.key), metric.digits) for s in (OURS, *PEERS)
        ]
        if metric.higher_is_better is None:
            ratios, unit = ["-"] * len(PEERS), f"{metric.unit} (machine noise)"
        else:
            ratios = [_ratio(report.figures, p, metric.key) for p in PEERS]
            direction = "higher" if metric.higher_is_better else "lower"
            unit = f"{metric.unit} ({direction} is better)"
        rows.append(
            [metric.label(report.config), unit, *values, *ratios, *_verdict(metric, report.figures)]
        )
    return rows


def render_text(report: Report) -> str:
    rows = [HEADER, *table_rows(report)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += [
        "",
        "mr/X = meadowrun's figure divided by X's figure, both from this run.",
        *_footnotes(report),
    ]
    return "\n".join(lines)


def _footnotes(report: Report) -> list[str]:
    lines = [f"{name}: {note}" for name, notes in report.notes.items() for note in notes]
    lines += [f"{name} FAILED: {error}" for name, error in report.errors.items()]
    config = report.config
    ideal = config["cpu_tasks"] * config["cpu_seconds"] / config["workers"]
    lines.append(f"ideal wall time of the CPU tasks: {ideal:.2f} s")
    return lines


def render_markdown(report: Report) -> str:
    rows = table_rows(report)
    table = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    table += ["| " + " | ".join(row) + " |" for row in rows]
    machine = [f"- {key}: {value}" for key, value in report.machine.items()]
    notes = [f"- {line}" for line in _footnotes(report)]
    mode = "quick (smoke) run" if report.config.get("quick") else "full run"
    return "\n".join(
        [
            SECTION_HEADING,
            "",
            f"Measured by `bench/bench_core.py` ({mode}), every system in turn with the same "
            f"{report.config['workers']} workers, in one run:",
            "",
            "```",
            report.command,
            "```",
            "",
            *table,
            "",
            "`mr/X` is meadowrun's figure divided by X's, both measured in this run.",
            "",
            "Machine:",
            "",
            *machine,
            "",
            "Set-up of each system:",
            "",
            *notes,
            "",
        ]
    )


def write_section(path: Path, section: str, heading: str = SECTION_HEADING) -> None:
    """Replace the section under ``heading`` in ``path`` (up to the next ``## ``), or add it."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# Performance\n\n{section}")
        return
    lines = path.read_text().splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == heading), None)
    if start is None:
        text = "".join(lines).rstrip("\n")
        path.write_text(f"{text}\n\n{section}")
        return
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    tail = "".join(lines[end:])
    path.write_text("".join(lines[:start]) + section + ("\n" + tail if tail else ""))


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def code_version() -> str:
    """The commit measured, and whether meadowrun_core had uncommitted changes."""
    import subprocess

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], capture_output=True, text=True, check=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git("status", "--porcelain", "--", "meadowrun_core")
    return f"commit {commit}" + (" plus uncommitted changes in meadowrun_core" if dirty else "")


def machine_description() -> dict[str, str]:
    import psutil

    from bench.load import background_load

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "CPU": f"{_cpu_model()}; nproc {usable} (os.cpu_count {os.cpu_count()})",
        "memory": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "python": f"{platform.python_implementation()} {sys.version.split()[0]}",
        "platform": platform.platform(),
        "versions": ", ".join(
            f"{p} {_version(p)}" for p in ("meadowrun-core", "dask", "distributed", "ray")
        ),
        "meadowrun-core code": code_version(),
        "busy before the run (other processes)": background_load(),
    }
