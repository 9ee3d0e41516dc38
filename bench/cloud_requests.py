"""Requests per operation for bench_clouds, by service and operation, counted twice:

* **client**: the requests this process's SDK clients sent (boto3's ``before-call`` event for
  AWS; azure-core's ``RequestsTransport.send`` for Azure), the client's lease thread apart;
* **served**: the requests the emulators answered, from every process (client, agents on
  the twin hosts, the twins' own polling): moto's WSGI app wrapped (AWS), the Azure twin's
  request list (ARM, Key Vault, the identity endpoint, Retail Prices) and Azurite's debug log
  (Table, Queue, Blob).

Names are ``service.Operation``; a lease renewal is ``lease:service.Operation``.
"""

from __future__ import annotations

import io
import re
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

LEASE = "lease:"
LEASE_THREAD = "meadowrun-lease"  # meadowrun_core.client.runtime's lease thread


def _who() -> str:
    return LEASE if threading.current_thread().name == LEASE_THREAD else ""


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v > before.get(k, 0)}


def operations(counts: dict[str, int]) -> int:
    """Requests that operations made (lease renewals left out)."""
    return sum(n for name, n in counts.items() if not name.startswith(LEASE))


def by_service(counts: dict[str, int]) -> dict[str, int]:
    services: Counter[str] = Counter()
    for name, n in counts.items():
        if not name.startswith(LEASE):
            services[name.split(".", 1)[0]] += n
    return dict(services)


def describe(counts: dict[str, int], top: int = 8) -> str:
    common = sorted(
        ((k, n) for k, n in counts.items() if not k.startswith(LEASE)), key=lambda i: -i[1]
    )
    leases = sum(n for k, n in counts.items() if k.startswith(LEASE))
    text = f"{operations(counts)}"
    if common:
        text += " (" + ", ".join(f"{k} {n}" for k, n in common[:top])
        text += ", ..." if len(common) > top else ""
        text += ")"
    return text + (f" + {leases} lease renewal(s)" if leases else "")


# --- AWS ------------------------------------------------------------------------------------------
def moto_request_name(environ: dict[str, Any]) -> str:
    """``service.Operation`` of a request moto's server receives: SQS and DynamoDB name the
    operation in ``X-Amz-Target``; the others by the service of the signature's scope and
    the ``Action`` of a query-protocol request where there is one."""
    target = str(environ.get("HTTP_X_AMZ_TARGET", ""))
    if target:
        service, _, operation = target.partition(".")
        return ("sqs." if service.startswith("AmazonSQS") else "dynamodb.") + operation
    auth = environ.get("HTTP_AUTHORIZATION", "")
    service = auth.split("/")[3] if auth.count("/") >= 4 else "other"
    action = dict(parse_qsl(str(environ.get("QUERY_STRING", "")))).get("Action")
    if action is None and "form-urlencoded" in str(environ.get("CONTENT_TYPE", "")):
        # the query protocol's POST (EC2, IAM, STS): the action is in the form body, read
        # here and put back for moto
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        environ["wsgi.input"] = io.BytesIO(body)
        action = dict(parse_qsl(body.decode("utf-8", "replace"))).get("Action")
    return f"{service}.{action}" if action else f"{service}.{environ.get('REQUEST_METHOD')}"


