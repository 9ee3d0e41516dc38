"""Live Spot eviction-rate bands per location, read from Azure Resource Graph, kept in the
same TTL cache as sizes and prices, with the built-in table as the fallback.

Why Resource Graph: it is where Azure publishes the bands the portal shows (the
``SpotResources`` table, ``eviction_rates.RESOURCE_GRAPH_QUERY``), readable by any
subscription Reader through one ARM call; no SDK is needed for it (``arm.Arm``:
``POST /providers/Microsoft.ResourceGraph/resources?api-version=2021-03-01`` with
``{"subscriptions", "query", "options": {"resultFormat": "objectArray"}}``, more pages while
the answer carries a ``$skipToken``, sent back in ``options``).

Why a fallback and not an error: the bands only move the Spot-or-regular line, so a caller
without read access to Resource Graph (a 403), or a network that cannot reach it, still gets
sensible choices from ``eviction_rates.DefaultBands``. That is logged as a warning once per
location and process, and not retried in this process for the cache's TTL (a refusal does
not go away by asking every launch). Resource Graph's size names are lower-case
(``standard_d2s_v5``): ``LiveBands`` looks sizes up case-insensitively. A size it does not
list is unknown (``20+``); an answer with no bands at all counts as a failure.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

from azure.core.exceptions import AzureError

from meadowrun_core.azure.arm import Arm
from meadowrun_core.azure.eviction_rates import (
    RESOURCE_GRAPH_QUERY,
    DefaultBands,
    parse_graph_rows,
)
from meadowrun_core.disk_cache import DiskCache
from meadowrun_core.exceptions import MeadowrunError

log = logging.getLogger(__name__)

GRAPH_PATH = "/providers/Microsoft.ResourceGraph/resources"
GRAPH_API_VERSION = "2021-03-01"
PAGE_ROWS = 1000  # Resource Graph's largest $top
MAX_PAGES = 100  # a location lists a few hundred sizes

_failed_lock = threading.Lock()
_failed: dict[tuple[str, str, str], float] = {}  # (ARM URL, subscription, location) -> when


class LiveBands(Mapping[str, str]):
    """Bands by size name, looked up case-insensitively."""

    def __init__(self, bands: Mapping[str, str]) -> None:
        self._bands = {name.lower(): band for name, band in bands.items()}

    def __getitem__(self, size: str) -> str:
        return self._bands[size.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._bands)

    def __len__(self) -> int:
        return len(self._bands)


def graph_query(location: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9]+", location):  # it goes inside a quoted Kusto string
        raise MeadowrunError(f"not an Azure location name: {location!r}")
    return RESOURCE_GRAPH_QUERY.format(location=location)


def fetch_graph_rows(arm: Arm, location: str) -> list[dict[str, Any]]:
    """Every row ``RESOURCE_GRAPH_QUERY`` gives for ``location``, following ``$skipToken``."""
    options: dict[str, Any] = {"resultFormat": "objectArray", "$top": PAGE_ROWS}
    body = {"subscriptions": [arm.subscription_id], "query": graph_query(location)}
    rows: list[dict[str, Any]] = []
    for _ in range(MAX_PAGES):
        page = arm.post(GRAPH_PATH, GRAPH_API_VERSION, {**body, "options": options})
        rows.extend(row for row in page.get("data") or [] if isinstance(row, dict))
        token = page.get("$skipToken")
        if not token:
            return rows
        options = {**options, "$skipToken": token}
    raise MeadowrunError(f"Resource Graph gave more than {MAX_PAGES} pages for {location}")


class GraphBandSource:
    """Bands of one subscription's locations: cached, else from Resource Graph, else the
    built-in table (see the module docstring). ``cache_tag`` keeps an emulator's answers
    apart from Azure's, as for sizes and prices."""

    def __init__(self, arm: Arm, cache: DiskCache, cache_tag: str = "") -> None:
        self.arm = arm
        self.cache = cache
        self.cache_tag = cache_tag

    def bands(self, location: str) -> Mapping[str, str]:
        key = f"azure-eviction-bands-{location}{self.cache_tag}"
        stored = self.cache.get(key)
        if isinstance(stored, dict):
            return LiveBands(stored)
        failure = (self.arm.url(""), self.arm.subscription_id, location.lower())
        with _failed_lock:
            failed_at = _failed.get(failure)
        if failed_at is not None and time.time() - failed_at < self.cache.ttl_seconds:
            return DefaultBands()
        try:
            bands = parse_graph_rows(fetch_graph_rows(self.arm, location))
            if not bands:
                raise MeadowrunError("it has no Spot eviction rates for this location")
        except (AzureError, MeadowrunError) as exc:
            with _failed_lock:
                _failed[failure] = time.time()
            log.warning(
                "could not read Spot eviction rates for %s from Azure Resource Graph (%s); "
                "using meadowrun's built-in table of typical bands instead",
                location,
                str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
            )
            return DefaultBands()
        self.cache.put(key, bands)
        return LiveBands(bands)
