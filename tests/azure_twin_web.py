"""The Microsoft.Web part of the Azure twin's ARM: App Service plans and Function Apps, their
app settings, and a Functions host that runs a deployed app's timer function. In memory.

Shapes follow the App Service REST reference (``Microsoft.Web``, api-version 2024-04-01) and
its examples in ``Azure/azure-rest-api-specs`` (``specification/web/resource-manager/
Microsoft.Web/AppService/stable/2024-04-01/examples``):

* App Service Plans - Create Or Update (``CreateOrUpdateAppServicePlan.json``): 202 with
  ``Location`` and ``Azure-AsyncOperation`` (``.../serverfarms/{name}/operationresults/{id}``),
  the plan in the body; Get (200, 404 ``ResourceNotFound``); Delete (200, 204 when there is
  none; 409 ``Conflict`` while an app is on it, as Azure refuses to delete a plan with apps);
* Web Apps - Create Or Update (``CreateOrUpdateWebApp.json``): 202 with ``Azure-AsyncOperation``
  (``/subscriptions/{s}/providers/Microsoft.Web/sites/{name}/operationResults/{id}``), the
  site in the body; ``siteConfig.appSettings`` become the app's settings and, as on Azure, a
  GET never returns them; a user-assigned identity is echoed with its ``principalId`` and
  ``clientId`` (400 ``BadRequest`` for one that does not exist); the plan must exist (404
  ``NotFound``); Get; Delete (200, 204 when there is none);
* Web Apps - Update Application Settings (``PUT .../config/appsettings``, body
  ``{"properties": {name: value}}``, replacing them all) and List Application Settings
  (``POST .../config/appsettings/list``): 200 with ``{"id", "name": "appsettings", "type":
  "Microsoft.Web/sites/config", "properties"}``;
* Web Apps - Sync Function Triggers (``POST .../syncfunctiontriggers``): 204;
* the operations as "Track asynchronous Azure operations" documents (``azure_twin_lro.py``).

The Functions host (``run_timer``) plays the platform as "Run your functions from a package
file in Azure" and the Python developer reference describe it: it fetches the zip
``WEBSITE_RUN_FROM_PACKAGE`` points to (a SAS URL on Azurite), unpacks it in a scratch
folder, puts the app's root and ``.python_packages/lib/site-packages`` on ``sys.path`` (with
``python -S``: nothing else of this environment's site-packages) and calls the timer
function it registers, with the app settings as environment, plus the App Service managed
identity endpoint (``IDENTITY_ENDPOINT``/``IDENTITY_HEADER``; "REST endpoint reference":
``client_id`` selects a user-assigned identity, which must be one the app carries).
``azure.functions`` is the Python worker's own library: a stub records the registrations.
"""

from __future__ import annotations

import io
import os
import re
import secrets
import subprocess
import sys
import threading
import time
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.azure_twin_http import Request, Response, error, make_token, no_group, not_found
from tests.azure_twin_lro import Operations

_RG = r"/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/Microsoft\.Web"
_WEB = re.compile(_RG + r"/(?P<kind>serverfarms|sites)/(?P<name>[^/]+)(?P<rest>/.*)?", re.I)
_OP = re.compile(
    r"/subscriptions/[^/]+(?:/resourceGroups/[^/]+)?/providers/Microsoft\.Web/"
    r"(?:serverfarms|sites)/[^/]+/operationresults/(?P<op>[^/]+)",
    re.I,
)
_TOKEN = re.compile(r"/msi/sites/(?P<name>[^/]+)/token")
PACKAGE_SETTING = "WEBSITE_RUN_FROM_PACKAGE"
SITE_PACKAGES = ".python_packages/lib/site-packages"

FUNCTIONS_STUB = '''"""The Python worker's azure.functions, as much as a timer app registers."""
TimerRequest = object


class FunctionApp:
    timers = []

    def timer_trigger(self, **kwargs):
        def register(function):
            FunctionApp.timers.append((kwargs, function))
            return function

        return register
'''
_RUN_TIMER = """import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
logging.getLogger("azure").setLevel(logging.WARNING)
import meadowrun_core, function_app, azure.functions as f
assert meadowrun_core.__file__.startswith(sys.argv[1]), meadowrun_core.__file__
(kwargs, function), = f.FunctionApp.timers
print("schedule:", kwargs["schedule"])
function(None)
"""


def run_timer_function(
    app: Path, environment: dict[str, str], scratch: Path, isolated: bool
) -> subprocess.CompletedProcess[str]:
    """Import the unpacked app ``app`` as the Functions host does and call its timer function
    once (``isolated``: ``python -S``, so only the app's own packages are importable)."""
    worker = scratch / "worker"
    (worker / "azure" / "functions").mkdir(parents=True, exist_ok=True)
    (worker / "azure" / "functions" / "__init__.py").write_text(FUNCTIONS_STUB)
    path = [str(app), str(app / SITE_PACKAGES), str(worker)]
    command = [sys.executable, *(["-S"] if isolated else []), "-c", _RUN_TIMER, str(app)]
    return subprocess.run(
        command,
        cwd=app,
        env={**environment, "PYTHONPATH": os.pathsep.join(path)},
        capture_output=True,
        text=True,
        timeout=120,
    )


