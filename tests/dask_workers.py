"""The scheduler's workers, asked for directly.

``Client.scheduler_info()`` is not safe for per-worker reads: it stores the scheduler's answer
on the client and returns the stored value, and the client's own periodic refresh (every
``distributed.client.scheduler-info-interval``) stores an answer *without* workers. When that
refresh lands between the two, ``["workers"]`` comes back empty (distributed 2026.8; seen in CI
as a ``KeyError`` on a worker that was alive). Asking the scheduler's ``identity`` handler
returns this call's own answer.
"""

from __future__ import annotations

from typing import Any

from distributed import Client


def scheduler_workers(client: Client) -> dict[str, Any]:
    """Address -> the scheduler's identity of that worker, for every worker it knows now."""
    info = client.sync(client.scheduler.identity, n_workers=-1)
    workers: dict[str, Any] = info["workers"]
    return workers
