"""Content-addressed blob storage for code, arguments and large results, plus a few objects
stored under a chosen name (an index whose key is not the content's hash: the result cache)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
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


_NAME = re.compile(r"[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*")
_NAME_MAX = 512


def check_name(name: str) -> str:
    """A named object's name: segments of letters, digits, ``_`` and ``-`` joined by ``/``
    (so it is a safe relative path and S3 key), at most 512 characters."""
    if len(name) > _NAME_MAX or not _NAME.fullmatch(name):
        raise ValueError(f"invalid object name {name!r}")
    return name


@dataclass(frozen=True)
class NamedObject:
    """A named object as a listing shows it: ``stored_at`` is the time of its last write
    (Unix seconds), which is what the store's expiry counts from."""

    name: str
    stored_at: float
    size: int


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

    # --- named objects: stored under a name the caller chooses (``check_name``), apart from
    # the content-addressed ones, and expiring like them (counted from their last write) ---
    def put_named(self, name: str, data: bytes) -> None:
        """Store ``data`` under ``name``, replacing what was there."""
        ...

    def get_named(self, name: str) -> bytes:
        """The data stored under ``name``; ``KeyError`` when there is none."""
        ...

    def list_named(self, prefix: str) -> Iterator[NamedObject]:
        """Every named object under the folder ``prefix`` (a name, or ``""`` for all)."""
        ...

    def delete_named(self, names: Iterable[str]) -> None:
        """Delete these named objects (those already gone are ignored)."""
        ...


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
