"""The Azure Instance Metadata Service (IMDS) of the Azure twin's hosts: plain HTTP on the
twin network's gateway, where each host's 169.254.169.254:80 is redirected (tests/
twin_hosts.py), telling VMs apart by the caller's address.

It follows learn.microsoft.com:

* "Azure Instance Metadata Service" (virtual-machines/instance-metadata-service): every
  request needs ``Metadata: true`` and no ``X-Forwarded-For`` (400 otherwise), and an
  ``api-version`` (400 ``"api-version was not specified"``); ``GET /metadata/instance``
  answers ``{"compute", "network"}`` (compute: ``name``, ``vmId``, ``location``,
  ``resourceGroupName``, ``subscriptionId``, ``vmSize``, ``priority`` "Spot" or "",
  ``evictionPolicy``, ``tags`` "k:v;..." and ``tagsList``, ``osProfile``, ``publicKeys``...;
  ``network.interface[0].ipv4.ipAddress[0]`` with ``privateIpAddress`` and
  ``publicIpAddress`` ("" without a public IP), ``ipv4.subnet``, ``macAddress``); a path below
  it (``/metadata/instance/compute/vmId``) answers that part, a leaf as text with
  ``format=text`` (a leaf without ``format`` is the documented 400);
* "Scheduled Events for Linux VMs" (virtual-machines/linux/scheduled-events):
  ``GET /metadata/scheduledevents`` answers ``{"DocumentIncarnation", "Events": [{"EventId",
  "EventStatus", "EventType", "ResourceType": "VirtualMachine", "Resources": [vm name],
  "NotBefore" (RFC 1123, "" once started), "Description", "EventSource": "Platform",
  "DurationInSeconds": -1}]}``, the incarnation counting every change; ``POST`` with
  ``{"StartRequests": [{"EventId"}]}`` acknowledges: the event starts at once (a Preempt
  evicts the VM then);
* "How to use managed identities on an Azure VM to acquire an access token" (entra/identity/
  managed-identities-azure-resources/how-to-use-vm-token): ``GET /metadata/identity/oauth2/
  token?api-version=2018-02-01&resource=<uri>`` answers ``{"access_token", "client_id",
  "expires_in", "expires_on", "ext_expires_in", "not_before", "resource", "token_type":
  "Bearer"}`` (numbers as strings) to a VM with a system- or user-assigned identity: the one
  ``client_id`` / ``object_id`` / ``msi_res_id`` names, else the system-assigned one, else
  the only user-assigned one; without one, 400
  ``{"error": "invalid_request", "error_description": "Identity not found"}`` (what
  azure-identity reads as "no identity assigned"). The token is the twin's own
  (``azure_twin_http.make_token``) for that identity's principal, so the twin's ARM and Key
  Vault take it for their audience and allow what that principal's roles allow.

``preempt(vm, in_seconds)`` posts a Preempt event whose ``NotBefore`` is ``in_seconds`` away;
when it passes (or the event is acknowledged) ``evict`` reclaims the VM.
"""

from __future__ import annotations

import contextlib
import datetime
import email.utils
import ipaddress
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tests.azure_twin_arm import TwinVm
from tests.azure_twin_http import make_token
from tests.azure_twin_rbac import token_identity

_log = logging.getLogger(__name__)

Answer = tuple[int, Any]  # status, body (a str is sent as text, anything else as JSON)
_AFTER = threading.local()  # what a request's thread does once its answer is sent
_TOKEN_SECONDS = 3599


@dataclass
class _Guest:
    vm: TwinVm
    ip: str
    client_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    incarnation: int = 1
    events: list[dict[str, Any]] = field(default_factory=list)


