"""IMDSv2 session tokens, as an instance's metadata service issues and checks them: a PUT of
``/latest/api/token`` with a TTL header (1 to 21,600 s) returns a token, which every GET must
carry in ``X-aws-ec2-metadata-token``. One per instance (tokens are not valid across them)."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Mapping

TOKEN_PATH = "/latest/api/token"
_MAX_TTL = 21600


class ImdsTokens:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._expiry: dict[str, float] = {}  # token -> monotonic expiry

    def issue(self, method: str, headers: Mapping[str, str]) -> tuple[int, str]:
        """The answer to a request for ``TOKEN_PATH`` (headers' names in lower case)."""
        if method != "PUT":
            return 405, ""
        try:
            ttl = int(headers["x-aws-ec2-metadata-token-ttl-seconds"])
        except (KeyError, ValueError):
            return 400, ""
        if not 1 <= ttl <= _MAX_TTL:
            return 400, ""
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._expiry[token] = time.monotonic() + ttl
        return 200, token

    def refuse(self, method: str, headers: Mapping[str, str]) -> int | None:
        """The error status for a metadata request, or None when its token is good."""
        if method != "GET":
            return 405
        with self._lock:
            expiry = self._expiry.get(headers.get("x-aws-ec2-metadata-token", ""))
        return 401 if expiry is None or expiry < time.monotonic() else None
