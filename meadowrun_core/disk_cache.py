"""A small TTL cache of JSON documents in private files, for data fetched from a cloud's
catalog (instance types, prices) that changes slowly and is slow to fetch. Cloud-neutral:
each cloud names its own keys and TTL."""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from meadowrun_core.config import meadowrun_home


class DiskCache:
    """JSON documents in files readable by this user only, each valid for ``ttl_seconds``
    (default: under ``MEADOWRUN_HOME/cache``)."""

    def __init__(
        self,
        ttl_seconds: float,
        directory: Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory or meadowrun_home() / "cache"
        self.ttl_seconds = ttl_seconds
        self._clock = clock

    def path(self, key: str) -> Path:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", key)
        return self.directory / f"{safe}.json"

    def get(self, key: str) -> Any | None:
        """The stored document, or None when missing, unreadable or older than the TTL."""
        try:
            stored = json.loads(self.path(key).read_text())
            age = self._clock() - float(stored["stored_at"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return stored["data"] if 0 <= age < self.ttl_seconds else None

    def put(self, key: str, data: Any) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        body = json.dumps({"stored_at": self._clock(), "data": data})
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")  # created 0600
        try:
            with os.fdopen(fd, "w") as f:
                f.write(body)
            os.replace(tmp, self.path(key))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
