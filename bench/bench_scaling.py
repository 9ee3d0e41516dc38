"""How meadowrun's costs grow with width (issue 18 item 3), on the local cloud.

    .venv/bin/python -m bench.bench_scaling                     # 10^4 and 10^5 tasks; 1-64 clients
    .venv/bin/python -m bench.bench_scaling --tasks 10000,100000,1000000 --slots 1,4,16,64

1. ``run_map`` of no-op tasks over slots of 0.1 CPU (each slot a worker; the local cloud
   packs slots onto as few instances as fit, the instance count is reported): tasks per
   second and the client's peak memory above its baseline (RSS sampled every 10 ms), for
   each task count and slot count.
2. Allocation latency: 1, 16 and 64 client processes sharing one ``MEADOWRUN_HOME`` race to
   place and free jobs on one warm instance (the allocation table's ``place_on_existing``
   then ``deallocate``, what every job does); p50 and p99 of a placement.

For each series it fits the exponent ``b`` of ``cost ~ n^b`` (least squares on logs): 1 is
linear (time per task constant), above 1 grows worse than linearly.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil

from bench.workloads import noop


def fitted_exponent(points: list[tuple[float, float]]) -> float:
    """``b`` in ``y ~ x^b``, least squares on logs."""
    xs = [math.log(x) for x, _ in points]
    ys = [math.log(max(y, 1e-12)) for _, y in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0


class PeakRss:
    """The process's peak RSS while in use, sampled every 10 ms."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        self.baseline = self._process.memory_info().rss
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def map_series(tasks: list[int], slots: list[int]) -> list[dict[str, Any]]:
    import meadowrun_core as mr
    from meadowrun_core.local import admin
    from tests.waiting import local_table

    rows = []
    resources = mr.Resources(logical_cpu=0.1, memory_gb=0.1)
    for width in slots:
        mr.run_map(noop, range(width * 4), resources_per_task=resources, num_concurrent_tasks=width)
        for count in tasks:
            with PeakRss() as rss:
                start = time.perf_counter()
                results = mr.run_map(
                    noop,
                    range(count),
                    resources_per_task=resources,
                    num_concurrent_tasks=width,
                    progress=False,
                )
                seconds = time.perf_counter() - start
            assert results == list(range(count))
            instances = len(local_table(Path(os.environ["MEADOWRUN_HOME"])).list_instances())
            row = {
                "slots": width,
                "instances": instances,
                "tasks": count,
                "seconds": seconds,
                "tasks_per_second": count / seconds,
                "client_peak_mb": (rss.peak - rss.baseline) / 2**20,
            }
            rows.append(row)
            print(
                f"map  slots={width:3d} instances={instances:3d} tasks={count:8d} "
                f"{row['tasks_per_second']:9.0f} tasks/s  client +{row['client_peak_mb']:7.1f} MB",
                flush=True,
            )
        admin.clean()
    return rows


def _racer(home: str, instance_id: str, rounds: int, start_at: float, out: Any) -> None:
    os.environ["MEADOWRUN_HOME"] = home
    import meadowrun_core as mr
    from meadowrun_core.local.allocation_table import SqliteAllocationTable

    table = SqliteAllocationTable(Path(home) / "state.db")
    resources = mr.Resources(logical_cpu=0.001, memory_gb=0.001)
    client = f"racer-{uuid.uuid4().hex[:8]}"
    latencies = []
    while time.time() < start_at:
        time.sleep(0.001)
    for _ in range(rounds):
        job = f"bench-{uuid.uuid4().hex[:12]}"
        begin = time.perf_counter()
        placed = table.place_on_existing([job], resources, client, "bench")
        latencies.append(time.perf_counter() - begin)
        assert placed and next(iter(placed.values())).instance_id == instance_id
        table.deallocate(job, "bench")
    out.put(latencies)


def allocation_series(clients: list[int], rounds: int) -> list[dict[str, Any]]:
    import meadowrun_core as mr
    from meadowrun_core.local import admin
    from tests.waiting import local_table

    home = os.environ["MEADOWRUN_HOME"]
    host = mr.AllocLocalInstance(idle_timeout=600)
    mr.run_function(noop, args=(0,), host=host, resources=mr.Resources(0.5, 0.5))
    (instance,) = local_table(Path(home)).list_instances()
    rows = []
    context = multiprocessing.get_context("spawn")
    for count in clients:
        out = context.Queue()
        start_at = time.time() + 3 + count * 0.05
        processes = [
            context.Process(target=_racer, args=(home, instance.instance_id, rounds, start_at, out))
            for _ in range(count)
        ]
        for process in processes:
            process.start()
        latencies = sorted(x for _ in processes for x in out.get(timeout=600))
        for process in processes:
            process.join()
        p50 = latencies[len(latencies) // 2]
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        rows.append({"clients": count, "p50_ms": p50 * 1e3, "p99_ms": p99 * 1e3})
        print(
            f"alloc clients={count:3d}  p50 {p50 * 1e3:7.2f} ms  p99 {p99 * 1e3:7.2f} ms",
            flush=True,
        )
    admin.clean()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="10000,100000")
    parser.add_argument("--slots", default="1,4,16")
    parser.add_argument("--clients", default="1,16,64")
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args(argv)
    tasks = [int(x) for x in args.tasks.split(",")]
    slots = [int(x) for x in args.slots.split(",")]
    clients = [int(x) for x in args.clients.split(",")]
    with tempfile.TemporaryDirectory() as home:
        os.environ["MEADOWRUN_HOME"] = home
        os.environ.setdefault("MEADOWRUN_LOCAL_MAX_CPU", str(os.cpu_count() or 2))
        map_rows = map_series(tasks, slots) if tasks and slots else []
        alloc_rows = allocation_series(clients, args.rounds) if clients else []
    print()
    for width in slots:
        series = [(r["tasks"], r["seconds"]) for r in map_rows if r["slots"] == width]
        memory = [
            (r["tasks"], max(r["client_peak_mb"], 0.1)) for r in map_rows if r["slots"] == width
        ]
        if len(series) > 1:
            print(
                f"slots={width}: map time ~ tasks^{fitted_exponent(series):.2f}, "
                f"client memory ~ tasks^{fitted_exponent(memory):.2f}"
            )
    if len(alloc_rows) > 1:
        p50 = [(r["clients"], r["p50_ms"]) for r in alloc_rows]
        p99 = [(r["clients"], r["p99_ms"]) for r in alloc_rows]
        print(
            f"allocation latency ~ clients^{fitted_exponent(p50):.2f} (p50), "
            f"^{fitted_exponent(p99):.2f} (p99)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