class AwsRequests:
    """boto3 requests of this process (client), and moto's server's requests (served)."""

    def __init__(self) -> None:
        self.client: Counter[str] = Counter()
        self.served: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stop: Callable[[], object] = lambda: None

    def start(self, moto_server: Any) -> AwsRequests:
        """Count from now on: every boto3 client of the default session, and every request
        ``moto_server`` (a started ``ThreadedMotoServer``) answers."""
        import boto3

        if boto3.DEFAULT_SESSION is None:
            boto3.setup_default_session()
        assert boto3.DEFAULT_SESSION is not None
        boto3.DEFAULT_SESSION.events.register("before-call", self._sent)
        wsgi = moto_server._server  # werkzeug's server: it calls self.app per request
        app = wsgi.app

        def counted(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
            with self._lock:
                self.served[moto_request_name(environ)] += 1
            return app(environ, start_response)

        wsgi.app = counted
        session = boto3.DEFAULT_SESSION

        def stop() -> None:
            session.events.unregister("before-call", self._sent)
            wsgi.app = app

        self._stop = stop
        return self

    def stop(self) -> None:
        self._stop()

    def _sent(self, event_name: str = "", **_: Any) -> None:
        operation = event_name.removeprefix("before-call.").replace("-", "")
        with self._lock:
            self.client[_who() + operation] += 1

    def snapshot(self) -> tuple[dict[str, int], dict[str, int]]:
        with self._lock:
            return dict(self.client), dict(self.served)


# --- Azure ----------------------------------------------------------------------------------------
def _arm_operation(method: str, segments: list[str]) -> str:
    """``PUT virtualMachines`` from ``/subscriptions/S/resourceGroups/G/providers/
    Microsoft.Compute/virtualMachines/NAME``; `` (list)`` when it names no resource."""
    lowered = [s.lower() for s in segments]
    if "providers" not in lowered:
        kinds = segments[::2]
        return f"{method} {kinds[-1] if kinds else '/'}"
    rest = segments[lowered.index("providers") + 2 :]
    kinds = rest[::2]
    return f"{method} {'/'.join(kinds)}" + ("" if len(rest) % 2 == 0 else " (list)")


def _storage_operation(service: str, method: str, segments: list[str], query: str) -> str:
    comp = dict(parse_qsl(query)).get("comp")
    rest = segments[1:]  # after the account
    if service == "table":
        if not rest:
            shape = "service"
        elif rest[0] == "$batch":
            shape = "batch"
        elif rest[0].startswith("Tables"):
            shape = "Tables"
        else:
            shape = "entity" if "PartitionKey=" in rest[0] else "query"
    elif service == "queue":
        shape = ("service", "queue", "messages", "message")[min(len(rest), 3)]
    else:
        shape = ("service", "container", "blob")[min(len(rest), 2)]
    return f"{method} {shape}" + (f" ?comp={comp}" if comp else "")


class AzureRequests:
    """azure-core requests of this process (client), and what the Azure twin and Azurite
    answered (served)."""

    def __init__(self, twin: Any, storage_urls: dict[str, str], azurite_log: Path) -> None:
        self._twin = twin
        self._twin_netloc = urlsplit(twin.base_url).netloc
        self._storage = {urlsplit(url).netloc: service for service, url in storage_urls.items()}
        self._azurite_log = azurite_log
        self._offset = 0
        self._contexts: dict[str, str] = {}  # Azurite request id -> service
        self._azurite: Counter[str] = Counter()
        self.client: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._restore: Callable[[], None] | None = None

    def name(self, method: str, url: str) -> str:
        parts = urlsplit(url)
        segments = [s for s in parts.path.split("/") if s]
        if parts.netloc in self._storage:
            service = self._storage[parts.netloc]
            return f"{service}.{_storage_operation(service, method, segments, parts.query)}"
        if parts.netloc == self._twin_netloc:
            return _twin_name(method, parts.path)
        return f"other.{method}"

    def start(self) -> AzureRequests:
        from azure.core.pipeline.transport import RequestsTransport

        original = RequestsTransport.send
        counter = self

        def send(transport: Any, request: Any, **kwargs: Any) -> Any:
            name = counter.name(request.method, request.url)
            with counter._lock:
                counter.client[_who() + name] += 1
            return original(transport, request, **kwargs)

        RequestsTransport.send = send

        def restore() -> None:
            RequestsTransport.send = original

        self._restore = restore
        self._read_azurite()  # what came before (set-up) is not counted: only deltas are
        return self

    def stop(self) -> None:
        if self._restore is not None:
            self._restore()
            self._restore = None

    _REQUEST = re.compile(
        r" (\S+) info: (Blob|Queue|Table)StorageContextMiddleware: RequestMethod="
    )
    _OPERATION = re.compile(r" (\S+) info: DispatchMiddleware: Operation=(\w+)")

    def _read_azurite(self) -> None:
        """Azurite's debug log since the last read: one ``...StorageContextMiddleware:
        RequestMethod=`` line per request, then (once routed) its ``Operation=`` (a Table
        batch's inner operations log more: only the first counts)."""
        try:
            with open(self._azurite_log, "rb") as log:
                log.seek(self._offset)
                chunk = log.read()
        except FileNotFoundError:
            return
        end = chunk.rfind(b"\n") + 1  # a line being written waits for the next read
        self._offset += end
        for raw in chunk[:end].decode("utf-8", "replace").splitlines():
            if match := self._REQUEST.search(raw):
                self._contexts[match.group(1)] = match.group(2).lower()
            elif (match := self._OPERATION.search(raw)) and match.group(1) in self._contexts:
                service = self._contexts.pop(match.group(1))
                self._azurite[f"{service}.{match.group(2)}"] += 1
        for context in list(self._contexts)[:-1000]:  # never routed (refused early)
            self._azurite[f"{self._contexts.pop(context)}.(not routed)"] += 1

    def served(self) -> dict[str, int]:
        """Every request answered so far: the twin's by ``_twin_name``, Azurite's by its own
        operation names."""
        self._read_azurite()
        twin = list(self._twin.server.requests)
        counts = Counter(_twin_name(method, path) for method, path in twin)
        counts.update(self._azurite)
        return dict(counts)

    def snapshot(self) -> tuple[dict[str, int], dict[str, int]]:
        with self._lock:
            client = dict(self.client)
        return client, self.served()


def _twin_name(method: str, path: str) -> str:
    segments = [s for s in path.split("/") if s]
    lowered = path.lower()
    if lowered.startswith("/subscriptions") or lowered.startswith("/providers"):
        return "arm." + _arm_operation(method, segments)
    if lowered.startswith("/secrets") or lowered.startswith("/deletedsecrets"):
        return "keyvault." + method + (" secret" if len(segments) > 1 else " list")
    if lowered.startswith("/msi/token"):
        return "identity.token"
    if lowered.startswith("/api/retail/prices"):
        return "prices.GET"
    return f"twin.{method}"
