"""Dask on meadowrun: ``Client(MeadowCluster(...))`` instead of ``Client(LocalCluster(...))``.

Run with ``scripts/demo`` (or ``.venv/bin/python examples/dask_example.py``). The scheduler and
the workers are meadowrun jobs on the embedded local cloud, this code is mirrored to them, every
connection uses TLS with certificates made for this cluster, and nothing is left running when
the ``with`` block ends (or when this process is killed).
"""

from __future__ import annotations

import logging
import time

import dask.array as da
import dask.dataframe as dd
import numpy as np
import pandas as pd
from distributed import Client

import meadowrun_core as mr
from meadowrun_dask import MeadowCluster

log = logging.getLogger("dask_example")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("meadowrun_core.job").setLevel(logging.ERROR)  # the servers' own logs

    # Small servers, so that the demo fits a 2-CPU machine: the local cloud never launches
    # past this machine's CPUs. In the cloud, ask for what the work needs (the defaults are in
    # meadowrun_dask/meadowrun.yaml); workers may then run on spot instances.
    small = mr.Resources(logical_cpu=0.5, memory_gb=0.5)
    scheduler = mr.Resources(logical_cpu=0.5, memory_gb=0.5, max_eviction_rate=0)
    start = time.perf_counter()
    with (
        MeadowCluster(
            n_workers=2, worker_resources=small, scheduler_resources=scheduler
        ) as cluster,
        Client(cluster) as client,
    ):
        client.wait_for_workers(2, timeout=120)
        log.info(
            "cluster of 2 workers ready in %.2f s at %s (dashboard %s)",
            time.perf_counter() - start,
            cluster.scheduler_address,
            cluster.dashboard_link,
        )

        x = da.random.RandomState(0).random((4000, 4000), chunks=(500, 500))
        start = time.perf_counter()
        total = float((x + x.T).sum().compute())
        log.info("dask.array: sum(x + x.T) = %.1f (%.2f s)", total, time.perf_counter() - start)

        rng = np.random.default_rng(0)
        pdf = pd.DataFrame({"key": rng.integers(0, 5, 100_000), "value": rng.random(100_000)})
        means = dd.from_pandas(pdf, npartitions=8).groupby("key")["value"].mean().compute()
        assert np.allclose(means.sort_index(), pdf.groupby("key")["value"].mean())
        log.info("dask.dataframe groupby: %s", means.sort_index().round(3).to_dict())

        cluster.scale(1)
        # the cluster's own view, fed by the scheduler's worker events (client.scheduler_info()
        # can come back without workers when the client's periodic refresh lands in between)
        while len(cluster.scheduler_info["workers"]) > 1:
            time.sleep(0.2)
        log.info("scaled down to 1 worker; its allocation is freed")
    log.info("closed: every scheduler and worker job has ended")


if __name__ == "__main__":
    main()
