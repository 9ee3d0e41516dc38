"""Dask benchmark (issue 7): time to a ready MeadowCluster, and one fixed dask.array workload on
MeadowCluster and on LocalCluster with the same workers, in one run.

    .venv/bin/python -m bench.bench_dask                          # 2 workers, 5 rounds
    .venv/bin/python -m bench.bench_dask --quick                  # smoke run, 1 round
    .venv/bin/python -m bench.bench_dask --markdown docs/performance.md --quiet-wait 60

First ``--cold-starts`` MeadowCluster starts from nothing (``admin.clean()`` before each, so
each launches its instances), timed to "ready": cluster created, client connected, all workers
registered. Then each round runs every system alone, one after the other, in an order that
alternates between rounds so that a busy machine slows every system alike: start the cluster
and time it to ready, run the workload once, close it. MeadowCluster starts in rounds are warm:
they find the idle instances (and their worker processes) of the start before. Every system has the
same workers: ``--workers`` processes of one thread and 2 GB each. The workload's answer is
checked against NumPy on every run, so no system can be fast by being wrong.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SECTION_HEADING = "## Dask cluster (issue 7)"
TARGET_WORKLOAD_RATIO = 1.2
TARGET_READY_S = 3.0
MEMORY_GB = 2

log = logging.getLogger("bench.dask")


@dataclass
class System:
    name: str
    description: str
    start: Callable[[], Any]  # returns a cluster (a context manager)
    ready_s: list[float] = field(default_factory=list)
    cold_ready_s: list[float] = field(default_factory=list)
    workload_s: list[float] = field(default_factory=list)
    others_cores: list[float] = field(default_factory=list)
    error: str | None = None


def workload(size: int, chunk: int) -> tuple[Any, float]:
    """A dask.array graph with compute and transfers (the transpose needs other workers'
    chunks), and its answer computed by NumPy."""
    import dask.array as da

    x = da.random.RandomState(42).random((size, size), chunks=(chunk, chunk))
    graph = ((x + x.T) ** 2).mean(axis=0).sum()
    expected = x.compute()
    return graph, float((((expected + expected.T) ** 2).mean(axis=0)).sum())


def make_systems(workers: int, names: list[str]) -> list[System]:
    from distributed import LocalCluster

    from meadowrun_core import Resources
    from meadowrun_dask import MeadowCluster

    def meadow() -> Any:
        return MeadowCluster(
            n_workers=workers, worker_resources=Resources(logical_cpu=1, memory_gb=MEMORY_GB)
        )

    def local(security: bool) -> Callable[[], Any]:
        return lambda: LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            memory_limit=f"{MEMORY_GB * 0.9}GiB",
            dashboard_address=":0",
            security=security or None,
            silence_logs=logging.ERROR,
        )

    available = {
        "meadowrun": System(
            "meadowrun",
            f"MeadowCluster(n_workers={workers}), workers of 1 CPU / {MEMORY_GB} GB "
            "on the local cloud, TLS (the default)",
            meadow,
        ),
        "local": System(
            "local",
            f"LocalCluster(n_workers={workers}, threads_per_worker=1, processes=True), "
            "TCP (its default)",
            local(False),
        ),
        "local-tls": System(
            "local-tls",
            "the same LocalCluster with security=True (TLS, temporary certificates)",
            local(True),
        ),
    }
    return [available[n] for n in names]


@contextmanager
def ready_cluster(system: System, workers: int, times: list[float]) -> Iterator[Any]:
    """A started cluster and its client; the seconds it took to be ready go to ``times``."""
    from distributed import Client

    began = time.perf_counter()
    cluster = system.start()
    try:
        with Client(cluster) as client:
            client.wait_for_workers(workers, timeout=120)
            times.append(time.perf_counter() - began)
            yield client
    finally:
        cluster.close()


def measure_cold_starts(system: System, workers: int, count: int, quiet_wait: float) -> None:
    """Starts from nothing: every instance terminated first, so each start launches them."""
    from bench.load import wait_until_quiet
    from meadowrun_core.local import admin

    for number in range(count):
        admin.clean()
        if quiet_wait:
            wait_until_quiet(quiet_wait)
        with ready_cluster(system, workers, system.cold_ready_s):
            log.warning(
                "cold start %d: %s ready in %.2f s",
                number + 1,
                system.name,
                system.cold_ready_s[-1],
            )


def measure(
    systems: list[System], workers: int, rounds: int, size: int, chunk: int, quiet_wait: float
) -> None:
    from bench.load import CpuMeter, wait_until_quiet

    graph, expected = workload(size, chunk)
    warm_up, _ = workload(2 * chunk, chunk)  # imports and code on every worker, untimed
    for round_number in range(rounds):
        for system in systems if round_number % 2 == 0 else systems[::-1]:
            if system.error:
                continue
            if quiet_wait:
                wait_until_quiet(quiet_wait)
            meter = CpuMeter()
            meter.start()
            try:
                # one cluster at a time: two in one process share its event loop and GIL
                with ready_cluster(system, workers, system.ready_s) as client:
                    log.warning(
                        "round %d: %s ready in %.2f s",
                        round_number + 1,
                        system.name,
                        system.ready_s[-1],
                    )
                    client.compute(warm_up).result()
                    began = time.perf_counter()
                    got = client.compute(graph).result()
                    seconds = time.perf_counter() - began
            except Exception as exc:
                system.error = f"{type(exc).__name__}: {exc}"
                log.error("%s failed: %s", system.name, system.error)
                continue
            system.others_cores.append(meter.stop())
            if abs(got - expected) > 1e-6 * abs(expected):
                system.error = f"wrong answer {got!r}, expected {expected!r}"
                continue
            system.workload_s.append(seconds)
            log.warning("round %d: %s workload %.2f s", round_number + 1, system.name, seconds)


def render_markdown(
    systems: list[System], config: dict[str, Any], machine: dict[str, str], command: str
) -> str:
    lines = [
        SECTION_HEADING,
        "",
        f"Time to a ready cluster of {config['workers']} workers (created, client connected, "
        f"all workers registered) and a fixed dask.array workload, "
        f"`((x + x.T) ** 2).mean(axis=0).sum()` on a {config['size']}x{config['size']} "
        f"float64 array in {config['chunk']}x{config['chunk']} chunks "
        f"({(config['size'] // config['chunk']) ** 2} chunks, answer checked against NumPy), "
        f"median of {config['rounds']} rounds; in every round each system runs alone (start, "
        'workload, close), the systems taking turns. "ready": cluster created, client '
        "connected, all workers registered. Cold: median of "
        f"{config['cold_starts']} MeadowCluster starts from nothing (instances launched); "
        "warm: the starts in the rounds, which find the idle instances of the start before.",
        "",
        f"Command: `{command}`",
        "",
        "| system | setup | ready, cold (s) | ready, warm (s) | workload (s) | "
        "others' CPU (cores) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for s in systems:
        if s.error or not s.workload_s:
            lines.append(f"| {s.name} | {s.description} | failed: {s.error} | | | |")
            continue
        cold = f"{statistics.median(s.cold_ready_s):.2f}" if s.cold_ready_s else ""
        lines.append(
            f"| {s.name} | {s.description} | {cold} | {statistics.median(s.ready_s):.2f} | "
            f"{statistics.median(s.workload_s):.2f} | {statistics.median(s.others_cores):.2f} |"
        )
    lines.append("")
    by_name = {s.name: s for s in systems if s.workload_s and not s.error}
    ours = by_name.get("meadowrun")
    if ours is not None:
        for peer in ("local", "local-tls"):
            other = by_name.get(peer)
            if other is None:
                continue
            ratio = statistics.median(ours.workload_s) / statistics.median(other.workload_s)
            verdict = ""
            if peer == "local":
                verdict = " (target <= {:.1f}: {})".format(
                    TARGET_WORKLOAD_RATIO, "met" if ratio <= TARGET_WORKLOAD_RATIO else "NOT met"
                )
            lines.append(f"- workload, meadowrun / {peer}: {ratio:.2f}x{verdict}")
        for label, times in (("cold", ours.cold_ready_s), ("warm", ours.ready_s)):
            if times:
                median = statistics.median(times)
                every = ", ".join(f"{t:.2f}" for t in times)
                lines.append(
                    f"- ready cluster, {label}: {median:.2f} s (each: {every}; target < "
                    f"{TARGET_READY_S:g} s: {'met' if median < TARGET_READY_S else 'NOT met'})"
                )
    lines.append("")
    lines.append("Machine: " + "; ".join(f"{k}: {v}" for k, v in machine.items()))
    lines.append("")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cold-starts", type=int, default=3)
    parser.add_argument("--size", type=int, default=6000, help="the array is size x size")
    parser.add_argument("--chunk", type=int, default=750)
    parser.add_argument("--quick", action="store_true", help="1 round, a 2000x2000 array")
    parser.add_argument(
        "--systems",
        default="meadowrun,local,local-tls",
        help="comma-separated subset of meadowrun,local,local-tls",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        help="before each cluster start, wait up to this long for other "
        "processes to go quiet (a shared machine)",
    )
    parser.add_argument("--markdown", type=Path, help="write the table into this Markdown file")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.cold_starts, args.size, args.chunk = 1, 1, 2000, 500
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("meadowrun_core", "distributed", "meadowrun_dask"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    logging.getLogger("meadowrun_core.job").setLevel(logging.CRITICAL)  # servers' stderr
    scratch = Path(tempfile.mkdtemp(prefix="bench-dask-"))
    os.environ.update(
        {
            "MEADOWRUN_HOME": str(scratch / "meadowrun-home"),
            # the workers and the scheduler's 1 CPU; the local cloud may oversubscribe
            "MEADOWRUN_LOCAL_MAX_CPU": str(args.workers + 1),
            "MEADOWRUN_LOCAL_MAX_MEMORY_GB": str((args.workers + 1) * MEMORY_GB),
            "DASK_TEMPORARY_DIRECTORY": str(scratch / "dask"),
            # idle instances outlive a round, so every start after the first is a warm one
            "MEADOWRUN_IDLE_TIMEOUT": "3600",
        }
    )

    from bench.report import machine_description, write_section
    from meadowrun_core.local import admin

    systems = make_systems(args.workers, args.systems.split(","))
    try:
        for system in systems:
            if system.name == "meadowrun" and args.cold_starts:
                measure_cold_starts(system, args.workers, args.cold_starts, args.quiet_wait)
        measure(systems, args.workers, args.rounds, args.size, args.chunk, args.quiet_wait)
    finally:
        admin.clean()
        shutil.rmtree(scratch, ignore_errors=True)
    config = {
        "workers": args.workers,
        "rounds": args.rounds,
        "size": args.size,
        "chunk": args.chunk,
        "cold_starts": args.cold_starts,
    }
    command = "python -m bench.bench_dask " + " ".join(argv or sys.argv[1:])
    section = render_markdown(systems, config, machine_description(), command.strip())
    print(section)
    if args.markdown:
        write_section(args.markdown, section, SECTION_HEADING)
    return 1 if any(s.error for s in systems) else 0


if __name__ == "__main__":
    sys.exit(main())
