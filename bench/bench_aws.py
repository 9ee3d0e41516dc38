"""AWS benchmark (issue 4): the allocation path and ``run_map`` task throughput of
``AllocEC2Instance`` against moto's server, as ratios to the local cloud measured in the same run.

    .venv/bin/python -m bench.bench_aws                           # full run, about 2-3 min
    .venv/bin/python -m bench.bench_aws --quick                   # smoke run, under 1 min
    .venv/bin/python -m bench.bench_aws --quiet-wait 20 --markdown docs/performance.md

Every figure is measured first on the local cloud, then on AWS emulated by moto's server over
HTTP on loopback, with each launched EC2 instance played by a loopback SSH "test host"
(tests/ec2_hosts.py), exactly as tests/test_aws_e2e.py sets it up:

1. Allocation path through the ``AllocationTable`` seam: one instance launched and registered,
   then ``allocate_on_existing`` of one job onto it plus ``deallocate``, repeated;
   ``SqliteAllocationTable`` (a temp file) against ``DynamoDbAllocationTable`` on moto.
2. Cold start: ``run_function`` of a no-op from no instance to its result (local: a fresh
   ``MEADOWRUN_HOME``; AWS: a freshly reset moto account and no test host).
3. Warm ``run_function`` round trip (the instance is up and idle).
4. ``run_map`` throughput: no-op tasks, ``num_concurrent_tasks=2``, after an untimed warm-up
   map so that the instances exist.

The same ``Resources(1, 1)`` and the same deployment (``mirror_local`` with
``PreinstalledInterpreter(sys.executable)``, the one the AWS test hosts can run) for both clouds;
``MEADOWRUN_LOCAL_MAX_CPU=2`` for the local one.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import meadowrun_core as mr
from bench.workloads import noop

SECTION_HEADING = "## AWS (issue 4)"
REGION = "us-east-1"
REPO = Path(__file__).resolve().parent.parent
PRICE_FIXTURE = REPO / "tests" / "fixtures" / "aws"
LOCAL, AWS = "local", "aws"
RESOURCES = mr.Resources(1, 1)
CONCURRENT_TASKS = 2
WARM_UP_CALLS = 3
WARM_UP_TASKS = 20
HEARTBEAT_EVERY_S = 2.0  # the seam's instance must look alive (it is "dead" after 10 s)

# The environment of tests/test_aws_e2e.py's ``aws`` fixture, set only around the AWS part.
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "MEADOWRUN_AWS_PRICE_FIXTURE": str(PRICE_FIXTURE),
    "MEADOWRUN_LEASE_SECONDS": "3",
    "MEADOWRUN_VISIBILITY_TIMEOUT": "6",
    "MEADOWRUN_RECONCILE_INTERVAL": "0.5",
}


def progress(message: str) -> None:
    print(f"[bench_aws] {message}", file=sys.stderr, flush=True)


@dataclass
class Figures:
    """One cloud's figures, and the cores other processes used while each was measured."""

    values: dict[str, float] = field(default_factory=dict)
    others: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    error: str | None = None


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