class AzureImds:
    def __init__(
        self, host: str, subnet: ipaddress.IPv4Network, evict: Callable[[TwinVm], None]
    ) -> None:
        self.subnet = subnet
        self.evict = evict  # reclaims a VM whose Preempt event started
        self._lock = threading.Lock()
        self._guests: dict[str, _Guest] = {}  # host address -> guest
        self._server = ThreadingHTTPServer((host, 0), _handler(self))
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._timers: list[threading.Timer] = []

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def add(self, ip: str, vm: TwinVm) -> None:
        with self._lock:
            self._guests[ip] = _Guest(vm, ip)

    def remove(self, ip: str) -> None:
        with self._lock:
            self._guests.pop(ip, None)

    def preempt(self, vm_name: str, in_seconds: float) -> str:
        """Schedule a Preempt event for the VM; its id. It starts ``in_seconds`` from now."""
        with self._lock:
            guest = next(g for g in self._guests.values() if g.vm.name.lower() == vm_name.lower())
            when = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=in_seconds)
            event = {
                "EventId": str(uuid.uuid4()),
                "EventStatus": "Scheduled",
                "EventType": "Preempt",
                "ResourceType": "VirtualMachine",
                "Resources": [guest.vm.name],
                "NotBefore": email.utils.format_datetime(when.replace(microsecond=0), True),
                "Description": "The Spot virtual machine is being evicted.",
                "EventSource": "Platform",
                "DurationInSeconds": -1,
            }
            guest.events.append(event)
            guest.incarnation += 1
        timer = threading.Timer(max(in_seconds, 0), self._start, (guest, event["EventId"]))
        timer.daemon = True
        self._timers.append(timer)
        timer.start()
        return str(event["EventId"])

    def _start(self, guest: _Guest, event_id: str) -> None:
        """The event begins: Started, and a Preempt reclaims the VM."""
        with self._lock:
            event = next((e for e in guest.events if e["EventId"] == event_id), None)
            if event is None or event["EventStatus"] != "Scheduled":
                return
            event.update(EventStatus="Started", NotBefore="")
            guest.incarnation += 1
        if event["EventType"] == "Preempt":
            _log.info("evicting %s (event %s)", guest.vm.name, event_id)
            with contextlib.suppress(KeyError):  # deleted meanwhile
                self.evict(guest.vm)

    # --- the service -----------------------------------------------------------------------
    def answer(
        self, caller: str, method: str, url: str, headers: dict[str, str], body: bytes
    ) -> Answer:
        parts = urlsplit(url)
        path, query = parts.path.rstrip("/"), dict(parse_qsl(parts.query))
        identity = path == "/metadata/identity/oauth2/token"
        if headers.get("metadata", "").lower() != "true" or "x-forwarded-for" in headers:
            if identity:
                return 400, _oauth_error("Required metadata header not specified")
            return 400, {"error": "Bad request. Required metadata header not specified"}
        if "api-version" not in query:
            if identity:
                return 400, _oauth_error("Required query variable 'api-version' is missing")
            return 400, {
                "error": "Bad request. api-version was not specified in the request. For more "
                "information refer to aka.ms/azureimds",
                "newest-versions": ["2021-02-01", "2020-12-01", "2020-10-01"],
            }
        with self._lock:
            guest = self._guests.get(caller)
        if guest is None:
            return 404, {"error": "Not found"}
        if identity and method == "GET":
            return self._token(guest, query)
        if path == "/metadata/scheduledevents":
            if method == "POST":
                return self._acknowledge(guest, body)
            with self._lock:
                events = [dict(e) for e in guest.events]
                return 200, {"DocumentIncarnation": guest.incarnation, "Events": events}
        if path.startswith("/metadata/instance") and method == "GET":
            return self._instance(guest, path, query.get("format"))
        return 404, {"error": "Not found"}

    def _instance(self, guest: _Guest, path: str, form: str | None) -> Answer:
        node: Any = {"compute": self._compute(guest.vm), "network": self._network(guest)}
        for part in [p for p in path.removeprefix("/metadata/instance").split("/") if p]:
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            elif isinstance(node, dict) and part in node:
                node = node[part]
            else:
                return 404, {"error": "Not found"}
        if isinstance(node, dict | list):
            return (200, node) if form in (None, "json") else (400, {"error": "Bad request"})
        if form == "text":
            return 200, str(node)
        return 400, {"error": "Bad request. Leaf nodes need format=text"}

    def _compute(self, vm: TwinVm) -> dict[str, Any]:
        props = vm.resource["properties"]
        os_profile = props.get("osProfile") or {}
        linux = os_profile.get("linuxConfiguration") or {}
        spot = vm.priority == "Spot"
        return {
            "azEnvironment": "AzurePublicCloud",
            "evictionPolicy": str(props.get("evictionPolicy", "")) if spot else "",
            "location": vm.location,
            "name": vm.name,
            "osProfile": {
                "adminUsername": vm.admin_username,
                "computerName": str(os_profile.get("computerName", vm.name)),
                "disablePasswordAuthentication": str(
                    bool(linux.get("disablePasswordAuthentication"))
                ).lower(),
            },
            "osType": "Linux",
            "priority": "Spot" if spot else "",
            "provider": "Microsoft.Compute",
            "publicKeys": [
                {"keyData": str(k["keyData"]), "path": str(k.get("path", ""))}
                for k in (linux.get("ssh") or {}).get("publicKeys", [])
            ],
            "resourceGroupName": vm.resource_group,
            "resourceId": vm.resource["id"],
            "subscriptionId": vm.resource["id"].split("/")[2],
            "tags": ";".join(f"{k}:{v}" for k, v in vm.tags.items()),
            "tagsList": [{"name": k, "value": v} for k, v in vm.tags.items()],
            "userData": str(props.get("userData", "")),
            "vmId": vm.vm_id,
            "vmScaleSetName": "",
            "vmSize": vm.size,
            "zone": str((vm.resource.get("zones") or [""])[0]),
        }

    def _network(self, guest: _Guest) -> dict[str, Any]:
        profile = guest.vm.resource["properties"]["networkProfile"]
        first = profile["networkInterfaceConfigurations"][0].get("properties", {})
        public = any(
            (ip.get("properties") or {}).get("publicIPAddressConfiguration")
            for ip in first.get("ipConfigurations", [])
        )
        mac = "000D3A" + ipaddress.IPv4Address(guest.ip).packed[1:].hex().upper()
        return {
            "interface": [
                {
                    "ipv4": {
                        "ipAddress": [
                            {
                                "privateIpAddress": guest.ip,
                                "publicIpAddress": guest.ip if public else "",
                            }
                        ],
                        "subnet": [
                            {
                                "address": str(self.subnet.network_address),
                                "prefix": str(self.subnet.prefixlen),
                            }
                        ],
                    },
                    "ipv6": {"ipAddress": []},
                    "macAddress": mac,
                }
            ]
        }

    def _acknowledge(self, guest: _Guest, body: bytes) -> Answer:
        try:
            requests = json.loads(body or b"null")["StartRequests"]
            ids = [str(r["EventId"]) for r in requests]
        except (ValueError, KeyError, TypeError):
            return 400, {"error": "Bad request. The body needs StartRequests"}

        # the events start once the caller has its answer (an eviction cuts its host off)
        def start() -> None:
            for event_id in ids:
                self._start(guest, event_id)

        _AFTER.work = start
        return 200, ""

    def _token(self, guest: _Guest, query: dict[str, str]) -> Answer:
        resource = query.get("resource")
        if not resource:
            return 400, _oauth_error("Required query variable 'resource' is missing")
        identity = guest.vm.resource.get("identity") or {}
        asked = query.get("client_id") or query.get("object_id") or query.get("msi_res_id")
        found = token_identity(identity, guest.client_id, asked)
        if found is None:
            return 400, _oauth_error("Identity not found")
        principal, client_id = found
        issued = int(time.time())
        return 200, {
            "access_token": make_token(
                principal, f"{resource.rstrip('/')}/.default", issued + _TOKEN_SECONDS
            ),
            "client_id": client_id,
            "expires_in": str(_TOKEN_SECONDS),
            "expires_on": str(issued + _TOKEN_SECONDS),
            "ext_expires_in": str(_TOKEN_SECONDS),
            "not_before": str(issued),
            "resource": resource,
            "token_type": "Bearer",
        }


def _oauth_error(description: str) -> dict[str, str]:
    return {"error": "invalid_request", "error_description": description}


def _handler(imds: AzureImds) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            try:
                status, answer = imds.answer(
                    self.client_address[0], self.command, self.path, headers, body
                )
            except Exception as exc:
                _log.exception("the twin's IMDS failed on %s %s", self.command, self.path)
                status, answer = 500, {"error": repr(exc)}
            text = isinstance(answer, str)
            payload = (answer if text else json.dumps(answer)).encode()
            self.send_response(status)
            kind = "text/plain" if text else "application/json"
            self.send_header("Content-Type", f"{kind}; charset=utf-8")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            self.wfile.flush()
            work, _AFTER.work = getattr(_AFTER, "work", None), None
            if work is not None:
                work()

        do_GET = do_POST = do_PUT = do_DELETE = _answer

        def log_message(self, format: str, *args: Any) -> None:
            _log.debug("azure imds: " + format, *args)

    return Handler
