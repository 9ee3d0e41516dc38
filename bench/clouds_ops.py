"""What bench_clouds measures on one cloud, through the client API only: the allocation path
(from the ``run_function`` call to the job placed, on a new instance and on a running one),
the cold start, the warm round trip and ``run_map`` throughput, with the requests each
operation made (bench/cloud_requests.py).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import meadowrun_core as mr
from bench.cloud_requests import delta, describe, operations
from bench.harness import Figures, Milestones, checked_noop_map, metered, percentile
from bench.workloads import noop

RESOURCES = mr.Resources(1, 1)
CONCURRENT_TASKS = 2
WARM_UP_CALLS = 3
WARM_UP_TASKS = 20


def progress(message: str) -> None:
    import sys

    print(f"[bench_clouds] {message}", file=sys.stderr, flush=True)


class Requests(Protocol):
    def snapshot(self) -> tuple[dict[str, int], dict[str, int]]:
        """(client's requests, requests the emulators answered), by ``service.Operation``."""
        ...


@dataclass
class Cloud:
    name: str
    host: mr.Host
    deployment: mr.Deployment
    requests: Requests | None  # None: the local cloud makes no requests to count
    # forget this process's state and delete every instance: the next call is a new client's
    # cold start on a cloud that is set up (table, bucket or container, keys exist)
    as_a_new_client: Callable[[], None]
    # requests the emulators answered that neither client nor agents made (the EC2 twin
    # polls moto for launched instances), to subtract from "served"
    background: Callable[[], int] = lambda: 0
    # the newest twin host's (boot, bootstrap finished, agent registered) as time.time()
    boot_phases: Callable[[], tuple[float, float, float] | None] = lambda: None


def twin_boot_phases(hosts: list[Any], registered_at: Callable[[Any], float]) -> Any:
    """(boot, bootstrap finished, agent registered) of the newest of ``hosts`` (TwinHosts)."""
    from meadowrun_core.bootstrap.instance_script import BOOT_FINISHED

    if not hosts:
        return None
    host = max(hosts, key=lambda h: h.booted_at)
    try:
        finished = host.path(BOOT_FINISHED).stat().st_mtime
        return host.booted_at, finished, registered_at(host)
    except (OSError, AssertionError):
        return None


def _boot_note(cloud: Cloud, began_wall: float) -> str:
    phases = cloud.boot_phases()
    if phases is None:
        return ""
    booted, finished, registered = (t - began_wall for t in phases)
    return (
        f"; on the host: booted {booted:.2f}, bootstrap finished {finished:.2f}, "
        f"agent registered {registered:.2f}"
    )


class PlacementClock:
    """When ``run_function``'s allocation returned (its job placed on an instance), from the
    client's own allocation call (``meadowrun_core.client.job_events.allocate``)."""

    def __init__(self) -> None:
        self.placed: list[float] = []

    @contextlib.contextmanager
    def installed(self) -> Iterator[PlacementClock]:
        from meadowrun_core.client import job_events

        original = job_events.allocate  # type: ignore[attr-defined]

        async def timed(*args: Any, **kwargs: Any) -> Any:
            placements = await original(*args, **kwargs)
            self.placed.append(time.perf_counter())
            return placements

        job_events.allocate = timed  # type: ignore[attr-defined]
        try:
            yield self
        finally:
            job_events.allocate = original  # type: ignore[attr-defined]


class Counted:
    """The requests of one operation: client, served (client + agents), by service."""

    def __init__(self, cloud: Cloud, figures: Figures, key: str, per: float = 1.0) -> None:
        self.cloud, self.figures, self.key, self.per = cloud, figures, key, per

    def __enter__(self) -> Counted:
        if self.cloud.requests is not None:
            self.before = self.cloud.requests.snapshot()
            self.background_before = self.cloud.background()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cloud.requests is None or exc[0] is not None:
            return
        client_after, served_after = self.cloud.requests.snapshot()
        client = delta(client_after, self.before[0])
        served = delta(served_after, self.before[1])
        background = self.cloud.background() - self.background_before
        values = self.figures.values
        values[f"client {self.key}"] = operations(client) / self.per
        values[f"served {self.key}"] = (operations(served) - background) / self.per
        scale = f" per {self.per:g}" if self.per != 1 else ""
        self.figures.notes.append(
            f"requests, {self.key}{scale and ' (in all)'}: client {describe(client)}; "
            f"the emulators answered {describe(served)}"
            + (f", {background} of them the twin's own polling" if background else "")
        )


def measure(cloud: Cloud, config: dict[str, Any], figures: Figures, quiet_wait: float) -> None:
    host, deployment = cloud.host, cloud.deployment
    clock = PlacementClock()

    def call() -> tuple[float, float]:
        """Seconds from the call to the job placed, and to the result."""
        began = time.perf_counter()
        before = len(clock.placed)
        result = mr.run_function(
            noop, host=host, resources=RESOURCES, deployment=deployment, args=(7,)
        )
        ended = time.perf_counter()
        if result != 7:
            raise RuntimeError("run_function returned a wrong answer")
        if len(clock.placed) != before + 1:
            raise RuntimeError("the placement clock missed the call's allocation")
        return clock.placed[-1] - began, ended - began

    def run_map(tasks: int) -> None:
        checked_noop_map(host, deployment, tasks, RESOURCES, CONCURRENT_TASKS)

    with clock.installed():
        # 1 and 2: cold start, the job placed on a new instance (an empty account)
        with (
            metered(figures, "cold", quiet_wait),
            Milestones() as milestones,
            Counted(cloud, figures, "cold start"),
        ):
            began, began_wall = time.perf_counter(), time.time()
            placed, result = call()
        figures.values["cold_placed_s"], figures.values["cold_s"] = placed, result
        progress(f"  {cloud.name}: cold start {result:.2f} s (placed at {placed:.2f} s)")
        figures.notes.append(
            f"cold start, seconds from the call: {milestones.describe(began)}"
            f"{_boot_note(cloud, began_wall)}; placed {placed:.2f}, result {result:.2f}"
        )

        # 1: the job placed on a running instance
        for _ in range(WARM_UP_CALLS):
            call()
        placed_times, results = [], []
        with (
            metered(figures, "warm", quiet_wait),
            Counted(cloud, figures, "warm run_function", config["warm_calls"]),
        ):
            for _ in range(config["warm_calls"]):
                placed, result = call()
                placed_times.append(placed)
                results.append(result)
        figures.values["warm_placed_ms"] = percentile(placed_times, 50) * 1000
        figures.values["warm_ms"] = percentile(results, 50) * 1000
        progress(
            f"  {cloud.name}: warm p50 {figures.values['warm_ms']:.1f} ms "
            f"(placed at {figures.values['warm_placed_ms']:.1f} ms)"
        )

        # 3: run_map throughput on the warm instance(s)
        run_map(WARM_UP_TASKS)
        for tasks in config["map_tasks"]:
            with (
                metered(figures, f"map{tasks}", quiet_wait),
                Counted(cloud, figures, f"run_map of {tasks:,}", tasks / 1000),
            ):
                began = time.perf_counter()
                run_map(tasks)
                seconds = time.perf_counter() - began
            figures.values[f"map{tasks}_per_s"] = tasks / seconds
            progress(f"  {cloud.name}: run_map {tasks} tasks in {seconds:.2f} s")

        # 1 and 2 again: a new client of the set-up cloud, no instance running
        cloud.as_a_new_client()
        with (
            metered(figures, "new", quiet_wait),
            Milestones() as milestones,
            Counted(cloud, figures, "new client"),
        ):
            began, began_wall = time.perf_counter(), time.time()
            placed, result = call()
        figures.values["new_placed_s"], figures.values["new_s"] = placed, result
        figures.notes.append(
            f"new client's cold start, seconds from the call: {milestones.describe(began)}"
            f"{_boot_note(cloud, began_wall)}; placed {placed:.2f}, result {result:.2f}"
        )
        progress(f"  {cloud.name}: new client's cold start {result:.2f} s (placed {placed:.2f})")
