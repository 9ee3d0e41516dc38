"""Dask clusters on meadowrun: ``Client(MeadowCluster(...))``."""

from meadowrun_dask import config as _config  # noqa: F401  (registers the dask.config defaults)
from meadowrun_dask.cluster import MeadowCluster
from meadowrun_dask.servers import MeadowScheduler, MeadowWorker

__all__ = ["MeadowCluster", "MeadowScheduler", "MeadowWorker"]
