"""``ObjectStore`` on Azure Blob: content-addressed blobs under one prefix of one container;
named objects under ``<prefix>named/``, so one lifecycle rule on the prefix expires both."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterable, Iterator
from typing import Any

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

from meadowrun_core.seams.object_store import NamedObject, check_name, content_key

_DELETE_BATCH = 256  # a blob batch request takes at most this many sub-requests
_PUT_WITHOUT_CHECK_BYTES = 256 * 1024
# The container's lifecycle rule is meant to expire objects this long after their last write.
DEFAULT_EXPIRY_SECONDS = 7 * 86400.0
CONTAINER_NAME = "meadowrun"


class BlobObjectStore:
    def __init__(
        self,
        blob_service: Any,
        container: str = CONTAINER_NAME,
        prefix: str = "objects/",
        expiry_seconds: float | None = DEFAULT_EXPIRY_SECONDS,
    ) -> None:
        """``blob_service``: an ``azure.storage.blob.BlobServiceClient``."""
        self._container_name = container
        self._container = blob_service.get_container_client(container)
        self._prefix = prefix
        self.expiry_seconds = expiry_seconds

    def create(self) -> bool:
        """Create the container if it does not exist; whether this call did."""
        try:
            self._container.create_container(metadata={"meadowrun": "true"})
        except ResourceExistsError:
            return False
        return True

    def _key(self, key: str) -> str:
        if not key.isalnum():
            raise ValueError(f"invalid object key {key!r}")
        return self._prefix + key

    def put(self, data: bytes, overwrite: bool = False) -> str:
        key = content_key(data)
        # content-addressed, so a write of a blob already there changes nothing but its
        # expiry: small blobs are written at once (one request), large ones checked first
        if overwrite or len(data) <= _PUT_WITHOUT_CHECK_BYTES or not self.exists(key):
            self._container.upload_blob(self._key(key), data, overwrite=True)
        return key

    def _read(self, blob: str, what: str) -> bytes:
        try:
            data: bytes = self._container.download_blob(blob).readall()
        except ResourceNotFoundError:
            raise KeyError(f"object {what} is not in container {self._container_name}") from None
        return data

    def get(self, key: str) -> bytes:
        return self._read(self._key(key), key)

    def exists(self, key: str) -> bool:
        return bool(self._container.get_blob_client(self._key(key)).exists())

    def delete(self, key: str) -> None:
        with contextlib.suppress(ResourceNotFoundError):  # gone already: as S3 does
            self._container.delete_blob(self._key(key))

    def _named_key(self, name: str) -> str:
        return f"{self._prefix}named/{check_name(name)}"

    def put_named(self, name: str, data: bytes) -> None:
        self._container.upload_blob(self._named_key(name), data, overwrite=True)

    def get_named(self, name: str) -> bytes:
        return self._read(self._named_key(name), name)

    def list_named(self, prefix: str) -> Iterator[NamedObject]:
        top = f"{self._prefix}named/"
        folder = f"{top}{check_name(prefix)}/" if prefix else top
        for blob in self._container.list_blobs(name_starts_with=folder):
            name = blob.name.removeprefix(top)
            yield NamedObject(name, blob.last_modified.timestamp(), int(blob.size))

    def delete_named(self, names: Iterable[str]) -> None:
        """Batched deletes; names already gone are ignored, any other failure is raised."""
        blobs = iter([self._named_key(n) for n in names])
        while batch := list(itertools.islice(blobs, _DELETE_BATCH)):
            responses = self._container.delete_blobs(*batch, raise_on_any_failure=False)
            failed = [
                (blob, r.status_code)
                for blob, r in zip(batch, responses, strict=True)
                if r.status_code not in (200, 202, 404)
            ]
            if failed:
                blob, status = failed[0]
                raise RuntimeError(
                    f"could not delete {len(failed)} object(s) from container "
                    f"{self._container_name}, e.g. {blob}: HTTP {status}"
                )