@dataclass
class FunctionApp:
    resource: dict[str, Any]
    settings: dict[str, str]
    identity_header: str


class WebTwin:
    def __init__(self, subscription: str, resource_groups: dict[str, str], arm: Any) -> None:
        self.subscription = subscription
        self.resource_groups = resource_groups  # lower-cased name -> location (shared)
        self._arm = arm  # the ARM twin: its identities
        self.operations = Operations(subscription, 0)
        self._lock = threading.Lock()
        self.plans: dict[str, dict[str, Any]] = {}  # lower-cased id -> plan
        self.apps: dict[str, FunctionApp] = {}  # lower-cased id -> app
        self.settings_writes = 0  # app creations and settings updates: deployments
        self.syncs = 0

    # --- the REST API ----------------------------------------------------------------------
    def handle(self, request: Request) -> Response | None:
        if (m := _OP.fullmatch(request.path)) and request.method == "GET":
            return self.operations.answer(m["op"], False)
        m = _WEB.fullmatch(request.path)
        if m is None:
            return None
        if m["rg"].lower() not in self.resource_groups:
            return no_group(m["rg"])
        rid = request.path[: len(request.path) - len(m["rest"] or "")]
        rest, method = (m["rest"] or "").lower(), request.method
        if m["kind"].lower() == "serverfarms" and not rest:
            return self._plan(request, rid, m["name"], m["rg"])
        if m["kind"].lower() == "sites" and not rest:
            return self._site(request, rid, m["name"], m["rg"])
        with self._lock:
            app = self.apps.get(rid.lower())
        if app is None:
            return not_found("Microsoft.Web/sites", m["name"], m["rg"])
        if rest == "/config/appsettings/list" and method == "POST":
            return Response(200, self._settings_resource(app))
        if rest == "/config/appsettings" and method == "PUT":
            values = (request.json() or {}).get("properties") or {}
            with self._lock:
                app.settings = {str(k): str(v) for k, v in values.items()}
                self.settings_writes += 1
            return Response(200, self._settings_resource(app))
        if rest == "/syncfunctiontriggers" and method == "POST":
            with self._lock:
                self.syncs += 1
            return Response(204)
        return error(400, "InvalidResourceType", f"The twin does not serve {method} {rest}.")

    def _accepted(self, request: Request, rid: str, body: Any, location: bool) -> Response:
        op = self.operations.start(lambda: None)
        kind_and_name = rid.split("/providers/Microsoft.Web/")[1]
        url = (
            f"{request.base_url}/subscriptions/{self.subscription}/providers/Microsoft.Web/"
            f"{kind_and_name}/operationresults/{op}?api-version={request.query['api-version']}"
        )
        headers = {"Azure-AsyncOperation": url, "Retry-After": "0"}
        if location:
            headers["Location"] = url
        return Response(202, body, headers)

    def _plan(self, request: Request, rid: str, name: str, rg: str) -> Response:
        key = rid.lower()
        if request.method == "GET":
            with self._lock:
                plan = self.plans.get(key)
            return Response(200, plan) if plan else not_found("Microsoft.Web/serverfarms", name, rg)
        if request.method == "DELETE":
            with self._lock:
                users = [a for a in self.apps.values() if _farm(a).lower() == key]
                if users:
                    return error(
                        409,
                        "Conflict",
                        f"Server farm '{name}' cannot be deleted because it has web app(s) "
                        f"{users[0].resource['name']} assigned to it.",
                    )
                gone = self.plans.pop(key, None)
            return Response(200 if gone else 204)
        if request.method != "PUT":
            return error(405, "MethodNotAllowed", f"{request.method} on a plan")
        body = request.json() or {}
        sku = body.get("sku") or {}
        if not body.get("location") or not sku.get("name"):
            return error(400, "BadRequest", "location and sku.name are required.")
        plan = {
            "id": rid,
            "name": name,
            "type": "Microsoft.Web/serverfarms",
            "kind": body.get("kind", "app"),
            "location": body["location"],
            "tags": dict(body.get("tags") or {}),
            "sku": {**sku, "size": sku["name"], "family": sku["name"][0], "capacity": 0},
            "properties": {
                "status": "Ready",
                "reserved": bool((body.get("properties") or {}).get("reserved")),
                "numberOfSites": 0,
                "provisioningState": "Succeeded",
            },
        }
        with self._lock:
            self.plans[rid.lower()] = plan
        return self._accepted(request, rid, plan, location=True)

    def _site(self, request: Request, rid: str, name: str, rg: str) -> Response:
        key = rid.lower()
        if request.method == "GET":
            with self._lock:
                app = self.apps.get(key)
            if app is None:
                return not_found("Microsoft.Web/sites", name, rg)
            return Response(200, app.resource)
        if request.method == "DELETE":
            with self._lock:
                gone = self.apps.pop(key, None)
            return Response(200 if gone else 204)
        if request.method != "PUT":
            return error(405, "MethodNotAllowed", f"{request.method} on a site")
        body = request.json() or {}
        props = dict(body.get("properties") or {})
        farm = str(props.get("serverFarmId") or "")
        with self._lock:
            plan = self.plans.get(farm.lower())
        if not body.get("location"):
            return error(400, "LocationRequired", "The location property is required.")
        if plan is None:
            return error(404, "NotFound", f"Cannot find ServerFarm with name {farm}.")
        identity = body.get("identity")
        if identity:
            identity = dict(identity)
            echoed = {}
            for identity_id in identity.get("userAssignedIdentities") or {}:
                found = self._arm.resources.resources.get(identity_id.lower())
                if found is None:
                    return error(400, "BadRequest", f"Identity {identity_id} was not found.")
                ids = found["properties"]
                echoed[identity_id] = {k: ids[k] for k in ("principalId", "clientId")}
            identity["userAssignedIdentities"] = echoed
        config = dict(props.pop("siteConfig", None) or {})
        settings = {str(s["name"]): str(s["value"]) for s in config.pop("appSettings", None) or []}
        host = f"{name}.azurewebsites.net"
        resource = {
            "id": rid,
            "name": name,
            "type": "Microsoft.Web/sites",
            "kind": body.get("kind", "app"),
            "location": body["location"],
            "tags": dict(body.get("tags") or {}),
            "properties": {
                **props,
                "state": "Running",
                "hostNames": [host],
                "defaultHostName": host,
                "resourceGroup": rg,
                "siteConfig": {**config, "appSettings": None},
            },
        }
        if identity:
            resource["identity"] = identity
        with self._lock:
            existing = self.apps.get(key)
            header = existing.identity_header if existing else secrets.token_hex(16)
            self.apps[key] = FunctionApp(resource, settings, header)
            self.settings_writes += 1
        return self._accepted(request, rid, resource, location=False)

    def _settings_resource(self, app: FunctionApp) -> dict[str, Any]:
        return {
            "id": f"{app.resource['id']}/config/appsettings",
            "name": "appsettings",
            "type": "Microsoft.Web/sites/config",
            "location": app.resource["location"],
            "properties": dict(app.settings),
        }

    # --- the Functions host ----------------------------------------------------------------
    def app(self, rg: str, name: str) -> FunctionApp:
        rid = f"/subscriptions/{self.subscription}/resourceGroups/{rg}/providers/Microsoft.Web"
        with self._lock:
            return self.apps[f"{rid}/sites/{name}".lower()]

    def identity(self, request: Request) -> Response | None:
        """The app's managed identity endpoint: a token for one of the app's user-assigned
        identities, chosen by ``client_id``."""
        m = _TOKEN.fullmatch(request.path)
        if m is None:
            return None
        with self._lock:
            apps = [a for a in self.apps.values() if a.resource["name"] == m["name"]]
        if not apps or request.headers.get("x-identity-header") != apps[0].identity_header:
            return error(401, "Unauthorized", "X-IDENTITY-HEADER is missing or wrong")
        identities = (apps[0].resource.get("identity") or {}).get("userAssignedIdentities") or {}
        principals = {str(i["clientId"]): str(i.get("principalId")) for i in identities.values()}
        principal = principals.get(request.query.get("client_id", ""))
        if principal is None:
            return error(400, "BadRequest", "No managed identity of the app has that client_id")
        resource = request.query.get("resource", "")
        audience = resource.removesuffix("/.default").rstrip("/")
        return Response(
            200,
            {
                # the identity's own token: ARM and Key Vault allow what its roles allow
                "access_token": make_token(principal, f"{audience}/.default"),
                "expires_on": str(int(time.time()) + 3600),
                "resource": resource,
                "token_type": "Bearer",
                "client_id": request.query["client_id"],
            },
        )

    def run_timer(
        self, rg: str, name: str, scratch: Path, base_url: str, ca_file: str
    ) -> subprocess.CompletedProcess[str]:
        """Run the app's timer function once, from the package its settings point to."""
        app = self.app(rg, name)
        with urllib.request.urlopen(app.settings[PACKAGE_SETTING], timeout=30) as answer:
            package = answer.read()
        root = scratch / "wwwroot"
        zipfile.ZipFile(io.BytesIO(package)).extractall(root)
        environment = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(scratch),
            **app.settings,
            "IDENTITY_ENDPOINT": f"{base_url}/msi/sites/{name}/token",
            "IDENTITY_HEADER": app.identity_header,
            "REQUESTS_CA_BUNDLE": ca_file,  # the platform's trust store: the twin's CA
            "SSL_CERT_FILE": ca_file,
        }
        return run_timer_function(root, environment, scratch, isolated=True)


def _farm(app: FunctionApp) -> str:
    return str(app.resource["properties"].get("serverFarmId") or "")
