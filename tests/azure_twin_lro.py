"""Long-running operations of the Azure twin, as "Track asynchronous Azure operations"
(learn.microsoft.com/azure/azure-resource-manager/management/async-operations) documents.

The accepting response carries ``Azure-AsyncOperation`` (the operation's status URL; DELETE
also ``Location``, its result URL) and ``Retry-After``. The status URL answers ``{"name",
"status": "InProgress"|"Succeeded"|"Failed", "startTime", "endTime", "error"}`` (as Compute's
``/locations/{loc}/operations/{id}`` does); the ``Location`` URL answers 202 while running, then
200. ``Retry-After`` is ``retry_after`` whole seconds (the SDK reads it as an int; at 0 a
client waits its own ``polling_interval``, which the twin's test clients set short)."""

from __future__ import annotations

import datetime
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from tests.azure_twin_http import Request, Response, error

Work = Callable[[], dict[str, str] | None]  # the work; an ARM error dict when it failed


@dataclass
class _Operation:
    start: str
    status: str = "InProgress"
    end: str | None = None
    error: dict[str, str] | None = None


class Operations:
    def __init__(self, subscription: str, retry_after: int) -> None:
        self.subscription = subscription
        self.retry_after = retry_after
        self._lock = threading.Lock()
        self._ops: dict[str, _Operation] = {}

    def start(self, work: Work) -> str:
        """Run ``work`` in a thread of its own; the operation's id."""
        op_id = str(uuid.uuid4())
        with self._lock:
            self._ops[op_id] = _Operation(start=now())
        threading.Thread(target=self._run, args=(op_id, work), daemon=True).start()
        return op_id

    def _run(self, op_id: str, work: Work) -> None:
        try:
            failure = work()
        except Exception as exc:
            failure = {"code": "InternalExecutionError", "message": repr(exc)}
        with self._lock:
            op = self._ops[op_id]
            op.status = "Failed" if failure else "Succeeded"
            op.error, op.end = failure, now()

    def headers(self, request: Request, location: str, op_id: str, delete: bool) -> dict[str, str]:
        url = (
            f"{request.base_url}/subscriptions/{self.subscription}/providers/Microsoft.Compute/"
            f"locations/{location}/operations/{op_id}?api-version={request.query['api-version']}"
        )
        headers = {"Azure-AsyncOperation": url, "Retry-After": str(self.retry_after)}
        if delete:
            headers["Location"] = url + "&monitor=true"
        return headers

    def answer(self, op_id: str, monitor: bool) -> Response:
        retry = {"Retry-After": str(self.retry_after)}
        with self._lock:
            op = self._ops.get(op_id)
            if op is None:
                return error(404, "NotFound", f"The operation '{op_id}' was not found.")
            running = op.status == "InProgress"
            if monitor:
                return Response(202, None, retry) if running else Response(200, None)
            body: dict[str, object] = {"name": op_id, "status": op.status, "startTime": op.start}
            if op.end:
                body["endTime"] = op.end
            if op.error:
                body["error"] = op.error
        return Response(200, body, retry if running else {})


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")
