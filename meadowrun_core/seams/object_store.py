"""Content-addressed blob storage for code, arguments and large results."""

from __future__ import annotations

import hashlib
from typing import Protocol


def content_key(data: bytes) -> str:
    """The key a blob is stored under: the hex SHA-256 of its bytes."""
    return hashlib.sha256(data).hexdigest()


class ObjectStore(Protocol):
    def put(self, data: bytes) -> str:
        """Store ``data`` under its content key (a no-op when present); return the key."""
        ...

    def get(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...