# --- helpers ------------------------------------------------------------------------------------
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
def environment(values: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the block, then put back what was there."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


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
        "meadowrun_core.client.allocation": (logging.INFO, {"launching ": "launch decided"}),
        "meadowrun_core.aws.ec2_provider": (logging.INFO, {"launched EC2": "RunInstances done"}),
        "tests.ec2_hosts": (logging.INFO, {" up: ssh ": "test host up"}),
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


SERVED = "(served)"
LEASE = "lease:"
LEASE_THREAD = "meadowrun-lease"  # meadowrun_core.client.runtime's lease thread


class RequestCounter(logging.Handler):
    """AWS requests sent by this process's boto3 clients created after ``start`` (those of
    the AWS backend), by service and operation; and every request moto's server answered
    (the client's, the agents' and the test hosts'), from its request log."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.counts: dict[str, int] = {}
        self.served = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.served += 1  # werkzeug logs one record per request

    def watch_server(self) -> None:
        server_log = logging.getLogger("werkzeug")
        server_log.setLevel(logging.INFO)
        server_log.propagate = False
        server_log.addHandler(self)

    def unwatch_server(self) -> None:
        server_log = logging.getLogger("werkzeug")
        server_log.removeHandler(self)
        server_log.setLevel(logging.ERROR)

    def start(self) -> RequestCounter:
        import boto3

        if boto3.DEFAULT_SESSION is None:
            boto3.setup_default_session()
        assert boto3.DEFAULT_SESSION is not None
        boto3.DEFAULT_SESSION.events.register("before-call", self._count)
        return self

    def _count(self, event_name: str = "", **_: Any) -> None:
        operation = event_name.removeprefix("before-call.")
        if threading.current_thread().name == LEASE_THREAD:
            # the client's lease: one PutItem every lease/3 seconds while it lives, whatever
            # it does, so counted apart from the requests that an operation makes
            operation = LEASE + operation
        self.counts[operation] = self.counts.get(operation, 0) + 1

    def total(self) -> int:
        return sum(n for op, n in self.counts.items() if not op.startswith(LEASE))

    def snapshot(self) -> dict[str, int]:
        return {**self.counts, SERVED: self.served}

    def since(self, before: dict[str, int], top: int = 40) -> str:
        delta = {op: n - before.get(op, 0) for op, n in self.counts.items()}
        leases = sum(n for op, n in delta.items() if op.startswith(LEASE))
        delta = {op: n for op, n in delta.items() if n > 0 and not op.startswith(LEASE)}
        common = sorted(delta.items(), key=lambda item: -item[1])[:top]
        return (
            f"{sum(delta.values())} (most: "
            + ", ".join(f"{op} {n}" for op, n in common)
            + f"), and apart from them {leases} lease renewal(s) of the client's lease "
            f"thread; moto answered {self.served - before[SERVED]} in all meanwhile "
            "(client, agents, test hosts)"
        )

    def sent_since(self, before: dict[str, int]) -> int:
        return self.total() - sum(
            n for op, n in before.items() if op != SERVED and not op.startswith(LEASE)
        )


# --- 1. the allocation path through the seam ---------------------------------------------------
def bench_allocation(
    table: Any,
    cycles: int,
    figures: Figures,
    quiet_wait: float,
    requests: Callable[[], int] | None = None,
) -> None:
    """``requests``: how many requests the table has sent so far, where it sends any."""
    from meadowrun_core.seams.instance_provider import InstanceType

    instance_id = f"i-bench-{uuid.uuid4().hex[:8]}"
    client_id = "bench-client"
    table.renew_lease(client_id, os.getpid(), 600)
    # one registered instance with room: 4 CPUs, one job of 1 CPU at a time
    small = InstanceType("bench.small", 4, 8, 0.1)
    assert table.allocate_on_new_instance(
        instance_id, small, [], RESOURCES, client_id, "bench", 64, 256
    )
    table.register_instance(instance_id, "127.0.0.1:1", os.getpid())
    for number in range(5):  # untimed: connections, caches
        job = f"warm-{number}"
        table.allocate_on_existing([job], RESOURCES, client_id, "bench")
        table.deallocate(job, "done")
    times: list[float] = []
    last_beat = time.monotonic()
    sent = 0
    with metered(figures, "alloc", quiet_wait):
        for number in range(cycles):
            if time.monotonic() - last_beat > HEARTBEAT_EVERY_S:  # what the agent does; untimed
                table.heartbeat(instance_id)
                last_beat = time.monotonic()
            job = f"job-{number}"
            before = requests() if requests else 0
            began = time.perf_counter()
            placed = table.allocate_on_existing([job], RESOURCES, client_id, "bench")
            freed = table.deallocate(job, "done")
            times.append(time.perf_counter() - began)
            sent += (requests() - before) if requests else 0
            if placed != {job: instance_id} or not freed:
                raise RuntimeError(f"cycle {number}: placed {placed}, freed {freed}")
    figures.values["alloc_p50_ms"] = percentile(times, 50) * 1000
    figures.values["alloc_p95_ms"] = percentile(times, 95) * 1000
    figures.values["alloc_per_s"] = len(times) / sum(times)
    tenth = max(1, cycles // 10)
    first, last = statistics.median(times[:tenth]), statistics.median(times[-tenth:])
    figures.notes.append(
        f"allocation cycles: median of the first {tenth} {first * 1000:.2f} ms, "
        f"of the last {tenth} {last * 1000:.2f} ms"
        + (f"; {sent / cycles:.1f} requests per cycle" if requests else "")
    )


def mirrored(host: mr.Host) -> str:
    """What the code mirror of this cloud has uploaded so far (files, bytes)."""
    from meadowrun_core.client import payload
    from meadowrun_core.client.runtime import ClientRuntime

    mirror = payload._mirrors.get(ClientRuntime.get().backend(host).key)
    if mirror is None:
        return "nothing"
    return f"{len(mirror._files):,} files, {mirror.bytes_uploaded / 1e6:.1f} MB"


def get_item_ms(table: Any, count: int = 50) -> float:
    """Milliseconds of one consistent GetItem, p50: the unit cost of the DynamoDB seam."""
    times = []
    for _ in range(count):
        began = time.perf_counter()
        table.get_instance("none")
        times.append(time.perf_counter() - began)
    return percentile(times, 50) * 1000


# --- 2-4. the client API ------------------------------------------------------------------------
def bench_client(
    host: mr.Host,
    deployment: mr.Deployment,
    config: dict[str, Any],
    figures: Figures,
    quiet_wait: float,
    count_instances: Callable[[], int],
    requests: RequestCounter | None = None,
) -> None:
    def counted(before: dict[str, int] | None, what: str, per: int = 1) -> None:
        if requests is not None and before is not None:
            figures.values[f"requests {what}"] = requests.sent_since(before) / per
            figures.values[f"served {what}"] = (requests.served - before[SERVED]) / per
            if per == 1:
                figures.notes.append(
                    f"AWS requests by the client, {what}: {requests.since(before)}"
                )
            else:
                sent = requests.sent_since(before)
                served = requests.served - before[SERVED]
                figures.notes.append(
                    f"AWS requests by the client, {what}: {sent / per:.2f} "
                    f"per task, moto answered {served / per:.2f} per task in "
                    f"all; {requests.since(before)}"
                )

    def call() -> None:
        if (
            mr.run_function(noop, host=host, resources=RESOURCES, deployment=deployment, args=(7,))
            != 7
        ):
            raise RuntimeError("run_function returned a wrong answer")

    def run_map(tasks: int) -> None:
        results = mr.run_map(
            noop,
            range(tasks),
            host=host,
            resources_per_task=RESOURCES,
            num_concurrent_tasks=CONCURRENT_TASKS,
            deployment=deployment,
        )
        if results != list(range(tasks)):
            raise RuntimeError("run_map returned wrong answers")

    before = requests.snapshot() if requests else None
    with metered(figures, "cold", quiet_wait), Milestones() as milestones:
        began = time.perf_counter()
        call()
        figures.values["cold_start_s"] = time.perf_counter() - began
    progress(f"  cold start {figures.values['cold_start_s']:.2f} s")
    if steps := milestones.describe(began):
        figures.notes.append(
            f"cold start, seconds from the call: {steps}, result "
            f"{figures.values['cold_start_s']:.2f}"
        )
    figures.notes.append(f"code mirrored by the first call: {mirrored(host)}")
    counted(before, "cold start")

    for _ in range(WARM_UP_CALLS):
        call()
    before = requests.snapshot() if requests else None
    call()
    counted(before, "one warm run_function")
    times: list[float] = []
    with metered(figures, "warm", quiet_wait):
        for _ in range(config["warm_calls"]):
            began = time.perf_counter()
            call()
            times.append(time.perf_counter() - began)
    figures.values["warm_p50_ms"] = percentile(times, 50) * 1000
    figures.values["warm_p95_ms"] = percentile(times, 95) * 1000
    progress(f"  warm round trip p50 {figures.values['warm_p50_ms']:.1f} ms")

    run_map(WARM_UP_TASKS)  # untimed: the map's instances exist afterwards
    before = requests.snapshot() if requests else None
    with metered(figures, "map", quiet_wait):
        began = time.perf_counter()
        run_map(config["tasks"])
        seconds = time.perf_counter() - began
    figures.values["map_tasks_per_s"] = config["tasks"] / seconds
    progress(f"  run_map {config['tasks']} tasks in {seconds:.2f} s")
    counted(before, "the timed run_map", config["tasks"])
    figures.notes.append(f"instances launched in all: {count_instances()}")
    if requests is not None:
        # a new client on the account that is set up now (the everyday cold start): no
        # instance, no local state, nothing mirrored or cached in this process
        _as_a_new_client()
        before = requests.snapshot()
        call()
        counted(before, "cold start, account set up")
        figures.notes.extend(request_targets(figures.values, config["tasks"]))


def _as_a_new_client() -> None:
    import tempfile

    from meadowrun_core.aws.uninstall import clean
    from meadowrun_core.client import payload
    from meadowrun_core.client.runtime import ClientRuntime

    ClientRuntime.get().forget_backends()
    clean(REGION)  # terminates every instance
    payload._mirrors.clear()
    os.environ["MEADOWRUN_HOME"] = tempfile.mkdtemp(prefix="meadowrun-new-client-")


# Issue 12's targets, and what Meadowrun 0.2.16's design needs for the same work, computed
# from that design (its code is not run here): one SQS message per task (SendMessageBatch of
# 10), each task received and deleted on its own, each result written to S3 and found by
# listing the bucket (at least one ListObjectsV2 per second of the map; not counted).
TARGETS = {"warm": 3.0, "cold": 30.0, "map": 20.0}
MEADOWRUN_0_2_16 = {
    # DynamoDB scan of the instance table + conditional update; function and arguments
    # pickled into the SSH command (no S3); the result read back over SSH
    "warm": "2 (Scan + UpdateItem)",
    # the above, plus the code as one zip in S3 (HeadObject + PutObject), RunInstances and
    # the instance registering (PutItem), before its own boot-time requests
    "cold": "6 (Scan, UpdateItem, HeadObject, PutObject, RunInstances, PutItem)",
    # 100 SendMessageBatch + 1,000 ReceiveMessage + 1,000 DeleteMessage + 1,000 PutObject
    # (results) + S3 listing while polling
    "map": "3,100 + S3 polling",
}


def request_targets(values: dict[str, float], tasks: int) -> list[str]:
    """Requests per operation next to the targets and Meadowrun 0.2.16's design."""
    rows = [
        ("warm run_function", values.get("requests one warm run_function"), "warm", 1),
        ("cold start (131-file tree, empty account)", values.get("requests cold start"), "cold", 1),
        (
            "cold start (131-file tree, a new client of a set-up account)",
            values.get("requests cold start, account set up"),
            "cold",
            1,
        ),
        (
            "run_map, per 1,000 tasks (client)",
            values.get("requests the timed run_map"),
            "map",
            1000,
        ),
        (
            "run_map, per 1,000 tasks (client + agents + test hosts)",
            values.get("served the timed run_map"),
            "map",
            1000,
        ),
    ]
    lines = ["requests per operation (target; Meadowrun 0.2.16's design):"]
    for what, value, key, scale in rows:
        if value is None:
            continue
        figure = value * scale
        verdict = "meets" if figure <= TARGETS[key] else "misses"
        lines.append(
            f"  {what}: {figure:.1f} ({verdict} <= {TARGETS[key]:g}; "
            f"Meadowrun 0.2.16: {MEADOWRUN_0_2_16[key]})"
        )
    return ["\n".join(lines)] if len(lines) > 1 else []


# --- the two clouds -----------------------------------------------------------------------------
def measure_local(
    scratch: Path, deployment: mr.Deployment, config: dict[str, Any], quiet_wait: float
) -> Figures:
    from meadowrun_core.client.runtime import ClientRuntime
    from meadowrun_core.local import admin
    from meadowrun_core.local.allocation_table import SqliteAllocationTable

    figures = Figures()
    home = scratch / "local-home"
    with environment({"MEADOWRUN_HOME": str(home), "MEADOWRUN_LOCAL_MAX_CPU": "2"}):
        try:
            progress("local: allocation path (SqliteAllocationTable)")
            bench_allocation(
                SqliteAllocationTable(scratch / "seam.db"), config["cycles"], figures, quiet_wait
            )
            progress(f"  p50 {figures.values['alloc_p50_ms']:.2f} ms")
            progress("local: run_function / run_map")
            host = mr.AllocLocalInstance()

            def count() -> int:
                rows = SqliteAllocationTable(home / "state.db").job_history(10_000)
                return len({r["instance_id"] for r in rows})

            bench_client(host, deployment, config, figures, quiet_wait, count)
        except Exception as exc:
            figures.error = f"{type(exc).__name__}: {exc}"
            progress(f"local FAILED: {figures.error}")
        finally:
            ClientRuntime.get().forget_backends()
            admin.clean()
    return figures


def measure_aws(
    scratch: Path, deployment: mr.Deployment, config: dict[str, Any], quiet_wait: float
) -> Figures:
    import boto3
    from moto.server import ThreadedMotoServer

    from meadowrun_core.aws import names
    from meadowrun_core.aws.dynamodb_allocation_table import DynamoDbAllocationTable
    from meadowrun_core.client.runtime import ClientRuntime
    from tests.ec2_hosts import Ec2TestHosts
    from tests.moto_server import reset_moto

    figures = Figures()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    address, port = server.get_host_and_port()
    endpoint = f"http://{address}:{port}"
    env = {**AWS_ENV, "MEADOWRUN_AWS_ENDPOINT_URL": endpoint}
    hosts: Ec2TestHosts | None = None
    requests: RequestCounter | None = None
    with environment({**env, "MEADOWRUN_HOME": str(scratch / "aws-client-home")}):
        try:
            reset_moto(endpoint)
            progress("aws: allocation path (DynamoDbAllocationTable on moto)")
            dynamodb = boto3.client("dynamodb", region_name=REGION, endpoint_url=endpoint)
            seam = DynamoDbAllocationTable(dynamodb, f"bench-alloc-{uuid.uuid4().hex[:8]}")
            seam.create()
            counter = [0]

            def count_request(**_: Any) -> None:
                counter[0] += 1

            dynamodb.meta.events.register("before-call.dynamodb", count_request)
            bench_allocation(seam, config["cycles"], figures, quiet_wait, lambda: counter[0])
            figures.notes.append(
                f"one DynamoDB GetItem on moto, p50: {get_item_ms(seam):.2f} ms (round trip "
                "through boto3 and moto's HTTP server; it sets the seam's cost)"
            )
            progress(f"  p50 {figures.values['alloc_p50_ms']:.2f} ms")

            reset_moto(endpoint)  # the cold start finds an empty account, no instance
            hosts = Ec2TestHosts(endpoint, REGION, scratch / "hosts", env=env)
            hosts.start()
            os.environ["MEADOWRUN_EC2_ADDRESS_MAP"] = str(hosts.address_map_path)
            progress("aws: run_function / run_map")
            host = mr.AllocEC2Instance(
                region_name=REGION, agent_python=sys.executable, ssh_cidr="127.0.0.0/8"
            )
            ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=endpoint)

            def count() -> int:
                pages = ec2.describe_instances(Filters=[*names.TAG_FILTER])["Reservations"]
                return sum(len(r["Instances"]) for r in pages)

            requests = RequestCounter().start()  # after the harness made its client
            requests.watch_server()
            bench_client(host, deployment, config, figures, quiet_wait, count, requests)
        except Exception as exc:
            figures.error = f"{type(exc).__name__}: {exc}"
            progress(f"aws FAILED: {figures.error}")
        finally:
            if requests is not None:
                requests.unwatch_server()
            ClientRuntime.get().forget_backends()
            # the client's lease thread may renew a forgotten backend's lease once more (it
            # renews the backends it listed before its wait): let it, before moto goes
            time.sleep(float(AWS_ENV["MEADOWRUN_LEASE_SECONDS"]) / 3 + 0.5)
            if hosts is not None:
                hosts.close()
            os.environ.pop("MEADOWRUN_EC2_ADDRESS_MAP", None)
            server.stop()
    return figures


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


