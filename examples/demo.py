"""The main demo: functions, commands and a map job on the embedded local cloud.

Run with ``scripts/demo`` (or ``.venv/bin/python examples/demo.py``). No cloud account needed;
set ``MEADOWRUN_HOST=ec2`` once the AWS backend is built to run the same code on EC2.
"""

from __future__ import annotations

import logging
import math
import time

import meadowrun_core as mr


def count_primes(limit: int) -> int:
    """A small CPU-bound job."""
    return sum(1 for n in range(2, limit) if all(n % d for d in range(2, math.isqrt(n) + 1)))


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("demo")

    start = time.perf_counter()
    primes = mr.run_function(count_primes, args=(20_000,))
    log.info(
        "run_function: %d primes below 20,000 (%.2f s, incl. starting an instance)",
        primes,
        time.perf_counter() - start,
    )

    start = time.perf_counter()
    mr.run_function(count_primes, args=(1_000,))
    log.info("warm run_function round trip: %.1f ms", (time.perf_counter() - start) * 1000)

    result = mr.run_command(
        ["python3", "-c", "import platform; print('hello from', platform.node())"]
    )
    log.info("run_command exit code: %s", result.return_code)

    start = time.perf_counter()
    counts = mr.run_map(
        count_primes,
        [5_000 * (i + 1) for i in range(8)],
        resources_per_task=mr.Resources(logical_cpu=1, memory_gb=1),
        num_concurrent_tasks=2,
    )
    log.info("run_map over 8 inputs on 2 workers: %s (%.2f s)", counts, time.perf_counter() - start)

    try:
        mr.run_function(count_primes, args=(10,), resources=mr.Resources(logical_cpu=10_000))
    except mr.ResourcesNotAvailableError as error:
        log.info("an impossible request fails before anything launches:\n  %s", error)


if __name__ == "__main__":
    main()
