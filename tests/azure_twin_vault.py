"""The Key Vault part of the Azure twin: secrets, in memory, over the data-plane REST API.

Shapes follow the Key Vault secrets REST reference (api-version 7.x, spec
``specification/keyvault/data-plane/Microsoft.KeyVault/stable/7.4/secrets.json`` and its
examples): Set Secret (``PUT /secrets/{name}``, ``SecretBundle``), Get Secret
(``GET /secrets/{name}/{version}``, version may be empty), Get Secrets (``GET /secrets``,
``SecretListResult`` with ``value`` and ``nextLink``, ``maxresults`` per page), Delete Secret
(``DELETE /secrets/{name}``, ``DeletedSecretBundle`` with ``recoveryId``), Get Deleted Secret,
Purge Deleted Secret (204), Recover Deleted Secret (``POST /deletedsecrets/{name}/recover``).
As in a vault with soft-delete on (the default), a deleted name cannot be set again until it
is purged or recovered: 409 ``Conflict``, inner code ``ObjectIsDeletedButRecoverable``.
Names are 1-127 letters, digits and dashes, compared case-insensitively; values at most
25 KiB.

Authentication follows "Key Vault authentication" (learn.microsoft.com/azure/key-vault/
general/authentication-requests-and-responses): a request without a bearer token gets 401
with ``WWW-Authenticate: Bearer authorization="<authority>/<tenant>",
resource="https://vault.azure.net"``; the SDK then asks its credential for that resource's
token and retries. A token for another audience gets 401 too. The challenge names a
``vault.azure.net`` resource while the twin's address is 127.0.0.1, so clients pass
``verify_challenge_resource=False``.

The data plane plays one vault: the ARM vault named ``VAULT_NAME`` (``azure_twin_keyvault.py``),
whose role assignments ``azure_twin_rbac.py`` checks before a request gets here (a vault
with RBAC authorization, "Provide access to Key Vault ... with Azure role-based access
control"); while it does not exist, or is soft-deleted, requests get 404 (on Azure its host
name would not resolve). Purging the vault purges its secrets; recovering it keeps them.
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from tests.azure_twin_http import TENANT, VAULT_SCOPE, Request, Response, error

TENANT_ID = TENANT
_NAME = re.compile(r"[0-9A-Za-z-]{1,127}")
_MAX_VALUE_BYTES = 25 * 1024
_PATH = re.compile(r"/(secrets|deletedsecrets)(?:/([^/]+))?(?:/([^/]*))?")


@dataclass
class _Secret:
    name: str
    versions: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (version, bundle)
    deleted_at: int | None = None


class VaultTwin:
    def __init__(self, page_size: int = 25) -> None:
        self.page_size = page_size  # the service's own cap on maxresults
        self._lock = threading.Lock()
        self._secrets: dict[str, _Secret] = {}  # lower-cased name -> secret

    def forget(self, vault_name: str) -> None:
        """The vault was purged: its secrets with it."""
        with self._lock:
            self._secrets.clear()

    # --- what tests look at --------------------------------------------------------------
    def stored_names(self, include_deleted: bool = False) -> list[str]:
        with self._lock:
            return sorted(
                s.name for s in self._secrets.values() if include_deleted or s.deleted_at is None
            )

    def values(self, name: str) -> list[str]:
        """Every version's value, oldest first."""
        with self._lock:
            secret = self._secrets.get(name.lower())
            return [bundle["value"] for _, bundle in secret.versions] if secret else []

    # --- the REST API ----------------------------------------------------------------------
    def handle(self, request: Request) -> Response | None:
        match = _PATH.fullmatch(request.path)
        if match is None:
            return None
        if "api-version" not in request.query:
            return error(400, "BadParameter", "The api-version query parameter is required")
        scope = request.token_scope()
        if scope != VAULT_SCOPE:
            challenge = (
                f'Bearer authorization="https://login.microsoftonline.com/{TENANT_ID}", '
                'resource="https://vault.azure.net"'
            )
            message = "AKV10000: Request is missing a Bearer or PoP token."
            if scope is not None:
                message = f"AKV10022: Invalid audience. Expected {VAULT_SCOPE}, found: {scope}."
            return error(401, "Unauthorized", message, **{"WWW-Authenticate": challenge})
        collection, name, rest = match.groups()
        with self._lock:
            return self._route(request, collection, name, rest)

    def _route(
        self, request: Request, collection: str, name: str | None, rest: str | None
    ) -> Response:
        method = request.method
        if name is None:
            if collection == "secrets" and method == "GET":
                return self._list(request)
            return error(405, "MethodNotAllowed", f"{method} /{collection}")
        if not _NAME.fullmatch(name):
            return error(
                400,
                "BadParameter",
                "The request URI contains an invalid name: " + name,
            )
        secret = self._secrets.get(name.lower())
        if collection == "secrets":
            if method == "PUT" and not rest:
                return self._set(request, name, secret)
            if method == "GET":
                return self._get(request, name, secret, rest or "")
            if method == "DELETE" and not rest:
                return self._delete(request, name, secret)
        else:
            deleted = secret if secret is not None and secret.deleted_at is not None else None
            if deleted is None:
                return _not_found(name, deleted=True)
            if method == "GET" and not rest:
                return Response(200, self._deleted_bundle(request, deleted))
            if method == "DELETE" and not rest:
                del self._secrets[name.lower()]
                return Response(204)
            if method == "POST" and rest == "recover":
                deleted.deleted_at = None
                bundle = dict(deleted.versions[-1][1])
                bundle.pop("value", None)
                return Response(200, bundle)
        return error(405, "MethodNotAllowed", f"{method} {request.path}")

    def _set(self, request: Request, name: str, secret: _Secret | None) -> Response:
        if secret is not None and secret.deleted_at is not None:
            body = {
                "error": {
                    "code": "Conflict",
                    "message": (
                        f"Secret {name} is currently in a deleted but recoverable state, and its "
                        "name cannot be reused; in this state, the secret can only be recovered "
                        "or purged."
                    ),
                    "innererror": {"code": "ObjectIsDeletedButRecoverable"},
                }
            }
            return Response(409, body)
        parameters = request.json() or {}
        value = parameters.get("value")
        if not isinstance(value, str):
            return error(400, "BadParameter", "Property 'value' is required")
        if len(value.encode()) > _MAX_VALUE_BYTES:
            return error(400, "BadParameter", "Secret value is too large; the limit is 25 KB")
        if secret is None:
            secret = self._secrets[name.lower()] = _Secret(name)
        version = secrets.token_hex(16)
        now = int(time.time())
        created = secret.versions[0][1]["attributes"]["created"] if secret.versions else now
        bundle: dict[str, Any] = {
            "value": value,
            "id": f"{request.base_url}/secrets/{secret.name}/{version}",
            "attributes": {
                "enabled": True,
                "created": created,
                "updated": now,
                "recoveryLevel": "Recoverable+Purgeable",
                "recoverableDays": 90,
            },
            "tags": dict(parameters.get("tags") or {}),
        }
        if parameters.get("contentType"):
            bundle["contentType"] = parameters["contentType"]
        secret.versions.append((version, bundle))
        return Response(200, bundle)

    def _get(self, request: Request, name: str, secret: _Secret | None, version: str) -> Response:
        if secret is None or secret.deleted_at is not None:
            return _not_found(name)
        for stored_version, bundle in reversed(secret.versions):
            if version in ("", stored_version):
                return Response(200, bundle)
        return error(
            404,
            "SecretNotFound",
            f"A secret with (name/id) {name}/{version} was not found in this key vault.",
        )

    def _delete(self, request: Request, name: str, secret: _Secret | None) -> Response:
        if secret is None or secret.deleted_at is not None:
            return _not_found(name)
        secret.deleted_at = int(time.time())
        return Response(200, self._deleted_bundle(request, secret))

    def _deleted_bundle(self, request: Request, secret: _Secret) -> dict[str, Any]:
        bundle = {k: v for k, v in secret.versions[-1][1].items() if k != "value"}
        assert secret.deleted_at is not None
        bundle["recoveryId"] = f"{request.base_url}/deletedsecrets/{secret.name}"
        bundle["deletedDate"] = secret.deleted_at
        bundle["scheduledPurgeDate"] = secret.deleted_at + 90 * 86400
        return bundle

    def _list(self, request: Request) -> Response:
        live = sorted(
            (s for s in self._secrets.values() if s.deleted_at is None), key=lambda s: s.name
        )
        size = min(int(request.query.get("maxresults") or self.page_size), self.page_size)
        start = int(request.query.get("$skiptoken") or 0)
        items = []
        for secret in live[start : start + size]:
            bundle = secret.versions[-1][1]
            item = {
                "id": f"{request.base_url}/secrets/{secret.name}",
                "attributes": bundle["attributes"],
                "tags": bundle["tags"],
            }
            if "contentType" in bundle:
                item["contentType"] = bundle["contentType"]
            items.append(item)
        next_link = None
        if start + size < len(live):
            version = request.query["api-version"]
            next_link = (
                f"{request.base_url}/secrets?api-version={version}&$skiptoken={start + size}"
                f"&maxresults={size}"
            )
        return Response(200, {"value": items, "nextLink": next_link})


def _not_found(name: str, deleted: bool = False) -> Response:
    kind = "deleted secret" if deleted else "secret"
    return error(
        404, "SecretNotFound", f"A {kind} with (name/id) {name} was not found in this key vault."
    )
