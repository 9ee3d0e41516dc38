"""``ObjectStore`` on S3: content-addressed keys under one prefix of one bucket; named objects
under ``<prefix>named/``, so the bucket's lifecycle rule expires them too."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Any

from botocore.exceptions import ClientError

from meadowrun_core.seams.object_store import NamedObject, check_name, content_key

_DELETE_BATCH = 1000  # DeleteObjects takes at most this many keys

_PUT_WITHOUT_CHECK_BYTES = 256 * 1024
# The bucket's lifecycle rule (aws/account.py) expires objects this long after their last PUT.
DEFAULT_EXPIRY_SECONDS = 7 * 86400.0


class S3ObjectStore:
    def __init__(
        self,
        s3: Any,
        bucket: str,
        prefix: str = "objects/",
        expiry_seconds: float | None = DEFAULT_EXPIRY_SECONDS,
    ) -> None:
        self._s3 = s3
        self._bucket = bucket
        self._prefix = prefix
        self.expiry_seconds = expiry_seconds

    def _key(self, key: str) -> str:
        if not key.isalnum():
            raise ValueError(f"invalid object key {key!r}")
        return self._prefix + key

    def put(self, data: bytes, overwrite: bool = False) -> str:
        key = content_key(data)
        # content-addressed, so a PUT of a blob already there changes nothing but its expiry:
        # for small blobs one PUT is cheaper than HEAD then PUT; large ones are checked first
        if overwrite or len(data) <= _PUT_WITHOUT_CHECK_BYTES or not self.exists(key):
            self._s3.put_object(Bucket=self._bucket, Key=self._key(key), Body=data)
        return key

    def get(self, key: str) -> bytes:
        try:
            response = self._s3.get_object(Bucket=self._bucket, Key=self._key(key))
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("NoSuchKey", "404"):
                raise KeyError(f"object {key} is not in s3://{self._bucket}") from None
            raise
        data: bytes = response["Body"].read()
        return data

    def exists(self, key: str) -> bool:
        try:
            self._s3.head_object(Bucket=self._bucket, Key=self._key(key))
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def delete(self, key: str) -> None:
        self._s3.delete_object(Bucket=self._bucket, Key=self._key(key))

    def _named_key(self, name: str) -> str:
        return f"{self._prefix}named/{check_name(name)}"

    def put_named(self, name: str, data: bytes) -> None:
        self._s3.put_object(Bucket=self._bucket, Key=self._named_key(name), Body=data)

    def get_named(self, name: str) -> bytes:
        try:
            response = self._s3.get_object(Bucket=self._bucket, Key=self._named_key(name))
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("NoSuchKey", "404"):
                raise KeyError(f"object {name} is not in s3://{self._bucket}") from None
            raise
        data: bytes = response["Body"].read()
        return data

    def list_named(self, prefix: str) -> Iterator[NamedObject]:
        top = f"{self._prefix}named/"
        folder = f"{top}{check_name(prefix)}/" if prefix else top
        pages = self._s3.get_paginator("list_objects_v2").paginate(
            Bucket=self._bucket, Prefix=folder
        )
        for page in pages:
            for item in page.get("Contents", []):
                name = item["Key"].removeprefix(top)
                yield NamedObject(name, item["LastModified"].timestamp(), int(item["Size"]))

    def delete_named(self, names: Iterable[str]) -> None:
        keys = iter([{"Key": self._named_key(n)} for n in names])
        while batch := list(itertools.islice(keys, _DELETE_BATCH)):
            response = self._s3.delete_objects(
                Bucket=self._bucket, Delete={"Objects": batch, "Quiet": True}
            )
            errors = response.get("Errors", [])
            if errors:
                first = errors[0]
                raise RuntimeError(
                    f"could not delete {len(errors)} object(s) from s3://{self._bucket}, "
                    f"e.g. {first.get('Key')}: {first.get('Code')} {first.get('Message')}"
                )
