"""One small adapter per system under test, all with the same interface and worker count.

Each adapter imports its library lazily (imports are not part of any timing) and owns what it
starts: ``close`` stops every process it created.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from bench.workloads import noop

Task = Callable[[Any], Any]


class System(Protocol):
    """What the harness needs from a system; ``start`` is timed as the cold start."""

    name: str
    notes: list[str]

    def prepare(self) -> None:
        """Untimed: import the library and make sure nothing of it is running."""

    def start(self) -> Any:
        """From nothing to the first result of ``noop(0)``; returns that result."""

    def call(self, x: int) -> Any:
        """One synchronous round trip of ``noop(x)``."""

    def map(self, function: Task, items: Sequence[Any]) -> list[Any]:
        """Run ``function`` on every item on all workers; results in input order."""

    def close(self) -> None:
        """Stop everything this system started."""


class Meadowrun:
    """meadowrun's embedded local cloud, limited to ``workers`` CPUs."""

    name = "meadowrun"

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.notes = [
            f"run_map(num_concurrent_tasks={workers}), Resources(logical_cpu=1, memory_gb=1), "
            f"MEADOWRUN_LOCAL_MAX_CPU={os.environ.get('MEADOWRUN_LOCAL_MAX_CPU')}, "
            "default deployment (Deployment.mirror_local())"
        ]
        self._mr: Any = None
        self._resources: Any = None

    def prepare(self) -> None:
        import meadowrun_core as mr
        from meadowrun_core import event_loop
        from meadowrun_core.local import admin

        self.notes[0] += f", {event_loop.chosen()} event loop"
        self._mr = mr
        self._resources = mr.Resources(logical_cpu=1, memory_gb=1)
        admin.clean()  # cold start means: no instance at all

    def start(self) -> Any:
        return self.call(0)

    def call(self, x: int) -> Any:
        return self._mr.run_function(noop, args=(x,), resources=self._resources)

    def map(self, function: Task, items: Sequence[Any]) -> list[Any]:
        result: list[Any] = self._mr.run_map(
            function,
            items,
            resources_per_task=self._resources,
            num_concurrent_tasks=self.workers,
        )
        return result

    def close(self) -> None:
        from meadowrun_core.client.runtime import ClientRuntime
        from meadowrun_core.local import admin

        ClientRuntime.get().forget_backends()
        admin.clean()


class DaskLocal:
    """Dask's LocalCluster: ``workers`` worker processes with one thread each."""

    name = "dask"

    def __init__(self, workers: int, scratch: Path) -> None:
        self.workers = workers
        self.scratch = scratch
        self.notes = [
            f"LocalCluster(n_workers={workers}, threads_per_worker=1, processes=True), "
            "client.submit(pure=False) / client.map(pure=False) + gather"
        ]
        self._cluster: Any = None
        self._client: Any = None

    def prepare(self) -> None:
        import distributed  # noqa: F401  (imported untimed)

    def start(self) -> Any:
        from distributed import Client, LocalCluster

        self._cluster = LocalCluster(  # type: ignore[no-untyped-call]
            n_workers=self.workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
            local_directory=str(self.scratch),
        )
        self._client = Client(self._cluster)  # type: ignore[no-untyped-call]
        return self.call(0)

    def call(self, x: int) -> Any:
        return self._client.submit(noop, x, pure=False).result()

    def map(self, function: Task, items: Sequence[Any]) -> list[Any]:
        futures = self._client.map(function, items, pure=False)
        result: list[Any] = self._client.gather(futures)
        return result

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        if self._cluster is not None:
            self._cluster.close()


class ProcessPool:
    """The standard library's ProcessPoolExecutor with ``workers`` processes."""

    name = "ppe"

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.notes = [
            f"ProcessPoolExecutor(max_workers={workers}), start method "
            f"{multiprocessing.get_start_method()}; executor.map with the default chunksize=1"
        ]
        self._executor: ProcessPoolExecutor | None = None

    def prepare(self) -> None:
        pass

    def start(self) -> Any:
        self._executor = ProcessPoolExecutor(max_workers=self.workers)
        return self.call(0)

    def call(self, x: int) -> Any:
        assert self._executor is not None
        return self._executor.submit(noop, x).result()

    def map(self, function: Task, items: Sequence[Any]) -> list[Any]:
        assert self._executor is not None
        return list(self._executor.map(function, items))

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)


class RayLocal:
    """Ray on this machine with ``workers`` CPUs; its local mode where the version has one."""

    name = "ray"

    def __init__(self, workers: int, scratch: Path) -> None:
        self.workers = workers
        self.scratch = scratch
        self.notes: list[str] = []
        self._ray: Any = None
        self._remote: dict[Task, Any] = {}

    def prepare(self) -> None:
        # no usage reporting, no auth token written to ~/.ray for a throwaway local cluster
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        import ray

        self._ray = ray

    def start(self) -> Any:
        ray = self._ray
        options: dict[str, Any] = {
            "num_cpus": self.workers,
            "include_dashboard": False,
            "log_to_driver": False,
            "object_store_memory": 256 * 2**20,
            "_temp_dir": str(self.scratch),
        }
        try:
            ray.init(local_mode=True, **options)
            mode = "local_mode=True"
        except RuntimeError as exc:  # Ray >= 2.5x: "local_mode is no longer supported"
            ray.init(**options)
            reason = str(exc).split(".")[0]
            mode = f"normal local cluster, since local_mode=True is refused ({reason})"
        self.notes = [f"ray {ray.__version__}: ray.init(num_cpus={self.workers}), {mode}"]
        return self.call(0)

    def _as_remote(self, function: Task) -> Any:
        if function not in self._remote:
            self._remote[function] = self._ray.remote(function)
        return self._remote[function]

    def call(self, x: int) -> Any:
        return self._ray.get(self._as_remote(noop).remote(x))

    def map(self, function: Task, items: Sequence[Any]) -> list[Any]:
        remote = self._as_remote(function)
        result: list[Any] = self._ray.get([remote.remote(item) for item in items])
        return result

    def close(self) -> None:
        if self._ray is not None:
            with contextlib.suppress(Exception):
                self._ray.shutdown()
