"""How meadowrun's costs grow with width (issue 18 item 3), on the local cloud, beside a
ProcessPoolExecutor measured in the same run.

    .venv/bin/python -m bench.bench_scaling                  # 10^4, 10^5 tasks; 1-16 instances
    .venv/bin/python -m bench.bench_scaling --instances 1,4,16,64 --million

1. ``run_map`` of no-op tasks on N instances of 0.1 CPU, one slot each (every instance
   offers one ``SLOT`` custom resource and each task asks for it, so the local cloud cannot
   pack the slots into one agent): tasks per second and the client's peak memory above its
   baseline (RSS sampled every 10 ms; each timed map runs in a fresh client process after an
   untimed warm-up map, so no earlier map's freed memory hides its growth). The peer:
   ``ProcessPoolExecutor(2).map`` of the same tasks (``chunksize=1``, as in ``bench_core``),
   measured the same way, same counts, same run.
2. Allocation latency: 1, 16 and 64 client processes sharing one ``MEADOWRUN_HOME`` race to
   place and free jobs on one warm instance (``place_on_existing`` then ``deallocate``, the
   allocation table's part of every job); p50 and p99 of a placement, and the placements
   per second of all clients together. On 2 cores, 16 or 64 clients queue for the CPU as
   much as for the table's write lock. No peer has a cross-process allocation table; the
   floor is one client alone.

Each series gets the exponent ``b`` of ``cost ~ n^b`` (least squares on logs): 1 is linear
(constant time per task), above 1 worse than linear. A 2-core machine shared with other
work: read the "others" column (cores other processes used meanwhile).
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
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil

from bench.load import CpuMeter, background_load
from bench.workloads import noop

SLOT = "SLOT"  # one per instance: N slots need N instances


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

    @property
    def grown_mb(self) -> float:
        return (self.peak - self.baseline) / 2**20


def _host(width: int) -> Any:
    import meadowrun_core as mr

    return mr.AllocLocalInstance(
        max_cpu=0.1 * width + 0.05,
        max_memory_gb=0.1 * width + 0.05,
        custom_resources={SLOT: 1},
        idle_timeout=600,
    )


def _measure_in_child(system: str, width: int, count: int, out: Any) -> None:
    """One timed map in a fresh process (so its peak memory is its own): an untimed warm-up
    map first, then ``count`` no-op tasks; puts (seconds, peak MB above the baseline)."""
    import gc

    if system == "meadowrun":
        import meadowrun_core as mr

        resources = mr.Resources(logical_cpu=0.1, memory_gb=0.1, custom={SLOT: 1})

        def run(items: range) -> list[Any]:
            result: list[Any] = mr.run_map(
                noop,
                items,
                host=_host(width),
                resources_per_task=resources,
                num_concurrent_tasks=width,
                progress=False,
            )
            return result
    else:
        pool = ProcessPoolExecutor(max_workers=2)

        def run(items: range) -> list[Any]:
            return list(pool.map(noop, items))

    run(range(4 * width))  # instances launched or found, every worker started
    gc.collect()
    with PeakRss() as rss:
        start = time.perf_counter()
        results = run(range(count))
        seconds = time.perf_counter() - start
    if results != list(range(count)):
        raise AssertionError("a no-op map returned other values than its inputs")
    out.put((seconds, rss.grown_mb))
    if system == "meadowrun":
        from meadowrun_core.client.runtime import ClientRuntime

        ClientRuntime.get().forget_backends()
    else:
        pool.shutdown()


def _timed_map(system: str, width: int, count: int) -> tuple[float, float, float]:
    """Seconds, the client's peak MB above its baseline, and others' cores, of one map."""
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    meter = CpuMeter()
    meter.start()
    child = context.Process(target=_measure_in_child, args=(system, width, count, out))
    child.start()
    seconds, grown = out.get(timeout=3600)
    child.join()
    return seconds, grown, meter.stop()


def map_series(tasks: list[int], widths: list[int], peer: bool) -> list[dict[str, Any]]:
    import meadowrun_core as mr
    from meadowrun_core.client.runtime import ClientRuntime
    from meadowrun_core.local import admin
    from meadowrun_core.local.allocation_table import SqliteAllocationTable

    home = Path(os.environ["MEADOWRUN_HOME"])
    rows = []
    for width in widths:
        # launch the instances once, here: every measured map runs in a fresh client process
        mr.run_map(
            noop,
            range(4 * width),
            host=_host(width),
            resources_per_task=mr.Resources(logical_cpu=0.1, memory_gb=0.1, custom={SLOT: 1}),
            num_concurrent_tasks=width,
            progress=False,
        )
        instances = len(SqliteAllocationTable(home / "state.db").list_instances())
        for count in tasks:
            seconds, grown, others = _timed_map("meadowrun", width, count)
            row: dict[str, Any] = {
                "instances": instances,
                "tasks": count,
                "seconds": seconds,
                "tasks_per_second": count / seconds,
                "client_peak_mb": grown,
                "others_cores": others,
            }
            if peer:
                p_seconds, p_grown, p_others = _timed_map("ppe", width, count)
                row.update(
                    ppe_tasks_per_second=count / p_seconds,
                    ppe_peak_mb=p_grown,
                    ppe_others_cores=p_others,
                )
            rows.append(row)
            print(_map_line(row), flush=True)
        ClientRuntime.get().forget_backends()
        admin.clean()
    return rows


def _map_line(row: dict[str, Any]) -> str:
    line = (
        f"map  instances={row['instances']:3d} tasks={row['tasks']:8d} "
        f"{row['tasks_per_second']:8.0f} tasks/s  client +{row['client_peak_mb']:6.1f} MB  "
        f"others {row['others_cores']:.2f}"
    )
    if "ppe_tasks_per_second" in row:
        line += (
            f"  | ppe {row['ppe_tasks_per_second']:7.0f} tasks/s +{row['ppe_peak_mb']:6.1f} MB"
            f"  mr/ppe {row['tasks_per_second'] / row['ppe_tasks_per_second']:.2f}x"
        )
    return line


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _racer(
    home: str, instance_id: str, rounds: int, pause: float, ready: Any, go: Any, out: Any
) -> None:
    """One client placing and freeing jobs; ``instance_id`` "": the control, which spins
    for as long as one placement takes alone (0.1 ms) instead of touching the table."""
    os.environ["MEADOWRUN_HOME"] = home
    import random

    import meadowrun_core as mr
    from meadowrun_core.local.allocation_table import SqliteAllocationTable

    table = SqliteAllocationTable(Path(home) / "state.db")
    resources = mr.Resources(logical_cpu=0.001, memory_gb=0.001)
    client = f"racer-{uuid.uuid4().hex[:8]}"
    latencies = []
    ready.put(os.getpid())  # imported and connected: the race starts when all are
    go.wait()
    for _ in range(rounds):
        if pause:
            time.sleep(random.uniform(0, 2 * pause))
        job = f"bench-{uuid.uuid4().hex[:12]}"
        if not instance_id:
            begin = time.perf_counter()
            _spin(1e-4)
            latencies.append(time.perf_counter() - begin)
            _spin(1e-4)  # the free
            continue
        begin = time.perf_counter()
        placed = table.place_on_existing([job], resources, client, "bench")
        latencies.append(time.perf_counter() - begin)
        assert placed and next(iter(placed.values())).instance_id == instance_id
        table.deallocate(job, "bench")
    out.put(latencies)


def allocation_series(
    clients: list[int], rounds: int, offered: float | None = None, control: bool = False
) -> list[dict[str, Any]]:
    """``offered``: placements per second of all clients together, each client pausing at
    random in between (mean ``clients / offered``); None: back to back (the CPU saturated).
    ``control``: the same processes spinning 0.1 ms instead of placing (what the CPU's run
    queue alone does to the latency of a 0.1 ms step)."""
    import meadowrun_core as mr
    from meadowrun_core.client.runtime import ClientRuntime
    from meadowrun_core.local import admin
    from meadowrun_core.local.allocation_table import SqliteAllocationTable

    home = os.environ["MEADOWRUN_HOME"]
    host = mr.AllocLocalInstance(idle_timeout=600)
    mr.run_function(noop, args=(0,), host=host, resources=mr.Resources(0.5, 0.5))
    (instance,) = SqliteAllocationTable(Path(home) / "state.db").list_instances()
    rows = []
    context = multiprocessing.get_context("spawn")
    for count in clients:
        out, ready, go = context.Queue(), context.Queue(), context.Event()
        pause = count / offered if offered else 0.0
        processes = [
            context.Process(
                target=_racer,
                args=(home, "" if control else instance.instance_id, rounds, pause, ready, go, out),
            )
            for _ in range(count)
        ]
        for process in processes:
            process.start()
        for _ in processes:
            ready.get(timeout=600)
        meter = CpuMeter()
        meter.start()
        start = time.perf_counter()
        go.set()
        latencies = sorted(x for _ in processes for x in out.get(timeout=600))
        span = time.perf_counter() - start
        others = meter.stop()
        for process in processes:
            process.join()
        p50 = latencies[len(latencies) // 2]
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        row = {
            "offered": offered or 0.0,
            "control": control,
            "clients": count,
            "p50_ms": p50 * 1e3,
            "p99_ms": p99 * 1e3,
            "per_second": len(latencies) / span,
            "others": others,
        }
        rows.append(row)
        print(
            f"{'spin ' if control else 'alloc'} clients={count:3d} offered {offered or 0:5.0f}/s"
            f"  p50 {p50 * 1e3:7.2f} ms  p99 {p99 * 1e3:7.2f} ms  "
            f"({len(latencies)} placements, {row['per_second']:.0f} placements+frees/s "
            f"in all; others {others:.2f})",
            flush=True,
        )
    ClientRuntime.get().forget_backends()
    admin.clean()
    return rows


def summary(map_rows: list[dict[str, Any]], alloc_rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for instances in sorted({r["instances"] for r in map_rows}):
        mine = [r for r in map_rows if r["instances"] == instances]
        if len(mine) > 1:
            time_b = fitted_exponent([(r["tasks"], r["seconds"]) for r in mine])
            memory_b = fitted_exponent([(r["tasks"], max(r["client_peak_mb"], 0.1)) for r in mine])
            line = (
                f"{instances} instance(s): map time ~ tasks^{time_b:.2f}, "
                f"client memory ~ tasks^{memory_b:.2f}"
            )
            if all("ppe_tasks_per_second" in r for r in mine):
                ppe_b = fitted_exponent(
                    [(r["tasks"], r["tasks"] / r["ppe_tasks_per_second"]) for r in mine]
                )
                line += f" (ppe: time ~ tasks^{ppe_b:.2f})"
            lines.append(line)
    for count in sorted({r["tasks"] for r in map_rows}):
        mine = [r for r in map_rows if r["tasks"] == count]
        if len(mine) > 1:
            b = fitted_exponent([(r["instances"], r["seconds"]) for r in mine])
            lines.append(f"{count} tasks: map time ~ instances^{b:.2f}")
    for offered, control in sorted({(r["offered"], r["control"]) for r in alloc_rows}):
        mine = [r for r in alloc_rows if (r["offered"], r["control"]) == (offered, control)]
        if len(mine) > 1:
            p50 = fitted_exponent([(r["clients"], r["p50_ms"]) for r in mine])
            p99 = fitted_exponent([(r["clients"], r["p99_ms"]) for r in mine])
            how = f"{offered:.0f} placements/s offered" if offered else "back to back"
            what = "control: 0.1 ms spin" if control else "allocation"
            lines.append(f"{what} latency ({how}) ~ clients^{p50:.2f} (p50), ^{p99:.2f} (p99)")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tasks", default="10000,100000", help="task counts (comma-separated)")
    parser.add_argument("--million", action="store_true", help="add 1,000,000 tasks")
    parser.add_argument("--instances", default="1,4,16", help="instance counts (0.1 CPU each)")
    parser.add_argument("--clients", default="1,16,64", help="racing allocation clients")
    parser.add_argument("--rounds", type=int, default=50, help="placements per racing client")
    parser.add_argument(
        "--offered",
        default="0,500",
        help="allocation runs' placements per second in all (0: back to back)",
    )
    parser.add_argument("--no-peer", action="store_true", help="skip the ProcessPoolExecutor")
    args = parser.parse_args(argv)
    tasks = [int(x) for x in args.tasks.split(",") if x] + ([1_000_000] if args.million else [])
    widths = [int(x) for x in args.instances.split(",") if x]
    clients = [int(x) for x in args.clients.split(",") if x]
    print(f"busy before the run (other processes): {background_load()}", flush=True)
    with tempfile.TemporaryDirectory() as home:
        os.environ["MEADOWRUN_HOME"] = home
        map_rows = map_series(tasks, widths, not args.no_peer) if tasks and widths else []
        alloc_rows = []
        for rate in [float(x) for x in args.offered.split(",") if x] if clients else []:
            alloc_rows += allocation_series(clients, args.rounds, rate or None)
            alloc_rows += allocation_series(clients, args.rounds, rate or None, control=True)
    print()
    for line in summary(map_rows, alloc_rows):
        print(line)
    print(f"busy after the run (other processes): {background_load()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
