"""A small Azure Resource Manager REST client for the resources no installed SDK covers
(resource groups, storage accounts, virtual networks, managed identities, role assignments).

Why not the azure-mgmt-* SDKs: each is a large package for two or three calls; ``azure-core``
(already a dependency) gives the pipeline (bearer token, retries, ``REQUESTS_CA_BUNDLE``).
Long-running operations follow "Track asynchronous Azure operations": a 201/202 with
``Azure-AsyncOperation`` is polled until its ``status`` is terminal, one with only
``Location`` until that URL stops answering 202.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from azure.core import PipelineClient
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.core.pipeline import policies
from azure.core.rest import HttpRequest, HttpResponse

from meadowrun_core.azure import settings

log = logging.getLogger(__name__)

_TERMINAL = {"succeeded", "failed", "canceled", "cancelled"}


class ArmError(HttpResponseError):
    """An ARM error response (``error.code`` / ``error.message``) or a failed operation."""


class Arm:
    """REST calls on one subscription's ARM, paths relative to the subscription
    (``/resourceGroups/...``) or absolute (``/subscriptions/...``, ``/providers/...``)."""

    def __init__(
        self,
        credential: Any,
        subscription_id: str,
        sleep: Callable[[float], None] = time.sleep,
        poll_seconds: float = 2.0,
    ) -> None:
        self.subscription_id = subscription_id
        self._sleep = sleep
        self._poll_seconds = poll_seconds
        self._base_url = settings.arm_url()
        self._client: PipelineClient[Any, Any] = PipelineClient(
            self._base_url,
            policies=[
                policies.HeadersPolicy(),
                policies.UserAgentPolicy("meadowrun-core"),
                policies.RetryPolicy(),
                policies.BearerTokenCredentialPolicy(credential, settings.ARM_SCOPE),
                policies.HttpLoggingPolicy(),
            ],
        )

    def url(self, path: str) -> str:
        """An absolute URL (a ``nextLink`` stays as ARM gave it)."""
        if path.startswith("https://"):
            return path
        if not path.startswith(("/subscriptions/", "/providers/")):
            path = f"/subscriptions/{self.subscription_id}{path}"
        return self._base_url + path

    def _send(self, method: str, path: str, api: str, body: Any = None) -> HttpResponse:
        params = {} if "api-version=" in path else {"api-version": api}
        request = HttpRequest(method, self.url(path), params=params, json=body)
        response: HttpResponse = self._client.send_request(request)
        if response.status_code == 404:
            raise ResourceNotFoundError(message=_message(response), response=response)
        if response.status_code >= 400:
            raise ArmError(message=_message(response), response=response)
        return response

    def get(self, path: str, api: str) -> dict[str, Any] | None:
        """The resource, None where ARM says 404."""
        try:
            return _json(self._send("GET", path, api))
        except ResourceNotFoundError:
            return None

    def put(self, path: str, api: str, body: dict[str, Any]) -> dict[str, Any]:
        """Create or update, wait for it, and return the resource as ARM now has it."""
        response = self._send("PUT", path, api, body)
        if self._wait(response):
            return self.get(path, api) or {}
        return _json(response) or self.get(path, api) or {}

    def post(self, path: str, api: str, body: Any = None) -> dict[str, Any]:
        """An action (``listKeys``, ``purge``...); one answered 202 is waited for."""
        response = self._send("POST", path, api, body)
        if self._wait(response):
            return {}
        return _json(response) or {}

    def delete(self, path: str, api: str, wait: bool = True) -> bool:
        """Delete (and wait, unless not ``wait``); False when there was nothing to delete."""
        try:
            response = self._send("DELETE", path, api)
        except ResourceNotFoundError:
            return False
        if response.status_code == 204:
            return False
        if wait:
            self._wait(response)
        return True

    def _wait(self, response: HttpResponse) -> bool:
        """Follow a long-running operation; True when there was one to follow."""
        status_url = response.headers.get("Azure-AsyncOperation")
        location = response.headers.get("Location")
        if response.status_code not in (201, 202) or not (status_url or location):
            return False
        while True:
            self._sleep(float(response.headers.get("Retry-After") or self._poll_seconds))
            if status_url:
                response = self._client.send_request(HttpRequest("GET", status_url))
                state = str((_json(response) or {}).get("status", "")).lower()
                if state in _TERMINAL:
                    if state != "succeeded":
                        raise ArmError(message=_message(response), response=response)
                    return True
            else:
                assert location is not None
                response = self._client.send_request(HttpRequest("GET", location))
                if response.status_code >= 400:
                    raise ArmError(message=_message(response), response=response)
                if response.status_code != 202:
                    return True


def _json(response: HttpResponse) -> dict[str, Any] | None:
    text = response.text()
    if not text:
        return None
    value = json.loads(text)
    return value if isinstance(value, dict) else None


def _message(response: HttpResponse) -> str:
    """ARM's ``code: message`` (or the operation's error), else the status line."""
    try:
        body = _json(response) or {}
    except ValueError:
        body = {}
    error = body.get("error") or {}
    if error:
        return f"{error.get('code')}: {error.get('message')}"
    return f"{response.status_code} {response.reason} from {response.request.url}"
