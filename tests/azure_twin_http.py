"""The Azure twin's HTTP plumbing: one TLS ``ThreadingHTTPServer`` on an address of the test's
choosing, handing each request to the twin's parts (ARM, Key Vault, Retail Prices) in turn,
and the test credential the real SDK clients ask for bearer tokens.

Tokens are JWT-shaped, as Microsoft Entra ID's access tokens are ("Access token claims
reference": ``aud``, ``oid`` the principal's object id, ``tid`` the tenant), but unsigned: the
signature part is the literal ``twin``. Each part checks that a request carries a token for
its own audience, as Azure does (ARM: ``https://management.azure.com/.default``, Key Vault:
``https://vault.azure.net/.default``), and ``azure_twin_rbac.py`` checks the ``oid``'s role
assignments. ``TwinCredential`` (and the twin's App Service identity endpoint) speak for the
test user, ``USER_PRINCIPAL``, who owns the subscription."""

from __future__ import annotations

import base64
import json
import logging
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from azure.core.credentials import AccessToken

_log = logging.getLogger(__name__)

ARM_SCOPE = "https://management.azure.com/.default"
VAULT_SCOPE = "https://vault.azure.net/.default"
TOKEN_SIGNATURE = "twin"
USER_PRINCIPAL = "0b6f1e0c-7b1d-4c55-9a55-5c0de0000001"  # the test user's object id
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def make_token(principal: str, scope: str, expires_on: int | None = None) -> str:
    """An access token for ``scope`` (``<resource>/.default``) issued to ``principal``."""
    header = {"typ": "JWT", "alg": "none"}
    claims = {
        "aud": scope.removesuffix("/.default"),
        "oid": principal,
        "tid": TENANT,
        "iss": f"https://sts.windows.net/{TENANT}/",
        "exp": expires_on or int(time.time()) + 3600,
    }
    parts = [_b64(json.dumps(part).encode()) for part in (header, claims)]
    return ".".join([*parts, TOKEN_SIGNATURE])


def read_token(token: str) -> tuple[str, str] | None:
    """(principal, scope) of a twin token, None for anything else."""
    parts = token.split(".")
    if len(parts) != 3 or parts[2] != TOKEN_SIGNATURE:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        return str(claims["oid"]), str(claims["aud"]).rstrip("/") + "/.default"
    except (ValueError, KeyError, TypeError):
        return None


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes
    base_url: str  # https://host:port, what the twin's own links start with

    def json(self) -> Any:
        return json.loads(self.body or b"null")

    def token(self) -> tuple[str, str] | None:
        """(principal, scope) of the request's bearer token, None without a twin token."""
        auth = self.headers.get("authorization", "")
        return read_token(auth.removeprefix("Bearer ")) if auth.startswith("Bearer ") else None

    def token_scope(self) -> str | None:
        """The scope of the request's bearer token, None without one."""
        token = self.token()
        return token[1] if token else None

    def principal(self) -> str | None:
        token = self.token()
        return token[0] if token else None


@dataclass
class Response:
    status: int
    body: Any = None  # JSON-encoded unless None
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Request], Response | None]  # None: not mine


def error(status: int, code: str, message: str, **headers: str) -> Response:
    """ARM's and Key Vault's error body (ARM "Common error response": error.code/message)."""
    return Response(status, {"error": {"code": code, "message": message}}, dict(headers))


def page_of(
    rows: list[Any], request: Request, token: str, size: int, url: str
) -> tuple[list[Any], str | None]:
    """The page of ``rows`` that the request's ``token`` query parameter (an offset) asks
    for, and the link to the next page (``url`` with the same query and the next offset),
    None on the last: how the list APIs the twin serves page their answers."""
    start = int(request.query.get(token) or 0)
    page = rows[start : start + size]
    if start + size >= len(rows):
        return page, None
    query = {k: v for k, v in request.query.items() if k != token}
    query[token] = str(start + len(page))
    return page, f"{url}?{urlencode(query)}"


def no_group(rg: str) -> Response:
    return error(404, "ResourceGroupNotFound", f"Resource group '{rg}' could not be found.")


def not_found(kind: str, name: str, rg: str) -> Response:
    """ARM's 404 for a missing resource ("Resolve resource not found errors")."""
    return error(
        404,
        "ResourceNotFound",
        f"The Resource '{kind}/{name}' under resource group '{rg}' was not found. For more "
        "details please go to https://aka.ms/ARMResourceNotFoundFix",
    )


class TwinCredential:
    """A ``TokenCredential`` for tests: the test user's token per scope (``principal`` to
    speak for another), recording what was asked for."""

    def __init__(self, principal: str = USER_PRINCIPAL) -> None:
        self.principal = principal
        self.scopes_asked: list[str] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes_asked.extend(scopes)
        expires = int(time.time()) + 3600
        return AccessToken(make_token(self.principal, " ".join(scopes), expires), expires)

    def close(self) -> None:
        pass


class TwinServer:
    """Serves ``handlers`` over TLS on ``host``; ``base_url`` is where clients point."""

    def __init__(self, handlers: Sequence[Handler], context: ssl.SSLContext, host: str) -> None:
        self.handlers = list(handlers)
        self.requests: list[tuple[str, str]] = []  # (method, path), for counting calls
        self._context = context
        self._server = ThreadingHTTPServer((host, 0), _handler_class(self))
        self._server.daemon_threads = True
        self.host = host
        self.port = int(self._server.server_address[1])
        self.base_url = f"https://{host}:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def wrap(self, sock: Any) -> ssl.SSLSocket:
        # Handshake in the request's own thread, so a slow client never stalls accept().
        return self._context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)

    def answer(self, request: Request) -> Response:
        self.requests.append((request.method, request.path))
        for handler in self.handlers:
            response = handler(request)
            if response is not None:
                return response
        return error(404, "NotFound", f"the Azure twin serves no {request.method} {request.path}")


def _handler_class(server: TwinServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            self.request = server.wrap(self.request)
            super().setup()

        def _answer(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            url = urlsplit(self.path)
            request = Request(
                self.command,
                url.path,
                dict(parse_qsl(url.query, keep_blank_values=True)),
                {k.lower(): v for k, v in self.headers.items()},
                body,
                server.base_url,
            )
            try:
                response = server.answer(request)
            except Exception as exc:
                _log.exception("the Azure twin failed on %s %s", self.command, self.path)
                response = error(500, "InternalServerError", repr(exc))
            payload = b"" if response.body is None else json.dumps(response.body).encode()
            self.send_response(response.status)
            for name, value in response.headers.items():
                self.send_header(name, value)
            if response.body is not None:
                self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = _answer

        def log_message(self, format: str, *args: Any) -> None:
            _log.debug("azure twin: " + format, *args)

    return Handler
