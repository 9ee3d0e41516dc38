"""bench_aws's table: its metrics, the local / AWS ratios, text and Markdown renderings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.aws_ops import (
    AWS,
    CONCURRENT_TASKS,
    LOCAL,
    SECTION_HEADING,
    WARM_UP_CALLS,
    WARM_UP_TASKS,
)
from bench.harness import Figures, aligned, footnotes


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    higher_is_better: bool
    digits: int
    noise_key: str  # which measurement's others' CPU goes with it


def metrics(config: dict[str, Any]) -> list[Metric]:
    cycles, calls, tasks = config["cycles"], config["warm_calls"], config["tasks"]
    return [
        Metric(
            "alloc_p50_ms",
            f"allocate + deallocate through the seam, p50 ({cycles} cycles)",
            "ms",
            False,
            2,
            "alloc",
        ),
        Metric(
            "alloc_p95_ms", "allocate + deallocate through the seam, p95", "ms", False, 2, "alloc"
        ),
        Metric(
            "alloc_per_s", "allocate + deallocate cycles per second", "cycles/s", True, 0, "alloc"
        ),
        Metric("cold_start_s", "cold start, no instance to first result", "s", False, 2, "cold"),
        Metric(
            "warm_p50_ms",
            f"warm run_function round trip, p50 ({calls} calls)",
            "ms",
            False,
            1,
            "warm",
        ),
        Metric("warm_p95_ms", "warm run_function round trip, p95", "ms", False, 1, "warm"),
        Metric(
            "map_tasks_per_s",
            f"run_map, {tasks:,} no-op tasks, {CONCURRENT_TASKS} at once",
            "tasks/s",
            True,
            0,
            "map",
        ),
    ]


# --- the report ---------------------------------------------------------------------------------
def _fmt(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _fmt_ratio(ratio: float) -> str:
    return f"{ratio:.2f}x" if ratio >= 0.1 else f"{ratio:.2g}x"


HEADER = ["metric", "unit", "local", "aws (moto)", "aws/local", "others' CPU local / aws (cores)"]


def table_rows(results: dict[str, Figures], config: dict[str, Any]) -> list[list[str]]:
    rows = []
    for metric in metrics(config):
        local = results[LOCAL].values.get(metric.key)
        aws = results[AWS].values.get(metric.key)
        ratio = "-" if not local or aws is None else _fmt_ratio(aws / local)
        direction = "higher" if metric.higher_is_better else "lower"
        noise = " / ".join(_fmt(results[s].others.get(metric.noise_key), 2) for s in (LOCAL, AWS))
        rows.append(
            [
                metric.label,
                f"{metric.unit} ({direction} is better)",
                _fmt(local, metric.digits),
                _fmt(aws, metric.digits),
                ratio,
                noise,
            ]
        )
    return rows


def render_text(results: dict[str, Figures], config: dict[str, Any]) -> str:
    lines = aligned([HEADER, *table_rows(results, config)])
    lines += [
        "",
        "aws/local = the AWS-on-moto figure divided by the local cloud's, both from this run.",
        *footnotes(results),
    ]
    return "\n".join(lines)


def render_markdown(
    results: dict[str, Figures], config: dict[str, Any], command: str, machine: dict[str, str]
) -> str:
    rows = table_rows(results, config)
    table = ["| " + " | ".join(HEADER) + " |", "|---|---|" + "---:|" * (len(HEADER) - 2)]
    table += ["| " + " | ".join(row) + " |" for row in rows]
    mode = "quick (smoke) run" if config["quick"] else "full run"
    return "\n".join(
        [
            SECTION_HEADING,
            "",
            f"Measured by `bench/bench_aws.py` ({mode}): every figure on the local cloud, then on "
            "`AllocEC2Instance` against AWS emulated in the same process, in one run:",
            "",
            "```",
            command,
            "```",
            "",
            *table,
            "",
            "`aws/local` is the AWS figure divided by the local cloud's, both measured in this "
            'run. "Others\' CPU" is the cores other processes on the machine used while that '
            "figure was measured (noise, not a result).",
            "",
            "What the AWS figures include: the real AWS code path (boto3 over HTTP to DynamoDB, "
            "EC2, S3 and SQS; SSH with a pinned host key to start the agent and forward its "
            "port), but moto's server on loopback stands in for AWS, so network latency to real "
            "AWS endpoints and the speed of real DynamoDB/SQS/S3 are not in them, and each EC2 "
            "instance is a loopback SSH server started as soon as moto reports the launch "
            "(tests/ec2_hosts.py), so real EC2 boot time (typically tens of seconds) is not in "
            "the cold start. The AWS cold start does include setting up an empty account (bucket,"
            " secret, DynamoDB table, security group, instance profile), mirroring the "
            "repository's code into S3 object by object, the EC2 launch call, the SSH connection "
            "and the agent's start (the notes below say when each step ended). moto and the test "
            "hosts run on the same machine as the client and share its CPUs with it; every AWS "
            "request costs a round trip through boto3 and moto's HTTP server (one GetItem's p50 "
            "is in the notes), so the AWS figures scale with the number of requests each "
            "operation makes, also counted below. `DynamoDbAllocationTable` lists instances "
            "through a sparse index on `kind` (a Query that real DynamoDB answers from the "
            "instance items alone), but moto evaluates an index query by walking every stored "
            "item, so on moto the cycle still slows as history items accumulate (first and last "
            "cycles in the notes).",
            "",
            "How: (1) one instance launched and registered in the allocation table, then "
            f"{config['cycles']} cycles of `allocate_on_existing` of one job of `Resources(1, 1)` "
            "plus `deallocate`, on `SqliteAllocationTable` (temp file) and on "
            "`DynamoDbAllocationTable` on moto (table made with `.create()`); (2) the first "
            "`run_function` of a no-op with nothing running (local: fresh `MEADOWRUN_HOME`; AWS: "
            "moto reset, no test host); (3) "
            f"{WARM_UP_CALLS} untimed then {config['warm_calls']} timed `run_function` calls; "
            f"(4) an untimed `run_map` of {WARM_UP_TASKS} tasks, then one of {config['tasks']:,} "
            f"no-op tasks with `num_concurrent_tasks={CONCURRENT_TASKS}`. Both clouds: "
            "`Resources(1, 1)`, `Deployment.mirror_local(interpreter=PreinstalledInterpreter("
            "sys.executable))`; local cloud with `MEADOWRUN_LOCAL_MAX_CPU=2`; AWS with the "
            "environment of tests/test_aws_e2e.py (`MEADOWRUN_LEASE_SECONDS=3`, "
            "`MEADOWRUN_VISIBILITY_TIMEOUT=6`, price fixture tests/fixtures/aws).",
            "",
            *[f"- {line}" for line in footnotes(results)],
            "",
            "Machine:",
            "",
            *[f"- {key}: {value}" for key, value in machine.items()],
            "",
        ]
    )
