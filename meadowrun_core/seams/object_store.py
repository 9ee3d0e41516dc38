"""Content-addressed blob storage for code, arguments and large results."""

from __future__ import annotations

import hashlib
from typing import Protocol

from meadowrun_core.serialization import Signer, UnauthenticatedDataError


def content_key(data: bytes) -> str:
    """The key a blob is stored under: the hex SHA-256 of its bytes."""
    return hashlib.sha256(data).hexdigest()


class DamagedObjectError(UnauthenticatedDataError):
    """A stored blob failed verification (or is gone: expired, collected). It names the
    key, so a client that still holds the content can put it again and retry."""

    def __init__(self, key: str, reason: str = "") -> None:
        super().__init__(key, reason)
        self.key = key
        self.reason = reason

    def __str__(self) -> str:
        return (
            f"object {self.key} in the object store is damaged or gone ({self.reason}); "
            "the client that uploaded it replaces it on its next run. If this persists, delete the "
            "object (for example `meadowrun clean`) and run again from a client that has "
            "the code and arguments"
        )


class ObjectStore(Protocol):
    @property
    def expiry_seconds(self) -> float | None:
        """Objects older than this may be deleted by the store (None: never), so a client's
        record of what it uploaded is trusted only for part of this."""
        ...

    def put(self, data: bytes, overwrite: bool = False) -> str:
        """Store ``data`` under its content key (a no-op when present unless ``overwrite``,
        which replaces a damaged copy and restarts its expiry); return the key."""
        ...

    def get(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...


def get_verified(store: ObjectStore, signer: Signer, key: str) -> bytes:
    """The verified payload of a signed blob; ``DamagedObjectError`` names the key when the
    stored bytes are not what was signed."""
    try:
        blob = store.get(key)
    except KeyError:
        raise DamagedObjectError(key, "it is missing from the store") from None
    if content_key(blob) != key:
        raise DamagedObjectError(key, "its bytes do not hash to its key")
    try:
        return signer.verify(blob)
    except UnauthenticatedDataError as exc:
        raise DamagedObjectError(key, str(exc)) from None
