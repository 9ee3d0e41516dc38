"""Prefect benchmark (issue 5): one flow of small tasks on MeadowrunTaskRunner,
ThreadPoolTaskRunner and prefect-dask's DaskTaskRunner over a LocalCluster, in one run, against
one temporary Prefect server.

    .venv/bin/python -m bench.bench_prefect                       # 200 tasks, 5 rounds
    .venv/bin/python -m bench.bench_prefect --quick               # smoke run
    .venv/bin/python -m bench.bench_prefect --markdown docs/performance.md

Every system gets the same concurrency (``--workers``): W threads, W Dask worker processes of
one thread, or a local cloud of W CPUs with tasks of 1 CPU (W meadowrun workers). Systems run
in turn, round after round, so a busy machine slows them alike; each figure is the median
over the rounds. "first" is the first flow run of a system (Dask's cluster start, meadowrun's
instance launch and worker start, Prefect imported in the workers). DaskTaskRunner is
measured both as users write it (``DaskTaskRunner()`` starts a LocalCluster per flow run) and
attached to a LocalCluster started once (``address=``), the fairer warm comparison.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SECTION_HEADING = "## Prefect task runners (issue 5)"
TARGET_RATIO = 1.5

log = logging.getLogger("bench.prefect")


def offline_prefect_environment(scratch: Path, workers: int) -> None:
    """Prefect and meadowrun fully local and private to this run; set before importing them."""
    os.environ.update(
        {
            "MEADOWRUN_HOME": str(scratch / "meadowrun-home"),
            "MEADOWRUN_LOCAL_MAX_CPU": str(workers),
            # instances stay up between rounds, as the attached Dask cluster does
            "MEADOWRUN_IDLE_TIMEOUT": "1800",
            "PREFECT_HOME": str(scratch / "prefect-home"),
            "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(scratch / "prefect-results"),
            "PREFECT_SERVER_MEMO_STORE_PATH": str(scratch / "prefect-memo.toml"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE": "true",
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
            "PREFECT_LOGGING_LEVEL": "WARNING",
            "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "0.5",
        }
    )


def small(x: int) -> int:
    """A small task: a few microseconds of work, so the runner's overhead is what is timed."""
    return sum(range(100)) + x


@dataclass
class Result:
    name: str
    description: str
    first_s: float = float("nan")
    runs_s: list[float] = field(default_factory=list)
    others_cores: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def median_s(self) -> float:
        return statistics.median(self.runs_s) if self.runs_s else float("nan")


@dataclass
class System:
    name: str
    description: str
    make_runner: Callable[[], Any]


def progress(message: str) -> None:
    print(f"[bench-prefect] {message}", file=sys.stderr, flush=True)


