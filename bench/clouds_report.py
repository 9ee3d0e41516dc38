"""bench_clouds's table: the three clouds' figures side by side, with ratios against the local
cloud (and Azure against AWS) from the same run; text and Markdown renderings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.clouds_ops import WARM_UP_CALLS, WARM_UP_TASKS
from bench.harness import Figures, aligned, footnotes

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


def render_text(results: dict[str, Figures], config: dict[str, Any]) -> str:
    lines = aligned([HEADER, *table_rows(results, config)])
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
            "Measured by `bench/bench_clouds.py`: the local cloud, AWS (moto's server + the "
            "EC2 twin) and Azure (the Azure twin + Azurite + twin hosts), one after the other "
            "in one run (as root: the run makes its twin network and removes it):",
            "",
            "```",
            command,
            "```",
            "",
            *table,
            "",
            "`X/local` is the cloud's figure divided by the local cloud's, `azure/aws` Azure's "
            "by AWS's, all from this run. \"Others' CPU\" is the cores other processes used "
            "while the figure was measured (noise, not a result).",
            "",
            "**Emulator latency is not a cloud's.** moto, the Azure twin, Azurite, the twin "
            "hosts (each a network namespace with its own sshd, firewall and metadata service) "
            "and the client all run on this machine and share its cores; every request is a "
            "round trip to a Python or Node server on the host side of a veth pair, not to a "
            "real endpoint, and a twin host is up within a second of the launch call where a "
            "real VM takes tens of seconds to boot. The AWS and Azure figures compare "
            "meadowrun's code paths and their "
            "request counts on the two emulations, not the speed of EC2 or Azure. Azurite "
            "writes a debug log for every request in this run (that is how its requests are "
            "counted), which may slow it (not measured).",
            "",
            "What is measured, per cloud: (1) the cold start, the first `run_function` of a "
            "no-op with nothing running on an empty account (AWS: moto just reset; Azure: the "
            "storage account's name and key in the vault, as the tests' install step leaves "
            "it, nothing else), to its result; *placed* is when the client's allocation "
            "returned, i.e. the job was placed on the new instance once its agent registered "
            "(launch, boot, bootstrap from the object store, agent start included); (2) "
            f"{WARM_UP_CALLS} untimed then {config['warm_calls']} timed warm calls: *placed* "
            "is the call to its job placed on the running instance (the allocation path "
            "without a launch), beside the whole round trip; (3) an untimed `run_map` of "
            f"{WARM_UP_TASKS} tasks, then the timed maps of no-op tasks with "
            "`num_concurrent_tasks=2` on the instances that are up; (4) a new client of the "
            "now set-up cloud (every instance deleted, a fresh `MEADOWRUN_HOME`, nothing "
            "mirrored in the process) and its cold start. Every cloud: `Resources(1, 1)`; "
            "local: `MEADOWRUN_LOCAL_MAX_CPU=2` and the caller's interpreter; the twins: the "
            "environment of their test fixtures (`MEADOWRUN_LEASE_SECONDS=3`, "
            "`MEADOWRUN_VISIBILITY_TIMEOUT=6`) and the agent's interpreter on the host.",
            "",
            "Requests: *client's* are those this process's SDK clients sent (boto3's "
            "`before-call` event; azure-core's `RequestsTransport.send`), the client's lease "
            "renewals (one a second here, whatever it does) left out; *client + agents* are "
            "those the emulators answered meanwhile: moto's WSGI app (less the EC2 twin's own "
            "DescribeInstances/DescribeSecurityGroups polling, counted on its boto3 client and "
            "subtracted), the Azure twin's request list (ARM, Key Vault, the managed identity "
            "endpoint, Retail Prices) and Azurite's debug log (Table, Queue, Blob); the "
            "instance metadata services are not counted. Per operation below; the "
            "warm-call counts are over all the timed calls.",
            "",
            *[f"- {line}" for line in footnotes(results)],
            "",
            "Machine:",
            "",
            *[f"- {key}: {value}" for key, value in machine.items()],
            "",
        ]
    )
