"""The operations bench_aws measures on one cloud: the allocation path through the
``AllocationTable`` seam, then cold start, warm round trip and ``run_map`` through the client API.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import meadowrun_core as mr
from bench.aws_requests import SERVED, RequestCounter, request_targets
from bench.harness import Figures, Milestones, checked_noop_map, metered, percentile
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
        checked_noop_map(host, deployment, tasks, RESOURCES, CONCURRENT_TASKS)

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
