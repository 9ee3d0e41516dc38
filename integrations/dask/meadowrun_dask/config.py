"""Register meadowrun_dask's defaults under the ``meadowrun`` key of dask.config, the way Dask
and its deployment projects ship theirs (a YAML next to the code, merged as defaults), so users
override them in their own Dask YAML or with ``DASK_MEADOWRUN__...`` environment variables."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import dask.config
import yaml

logger = logging.getLogger(__name__)

CONFIG_PATH = Path(__file__).with_name("meadowrun.yaml")

defaults: dict[str, Any] | None = None
try:
    with CONFIG_PATH.open() as f:
        defaults = yaml.safe_load(f)
except FileNotFoundError:
    # Deployment.mirror_local copies only code files, so a mirrored copy of this package on an
    # instance has no YAML; the servers there run with the client's config, passed to them.
    logger.debug("no %s; relying on the config sent by the client", CONFIG_PATH)
else:
    dask.config.update_defaults(defaults)


def ensure_defaults() -> None:
    """Put the defaults back under any setting that lost them: code that resets Dask's config
    to a copy taken before this module was imported (as Dask's test utilities do) drops the
    ``meadowrun`` key, and the user's own settings must still win."""
    if defaults is not None:
        dask.config.update(dask.config.config, copy.deepcopy(defaults), priority="old")
