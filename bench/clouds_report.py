"""bench_clouds's table: the three clouds' figures side by side, with ratios against the local
cloud (and Azure against AWS) from the same run; text and Markdown renderings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.harness import Figures

LOCAL, AWS, AZURE = "local", "aws", "azure"
CLOUDS = (LOCAL, AWS, AZURE)
TITLES = {LOCAL: "local", AWS: "aws (moto + twin)", AZURE: "azure (twin + Azurite)"}
SECTION_HEADING = "## Clouds side by side (issue 13)"


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    unit: str
    higher_is_better: bool
    digits: int
    noise_key: str | None  # which measurement's others' CPU goes with it


def rows(config: dict[str, Any]) -> list[Row]:
    calls = config["warm_calls"]
    result = [
        Row(
            "warm_placed_ms",
            f"placed on a running instance, p50 ({calls} calls)",
            "ms",
            False,
            1,
            "warm",
        ),
        Row("warm_ms", "warm run_function round trip, p50", "ms", False, 1, "warm"),
        Row("cold_placed_s", "placed on a new instance, empty account", "s", False, 2, "cold"),
        Row("cold_s", "cold start, empty account, to the result", "s", False, 2, "cold"),
        Row(
            "new_placed_s",
            "placed on a new instance, new client of a set-up cloud",
            "s",
            False,
            2,
            "new",
        ),
        Row(
            "new_s", "cold start, new client of a set-up cloud, to the result", "s", False, 2, "new"
        ),
    ]
    for tasks in config["map_tasks"]:
        result.append(
            Row(
                f"map{tasks}_per_s",
                f"run_map, {tasks:,} no-op tasks, 2 at once",
                "tasks/s",
                True,
                0,
                f"map{tasks}",
            )
        )
    for what, label, unit in (
        ("warm run_function", "a warm run_function", "requests per call"),
        ("cold start", "cold start, empty account", "requests"),
        ("new client", "cold start, new client of a set-up cloud", "requests"),
        *(
            (f"run_map of {tasks:,}", f"run_map of {tasks:,} tasks", "requests per 1,000 tasks")
            for tasks in config["map_tasks"]
        ),
    ):
        result.append(Row(f"client {what}", f"{label}: client's requests", unit, False, 1, None))
        result.append(
            Row(
                f"served {what}",
                f"{label}: client + agents (emulators' count)",
                unit,
                False,
                1,
                None,
            )
        )
    return result


def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _ratio(mine: float | None, theirs: float | None) -> str:
    if mine is None or not theirs:
        return "-"
    ratio = mine / theirs
    return f"{ratio:.2f}x" if ratio >= 0.1 else f"{ratio:.2g}x"


HEADER = [
    "metric",
    "unit",
    *(TITLES[c] for c in CLOUDS),
    "aws/local",
    "azure/local",
    "azure/aws",
    "others' CPU local / aws / azure",
]


def table_rows(results: dict[str, Figures], config: dict[str, Any]) -> list[list[str]]:
    lines = []
    for row in rows(config):
        values = {c: results[c].values.get(row.key) for c in CLOUDS}
        direction = "higher" if row.higher_is_better else "lower"
        noise = "-"
        if row.noise_key is not None:
            noise = " / ".join(_fmt(results[c].others.get(row.noise_key), 2) for c in CLOUDS)
        lines.append(
            [
                row.label,
                f"{row.unit} ({direction} is better)",
                *(_fmt(values[c], row.digits) for c in CLOUDS),
                _ratio(values[AWS], values[LOCAL]),
                _ratio(values[AZURE], values[LOCAL]),
                _ratio(values[AZURE], values[AWS]),
                noise,
            ]
        )
    return lines


def footnotes(results: dict[str, Figures]) -> list[str]:
    lines = [f"{name}: {note}" for name, figures in results.items() for note in figures.notes]
    lines += [f"{name} FAILED: {f.error}" for name, f in results.items() if f.error]
    return lines


def render_text(results: dict[str, Figures], config: dict[str, Any]) -> str:
    table = [HEADER, *table_rows(results, config)]
    widths = [max(len(r[i]) for r in table) for i in range(len(HEADER))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(
        [
            *lines,
            "",
            "X/local = the cloud's figure divided by the local cloud's, both from this run.",
            *footnotes(results),
        ]
    )


def render_markdown(
    results: dict[str, Figures], config: dict[str, Any], command: str, machine: dict[str, str]
) -> str:
    table = ["| " + " | ".join(HEADER) + " |", "|---|---|" + "---:|" * (len(HEADER) - 2)]
    table += ["| " + " | ".join(r) + " |" for r in table_rows(results, config)]
    return "\n".join(
        [
            SECTION_HEADING,
            "",
            "```",
            command,
            "```",
            "",
            *table,
            "",
            *[f"- {line}" for line in footnotes(results)],
            "",
            "Machine:",
            "",
            *[f"- {key}: {value}" for key, value in machine.items()],
            "",
        ]
    )