def _footnotes(results: dict[str, Figures]) -> list[str]:
    lines = [f"{name}: {note}" for name, figures in results.items() for note in figures.notes]
    lines += [
        f"{name} FAILED: {figures.error}" for name, figures in results.items() if figures.error
    ]
    return lines


def render_text(results: dict[str, Figures], config: dict[str, Any]) -> str:
    rows = [HEADER, *table_rows(results, config)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += [
        "",
        "aws/local = the AWS-on-moto figure divided by the local cloud's, both from this run.",
        *_footnotes(results),
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
            *[f"- {line}" for line in _footnotes(results)],
            "",
            "Machine:",
            "",
            *[f"- {key}: {value}" for key, value in machine.items()],
            "",
        ]
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=200, help="allocate+deallocate cycles")
    parser.add_argument("--warm-calls", type=int, default=30)
    parser.add_argument("--tasks", type=int, default=1000, help="no-op tasks in the timed map")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 50 cycles, 10 warm calls, 200 tasks"
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        help="before each measurement, wait up to this long for other "
        "processes to go quiet (a shared machine)",
    )
    parser.add_argument("--markdown", type=Path, help="write the section into this Markdown file")
    args = parser.parse_args(argv)
    if args.quick:
        args.cycles, args.warm_calls, args.tasks = 50, 10, 200
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("meadowrun_core", "tests.ec2_hosts", "asyncssh", "botocore", "werkzeug"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    logging.getLogger("meadowrun_core.job").setLevel(logging.CRITICAL)  # workers' stderr
    config = {
        "cycles": args.cycles,
        "warm_calls": args.warm_calls,
        "tasks": args.tasks,
        "quick": args.quick,
    }
    from bench.report import machine_description, write_section

    machine = machine_description()  # before the run: "busy before the run"
    from importlib import metadata

    machine["AWS emulation"] = ", ".join(
        f"{p} {metadata.version(p)}" for p in ("moto", "boto3", "asyncssh")
    )
    deployment = mr.Deployment.mirror_local(interpreter=mr.PreinstalledInterpreter(sys.executable))
    scratch = Path(tempfile.mkdtemp(prefix="bench-aws-"))
    started = time.monotonic()
    try:
        results = {
            LOCAL: measure_local(scratch, deployment, config, args.quiet_wait),
            AWS: measure_aws(scratch, deployment, config, args.quiet_wait),
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    progress(f"done in {time.monotonic() - started:.0f} s")
    print(render_text(results, config))
    command = "python -m bench.bench_aws " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.markdown:
        section = render_markdown(results, config, command.strip(), machine)
        write_section(args.markdown, section, heading=SECTION_HEADING)
        progress(f"wrote {SECTION_HEADING!r} in {args.markdown}")
    return 1 if any(f.error for f in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
