"""CPU-bound map, meadowrun against ProcessPoolExecutor in alternating rounds (issue 18 item 2).

    .venv/bin/python -m bench.bench_cpu_pair                    # 5 rounds of 200 x 50 ms
    .venv/bin/python -m bench.bench_cpu_pair --rounds 9 --tasks 200 --seconds 0.05

``bench_core`` measures each system alone, one after the other, so on a shared machine a
few percent between them is often just the load changing meanwhile. Here both are started
once (2 workers each, both warm), then take turns, the order swapped every round: each
round's ratio compares two runs seconds apart. It prints every run, the median of the
rounds' ratios and the ratio of each system's best run, with the cores other processes used
during each run. An idle ProcessPoolExecutor uses no CPU; an idle meadowrun agent wakes
about once a second (its reconciler).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil

from bench.load import CpuMeter, background_load
from bench.workloads import busy, noop


def _cpu_seconds(processes: list[psutil.Process]) -> float:
    """User + system CPU of these processes themselves (not their children)."""
    total = 0.0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            total += times.user + times.system
    return total


def timed_run(
    run: Callable[[list[float]], list[Any]],
    items: list[float],
    coordinators: list[psutil.Process],
) -> tuple[float, float, float]:
    """Wall seconds, cores others used, and the CPU seconds of the system's coordinating
    processes (meadowrun: client + agent; the pool: its parent), which on a machine whose
    cores the workers fill is what the system adds to the wall time (about half of it on 2
    cores), and unlike the wall time hardly depends on what else the machine runs."""
    meter = CpuMeter()
    meter.start()
    before = _cpu_seconds(coordinators)
    start = time.perf_counter()
    results = run(items)
    seconds = time.perf_counter() - start
    overhead = _cpu_seconds(coordinators) - before
    others = meter.stop()
    if len(results) != len(items) or not all(r >= items[0] for r in results):
        raise AssertionError("a CPU task stopped early or a result is missing")
    return seconds, others, overhead


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=0.05, help="CPU seconds per task")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    print(f"busy before the run (other processes): {background_load()}", flush=True)
    with tempfile.TemporaryDirectory() as home:
        os.environ["MEADOWRUN_HOME"] = home
        os.environ["MEADOWRUN_LOCAL_MAX_CPU"] = str(args.workers)
        import meadowrun_core as mr
        from meadowrun_core.client.runtime import ClientRuntime
        from meadowrun_core.local import admin
        from meadowrun_core.local.allocation_table import SqliteAllocationTable

        resources = mr.Resources(logical_cpu=1, memory_gb=1)

        def meadowrun(items: list[Any]) -> list[Any]:
            result: list[Any] = mr.run_map(
                busy if items and isinstance(items[0], float) else noop,
                items,
                resources_per_task=resources,
                num_concurrent_tasks=args.workers,
                progress=False,
            )
            return result

        pool = ProcessPoolExecutor(max_workers=args.workers)
        systems: dict[str, Callable[[list[Any]], list[Any]]] = {
            "meadowrun": meadowrun,
            "ppe": lambda items: list(pool.map(busy, items)),
        }
        try:
            meadowrun(list(range(4 * args.workers)))  # launch, start every worker (untimed)
            list(pool.map(noop, range(4 * args.workers)))
            (instance,) = SqliteAllocationTable(Path(home) / "state.db").list_instances()
            assert instance.agent_pid is not None
            coordinators = {
                "meadowrun": [psutil.Process(), psutil.Process(instance.agent_pid)],
                "ppe": [psutil.Process()],
            }
            items = [args.seconds] * args.tasks
            runs: dict[str, list[float]] = {"meadowrun": [], "ppe": []}
            overheads: dict[str, list[float]] = {"meadowrun": [], "ppe": []}
            ratios = []
            for round_number in range(args.rounds):
                order = ["meadowrun", "ppe"] if round_number % 2 == 0 else ["ppe", "meadowrun"]
                this_round = {}
                for name in order:
                    seconds, others, overhead = timed_run(systems[name], items, coordinators[name])
                    this_round[name] = seconds
                    runs[name].append(seconds)
                    overheads[name].append(overhead)
                    print(
                        f"round {round_number + 1} {name:9s} {seconds:7.3f} s  "
                        f"coordinating CPU {overhead:.3f} s  (others {others:.2f} cores)",
                        flush=True,
                    )
                ratios.append(this_round["meadowrun"] / this_round["ppe"])
                print(f"round {round_number + 1} meadowrun / ppe {ratios[-1]:.3f}x", flush=True)
        finally:
            pool.shutdown()
            ClientRuntime.get().forget_backends()
            admin.clean()
    ideal = args.tasks * args.seconds / args.workers
    print()
    print(
        f"{args.tasks} tasks x {args.seconds * 1000:g} ms CPU on {args.workers} workers "
        f"(ideal {ideal:.2f} s), {args.rounds} rounds"
    )
    for name, seconds in runs.items():
        print(
            f"  {name:9s} best {min(seconds):.3f} s  median {statistics.median(seconds):.3f} s"
            f"  coordinating CPU median {statistics.median(overheads[name]):.3f} s"
        )
    spare = ideal * args.workers  # core-seconds the workers need
    extra = statistics.median(overheads["meadowrun"]) - statistics.median(overheads["ppe"])
    print(
        f"  meadowrun's coordinating CPU beyond the pool's: {extra:.3f} s, "
        f"{extra / spare:.1%} of the {spare:.1f} core-seconds of work "
        "(what it costs a machine whose cores the workers fill)"
    )
    best = min(runs["meadowrun"]) / min(runs["ppe"])
    print(
        f"  meadowrun / ppe: median of the rounds' ratios {statistics.median(ratios):.3f}x, "
        f"best / best {best:.3f}x (target <= 1.03x)"
    )
    print(f"busy after the run (other processes): {background_load()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