@contextmanager
def dask_cluster(workers: int) -> Iterator[str]:
    from distributed import LocalCluster

    with LocalCluster(  # type: ignore[no-untyped-call]
        n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        yield str(cluster.scheduler_address)


def make_systems(workers: int, stack: ExitStack, names: list[str]) -> list[System]:
    from prefect.task_runners import ThreadPoolTaskRunner

    import meadowrun_core as mr
    from meadowrun_prefect import MeadowrunTaskRunner

    systems: list[System] = []
    for name in names:
        if name == "meadowrun":
            systems.append(
                System(
                    "meadowrun",
                    f"MeadowrunTaskRunner, local cloud of {workers} CPUs, tasks of 1 CPU",
                    lambda: MeadowrunTaskRunner(
                        resources=mr.Resources(logical_cpu=1, memory_gb=0.5)
                    ),
                )
            )
        elif name == "threads":
            systems.append(
                System(
                    "threads",
                    f"ThreadPoolTaskRunner(max_workers={workers})",
                    lambda: ThreadPoolTaskRunner(max_workers=workers),
                )
            )
        elif name in ("dask", "dask-attached"):
            try:
                from prefect_dask import DaskTaskRunner
            except ImportError:
                progress(f"{name}: prefect-dask is not installed; skipped")
                continue
            if name == "dask":
                kwargs = {
                    "n_workers": workers,
                    "threads_per_worker": 1,
                    "processes": True,
                    "dashboard_address": None,
                }
                systems.append(
                    System(
                        "dask",
                        f"DaskTaskRunner(), a LocalCluster of {workers} workers per flow run",
                        functools.partial(DaskTaskRunner, cluster_kwargs=kwargs),
                    )
                )
            else:
                address = stack.enter_context(dask_cluster(workers))
                systems.append(
                    System(
                        "dask-attached",
                        f"DaskTaskRunner(address=...), one LocalCluster of {workers} workers",
                        functools.partial(DaskTaskRunner, address=address),
                    )
                )
    return systems


def run_flow_metered(runner: Any, tasks: int, result: Result) -> float:
    """``run_flow``, noting how many cores other processes used meanwhile."""
    from bench.load import CpuMeter

    meter = CpuMeter()
    meter.start()
    seconds = run_flow(runner, tasks)
    result.others_cores.append(meter.stop())
    return seconds


def run_flow(runner: Any, tasks: int) -> float:
    from prefect import flow, task

    small_task = task(name="small")(small)

    @flow(name="bench-prefect", task_runner=runner, log_prints=False)
    def bench_flow(n: int) -> int:
        return sum(small_task.map(range(n)).result())

    start = time.perf_counter()
    total = bench_flow(tasks)
    seconds = time.perf_counter() - start
    expected = sum(small(i) for i in range(tasks))
    if total != expected:
        raise AssertionError(f"wrong result {total}, expected {expected}")
    return seconds


def measure(systems: list[System], tasks: int, rounds: int) -> list[Result]:
    results = {s.name: Result(s.name, s.description) for s in systems}
    for system in systems:
        result = results[system.name]
        try:
            result.first_s = run_flow_metered(system.make_runner(), tasks, result)
            progress(f"{system.name}: first flow run {result.first_s:.2f} s")
        except Exception as exc:
            result.error = f"{type(exc).__name__}: {exc}"
            progress(f"{system.name}: FAILED {result.error}")
    for round_number in range(rounds):
        for system in systems:
            result = results[system.name]
            if result.error:
                continue
            try:
                seconds = run_flow_metered(system.make_runner(), tasks, result)
            except Exception as exc:
                result.error = f"{type(exc).__name__}: {exc}"
                progress(f"{system.name}: FAILED {result.error}")
                continue
            result.runs_s.append(seconds)
            progress(f"round {round_number + 1}: {system.name} {seconds:.2f} s")
    return list(results.values())


def render_markdown(
    results: list[Result], config: dict[str, Any], machine: dict[str, str], command: str
) -> str:
    by_name = {r.name: r for r in results}
    lines = [
        SECTION_HEADING,
        "",
        f"A flow of {config['tasks']} small tasks (`task.map` over {config['tasks']} inputs, "
        f"each a few microseconds of work) run by each task runner against one temporary "
        f"Prefect server, with the same concurrency ({config['workers']}) for all; median of "
        f"{config['rounds']} flow runs per runner, runners taking turns round after round. "
        '"first" is each runner\'s first flow run (cluster or instance start, Prefect '
        'imported in the workers). "others\' cores": the cores other processes on this '
        f"shared {os.cpu_count()}-core machine used meanwhile, on average over its runs.",
        "",
        f"Command: `{command}`",
        "",
        "| runner | setup | first flow run (s) | flow run, median (s) | all runs (s) | "
        "per task (ms) | others' cores |",
        "|---|---|---:|---:|---|---:|---:|",
    ]
    for r in results:
        if r.error:
            lines.append(f"| {r.name} | {r.description} | failed: {r.error} | | | | |")
            continue
        per_task = r.median_s / config["tasks"] * 1000
        runs = ", ".join(f"{s:.1f}" for s in r.runs_s)
        others = statistics.mean(r.others_cores) if r.others_cores else float("nan")
        lines.append(
            f"| {r.name} | {r.description} | {r.first_s:.2f} | {r.median_s:.2f} | {runs} | "
            f"{per_task:.1f} | {others:.2f} |"
        )
    lines.append("")
    ours = by_name.get("meadowrun")
    for peer in ("dask", "dask-attached", "threads"):
        other = by_name.get(peer)
        if ours is None or other is None or ours.error or other.error:
            continue
        ratio = ours.median_s / other.median_s
        verdict = ""
        if peer.startswith("dask"):
            verdict = " (target <= {:.1f}: {})".format(
                TARGET_RATIO, "met" if ratio <= TARGET_RATIO else "NOT met"
            )
        lines.append(f"- meadowrun / {peer}: {ratio:.2f}x{verdict}")
    lines.append("")
    lines.append("Machine: " + "; ".join(f"{k}: {v}" for k, v in machine.items()))
    lines.append("")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="20 tasks, 1 round")
    parser.add_argument("--markdown", type=Path, help="write the table into this Markdown file")
    parser.add_argument(
        "--systems",
        default="meadowrun,dask,dask-attached,threads",
        help="comma-separated subset of meadowrun,dask,dask-attached,threads",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.tasks, args.rounds = 20, 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    scratch = Path(tempfile.mkdtemp(prefix="bench-prefect-"))
    offline_prefect_environment(scratch, args.workers)
    logging.getLogger("meadowrun_core").setLevel(logging.WARNING)
    logging.getLogger("meadowrun_core.job").setLevel(logging.ERROR)  # workers' console logs
    logging.getLogger("distributed").setLevel(logging.ERROR)

    from prefect.testing.utilities import prefect_test_harness

    from bench.report import machine_description, write_section
    from meadowrun_core.local import admin

    results: list[Result] = []
    try:
        with ExitStack() as stack:
            stack.enter_context(prefect_test_harness(server_startup_timeout=90))
            systems = make_systems(args.workers, stack, args.systems.split(","))
            results = measure(systems, args.tasks, args.rounds)
    finally:
        admin.clean()
        shutil.rmtree(scratch, ignore_errors=True)
    config = {"tasks": args.tasks, "rounds": args.rounds, "workers": args.workers}
    command = "python -m bench.bench_prefect " + " ".join(argv or sys.argv[1:])
    section = render_markdown(results, config, machine_description(), command.strip())
    print(section)
    if args.markdown:
        write_section(args.markdown, section, SECTION_HEADING)
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
