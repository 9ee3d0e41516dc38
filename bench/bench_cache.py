"""Result cache benchmark (issue 16): re-running a finished ``run_map`` with ``cache=True`` on
the local cloud, which should launch nothing and take well under 0.5 s for 1,000 tasks.

    .venv/bin/python -m bench.bench_cache                  # 1,000 tasks
    .venv/bin/python -m bench.bench_cache --tasks 10000

In a private ``MEADOWRUN_HOME`` (``MEADOWRUN_LOCAL_MAX_CPU=2``), with the default deployment
(this checkout mirrored, so the code is hashed as a user's would be), of ``bench.workloads.noop``:

1. the first map over ``tasks - 10`` elements (it launches instances and stores each result);
2. a map over all ``tasks`` elements: only the 10 new ones run;
3. the same map again in this process, fully cached (best and median of 5), and the jobs it
   started (should be 0);
4. the same map in a fresh client process: the call itself, and the whole process (start,
   imports, the call).

Another process editing files of this checkout between the runs changes the deployment and
so misses the cache: the "jobs started" figures show it, and the run should be repeated.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

REPO = Path(__file__).resolve().parent.parent
NEW_TASKS = 10
REPEATS = 5

_FRESH = """
import time
t0 = time.perf_counter()
import meadowrun_core as mr
from bench.workloads import noop
t1 = time.perf_counter()
results = list(mr.run_map_as_completed(noop, range({tasks}), cache=True, progress=False))
t2 = time.perf_counter()
assert sorted(r.result for r in results) == list(range({tasks}))
print(t2 - t1, sum(r.cached for r in results))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1000)
    tasks = parser.parse_args().tasks
    home = Path(tempfile.mkdtemp(prefix="bench-cache-")) / "home"
    os.environ["MEADOWRUN_HOME"] = str(home)
    os.environ["MEADOWRUN_LOCAL_MAX_CPU"] = "2"
    os.environ.pop("MEADOWRUN_HOST", None)

    import meadowrun_core as mr
    from bench.workloads import noop
    from meadowrun_core.client.runtime import ClientRuntime
    from meadowrun_core.local import admin

    table = ClientRuntime.get().backend(None).table

    def jobs() -> int:
        return len(table.job_history(1_000_000))

    def timed_map(count: int) -> tuple[float, int, int]:
        before = jobs()
        start = time.perf_counter()
        results = list(mr.run_map_as_completed(noop, range(count), cache=True, progress=False))
        elapsed = time.perf_counter() - start
        assert sorted(r.result for r in results) == list(range(count))
        return elapsed, sum(r.cached for r in results), jobs() - before

    try:
        first, _, first_jobs = timed_map(tasks - NEW_TASKS)
        print(f"first map of {tasks - NEW_TASKS} tasks: {first:.2f} s ({first_jobs} job(s))")
        rest, cached, rest_jobs = timed_map(tasks)
        print(
            f"map of {tasks} with {tasks - NEW_TASKS} done before: {rest:.3f} s, "
            f"{tasks - cached} ran, {rest_jobs} job(s) started"
        )
        runs = [timed_map(tasks) for _ in range(REPEATS)]
        times = [t for t, _, _ in runs]
        print(
            f"re-run of the finished map of {tasks} (this process): best {min(times):.3f} s, "
            f"median {statistics.median(times):.3f} s; cached {min(c for _, c, _ in runs)}/"
            f"{tasks}; jobs started {sum(j for _, _, j in runs)}"
        )
        before = jobs()
        started = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", _FRESH.format(tasks=tasks)],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        whole = time.perf_counter() - started
        call, fresh_cached = proc.stdout.split()
        print(
            f"re-run in a fresh client process: the call {float(call):.3f} s, the whole process "
            f"{whole:.2f} s; cached {fresh_cached}/{tasks}; jobs started {jobs() - before}"
        )
    finally:
        ClientRuntime.get().forget_backends()
        admin.clean()
        shutil.rmtree(home.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
