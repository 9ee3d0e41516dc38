"""A Prefect flow whose tasks run on meadowrun instances: one line changes,
``@flow(task_runner=MeadowrunTaskRunner(...))``.

Run with ``scripts/demo`` (or ``.venv/bin/python examples/prefect_flow.py``). With no Prefect
server configured it uses Prefect's own temporary local server (offline, under a throwaway
PREFECT_HOME) and the embedded local cloud; with ``PREFECT_API_URL`` set, the flow and its
task runs show up in that server's UI. Set ``MEADOWRUN_HOST=ec2`` (once the AWS backend is
built) to run the same tasks on EC2.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time

if __name__ == "__main__" and not os.environ.get("PREFECT_API_URL"):
    # offline and private, set before prefect is imported (it reads its settings once)
    _home = tempfile.mkdtemp(prefix="meadowrun-prefect-demo-")
    for _key, _value in {
        "PREFECT_HOME": _home,
        "PREFECT_RESULTS_LOCAL_STORAGE_PATH": os.path.join(_home, "results"),
        "PREFECT_SERVER_MEMO_STORE_PATH": os.path.join(_home, "memo.toml"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE": "true",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    }.items():
        os.environ.setdefault(_key, _value)

from prefect import flow, task
from prefect.logging import get_logger
from prefect.utilities.annotations import unmapped

import meadowrun_core as mr
from meadowrun_prefect import MeadowrunTaskRunner, meadowrun_options

log = get_logger("examples.prefect_flow")  # Prefect's logging setup keeps its loggers on


@task
def extract(source: str) -> list[int]:
    """Pretend to read a source: a few numbers derived from its name."""
    return [len(source) * i for i in range(1, 6)]


@task
def transform(value: int, scale: int) -> int:
    return value * scale


@task(tags=["meadowrun:memory_gb=2"])  # this task asks for more memory than the runner's default
def aggregate(values: list[int]) -> dict[str, float]:
    return {"count": len(values), "total": sum(values), "mean": sum(values) / len(values)}


@task(retries=2, retry_delay_seconds=0)
def flaky_publish(summary: dict[str, float], marker: str) -> str:
    """Fails on its first attempt, to show Prefect's retries working across instances."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise ConnectionError("the report server did not answer (first attempt)")
    return f"published {summary['count']:.0f} values, total {summary['total']:.0f}"


@task
async def notify(message: str) -> str:
    return f"notified: {message}"


@flow(
    name="meadowrun-etl",
    task_runner=MeadowrunTaskRunner(resources=mr.Resources(logical_cpu=1, memory_gb=1)),
)
def etl(sources: list[str], marker: str) -> str:
    raw = extract.map(sources)
    flat = [value for values in raw.result() for value in values]
    scaled = transform.map(flat, unmapped(10))
    summary = aggregate.submit(scaled)
    # per call, the Prefect counterpart of dask.annotate (any Resources or Deployment)
    with meadowrun_options(resources=mr.Resources(logical_cpu=1, memory_gb=1.5)):
        published = flaky_publish.submit(summary, marker)
    return notify.submit(published).result()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("meadowrun_core.job").setLevel(logging.WARNING)  # workers' Prefect logs
    logging.getLogger("httpx").setLevel(logging.WARNING)
    marker = os.path.join(tempfile.mkdtemp(prefix="meadowrun-prefect-marker-"), "attempted")
    start = time.perf_counter()
    result = etl(["orders", "customers", "inventory"], marker)
    log.info("%s (%.1f s, incl. starting instances)", result, time.perf_counter() - start)


if __name__ == "__main__":
    main()
