"""The Azure twin: Azure Resource Manager (compute SKUs, VMs and their network resources,
Resource Graph), Key Vault secrets and the Retail Prices API, played over HTTPS on one
address for the real Azure SDK clients, because no emulator exists for them (Azurite covers
storage only).

Parts, each with the documentation its responses follow in its own docstring:
``azure_twin_arm.py`` (+ ``azure_twin_lro.py``, ``azure_twin_network.py``,
``azure_twin_nsg.py``, ``azure_twin_web.py``: Function Apps and a Functions host),
``azure_twin_vault.py``, ``azure_twin_graph.py`` (Resource Graph over the ``SpotResources``
rows of ``tests/fixtures/azure/spot-eviction-rates.json``), ``azure_twin_http.py`` (server,
test credential), and here the
App Service managed identity endpoint (``identity_endpoint``) and the Retail Prices API
(learn.microsoft.com/rest/api/cost-management/retail-prices/azure-retail-prices:
``GET /api/retail/prices?$filter=...``, ``{"BillingCurrency", "CustomerEntityId",
"CustomerEntityType", "Items", "NextPageLink", "Count"}``, unauthenticated), serving the rows
of ``tests/fixtures/azure/retail-prices.json`` filtered by ``armRegionName`` and
``serviceName``, ``prices_page_size`` to a page.

Every ARM and Key Vault request is checked against the role assignments ARM holds
(``azure_twin_rbac.py``): the test user (``TwinCredential``, the identity endpoint) owns the
subscription; with ``premade_vault`` (the default) the Key Vault ``VAULT_NAME`` exists in
``RESOURCE_GROUP`` with RBAC authorization and the user holds Key Vault Secrets Officer on it,
as a user who made it with the Azure CLI would.

Clients: ``compute_client()`` (azure-mgmt-compute through ``base_url``), ``secret_client()``
(azure-keyvault-secrets through ``vault_url``, ``verify_challenge_resource=False``), both
trusting the twin's own certificate through ``connection_verify``; ``prices_url`` and
``ssl_context()`` for the plain HTTPS GETs of the price client.

The ``on_vm_created`` / ``on_vm_deleted`` hooks of ``arm`` are where the host twin plugs in
(``azure_twin_hosts.py``: every VM a ``TwinHost`` on a ``TwinNetwork``, its firewall the VM's
network security group, the Instance Metadata Service at 169.254.169.254): bind the twin to
the twin network's gateway (``host=``).
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.azure_twin_arm import ArmTwin
from tests.azure_twin_graph import GraphTwin
from tests.azure_twin_http import (
    USER_PRINCIPAL,
    Request,
    Response,
    TwinCredential,
    TwinServer,
    error,
    make_token,
    page_of,
)
from tests.azure_twin_rbac import SECRETS_OFFICER, Rbac, assignment, owner_assignment
from tests.azure_twin_tls import make_certificate
from tests.azure_twin_vault import VaultTwin

FIXTURES = Path(__file__).parent / "fixtures" / "azure"
SUBSCRIPTION = "00000000-0000-0000-0000-0000000000aa"
RESOURCE_GROUP = "meadowrun-rg"
LOCATION = "eastus"
VAULT_NAME = "meadowrun-kv"  # the vault the twin's Key Vault data plane plays


def fixture_rows(name: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads((FIXTURES / name).read_text())
    return rows


class AzureTwin:
    def __init__(
        self,
        directory: Path,
        host: str = "127.0.0.1",
        prices_page_size: int = 10,
        vault_page_size: int = 25,
        premade_vault: bool = True,
        graph_page_size: int = 8,
    ) -> None:
        self.certificate = make_certificate(directory, (host,))
        self.credential = TwinCredential()
        self.arm = ArmTwin(fixture_rows("resource-skus.json"), SUBSCRIPTION)
        self.arm.add_resource_group(RESOURCE_GROUP, LOCATION)
        self.arm.resources.assign(owner_assignment(SUBSCRIPTION))
        self.vault = VaultTwin(vault_page_size)
        self.arm.key_vaults.on_purge.append(self.vault.forget)
        if premade_vault:  # as `az keyvault create --enable-rbac-authorization` leaves it
            vault_id = self.arm.key_vaults.add(RESOURCE_GROUP, VAULT_NAME, LOCATION)
            officer = assignment(vault_id, USER_PRINCIPAL, SECRETS_OFFICER, SUBSCRIPTION)
            self.arm.resources.assign(officer)
        self.rbac = Rbac(
            SUBSCRIPTION,
            self.arm.resources.assignments,
            lambda: self.arm.key_vaults.live(VAULT_NAME),
        )
        spot = fixture_rows("spot-eviction-rates.json")
        self.graph = GraphTwin({"SpotResources": spot}, graph_page_size)
        self.price_rows = fixture_rows("retail-prices.json")
        self.prices_page_size = prices_page_size
        self.identity_header = secrets.token_hex(16)
        handlers = [
            self.rbac.arm_guard,
            self.arm.handle,
            self.graph.handle,
            self.arm.web.identity,
            self.rbac.vault_guard,
            self.vault.handle,
            self._prices,
            self._identity,
        ]
        self.server = TwinServer(handlers, self.certificate.server_context(), host)

    @property
    def base_url(self) -> str:
        return self.server.base_url

    @property
    def prices_url(self) -> str:
        return self.base_url + "/api/retail/prices"

    def start(self) -> AzureTwin:
        self.server.start()
        return self

    def close(self) -> None:
        self.server.close()

    def ssl_context(self) -> Any:
        return self.certificate.client_context()

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments every Azure SDK client pointed at the twin takes."""
        return {
            "connection_verify": str(self.certificate.cert_path),
            "retry_total": 0,
            "polling_interval": 0.02,
        }

    def compute_client(self) -> Any:
        from azure.mgmt.compute import ComputeManagementClient

        return ComputeManagementClient(
            self.credential,
            SUBSCRIPTION,
            base_url=self.base_url,
            credential_scopes=["https://management.azure.com/.default"],
            **self.client_options(),
        )

    def secret_client(self) -> Any:
        from azure.keyvault.secrets import SecretClient

        return SecretClient(
            self.base_url,
            self.credential,
            verify_challenge_resource=False,
            **self.client_options(),
        )

    @property
    def identity_endpoint(self) -> str:
        """``IDENTITY_ENDPOINT`` of the App Service managed identity protocol (with
        ``IDENTITY_HEADER`` = ``identity_header``), which ``DefaultAzureCredential``'s
        ``ManagedIdentityCredential`` follows: a client gets twin tokens through the real SDK."""
        return self.base_url + "/msi/token"

    def _identity(self, request: Request) -> Response | None:
        """App Service's token endpoint (learn.microsoft.com/azure/app-service/overview-
        managed-identity, "REST endpoint reference"): ``GET ?resource=..&api-version=
        2019-08-01`` with ``X-IDENTITY-HEADER``; ``{"access_token", "expires_on", "resource",
        "token_type"}``."""
        if request.path != "/msi/token":
            return None
        if request.headers.get("x-identity-header") != self.identity_header:
            return error(401, "Unauthorized", "X-IDENTITY-HEADER is missing or wrong")
        resource = request.query.get("resource", "")
        if not resource or request.query.get("api-version") != "2019-08-01":
            return error(400, "BadRequest", "resource and api-version=2019-08-01 are required")
        audience = resource.removesuffix("/.default").rstrip("/")
        return Response(
            200,
            {
                "access_token": make_token(USER_PRINCIPAL, f"{audience}/.default"),
                "expires_on": str(int(time.time()) + 3600),
                "resource": resource,
                "token_type": "Bearer",
            },
        )

    def requests_to(self, path_part: str) -> int:
        """How many requests so far had ``path_part`` in their path."""
        return sum(1 for _, path in self.server.requests if path_part.lower() in path.lower())

    # --- the Retail Prices API ---------------------------------------------------------------
    def _prices(self, request: Request) -> Response | None:
        if request.path != "/api/retail/prices":
            return None
        if request.method != "GET":
            return error(405, "MethodNotAllowed", "only GET")
        terms = dict(re.findall(r"(\w+)\s+eq\s+'([^']*)'", request.query.get("$filter", "")))
        if "priceType" in terms:  # the filter's name for the rows' "type"
            terms["type"] = terms.pop("priceType")
        rows = [r for r in self.price_rows if all(str(r.get(k)) == v for k, v in terms.items())]
        page, next_link = page_of(rows, request, "$skip", self.prices_page_size, self.prices_url)
        body = {
            "BillingCurrency": "USD",
            "CustomerEntityId": "Default",
            "CustomerEntityType": "Retail",
            "Items": page,
            "NextPageLink": next_link,
            "Count": len(page),
        }
        return Response(200, body)


@contextlib.contextmanager
def running_twin(directory: Path, **options: Any) -> Iterator[AzureTwin]:
    """A started twin, closed afterwards (test modules wrap it in their own fixture)."""
    twin = AzureTwin(directory, **options).start()
    try:
        yield twin
    finally:
        twin.close()
