"""The local cloud's secret store: named secrets in one private file (0600) in MEADOWRUN_HOME.

Deployments name secrets (a git SSH key, registry credentials); only the name travels in job
headers, and the instance reads the value here when it needs it. Values never go to logs.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from meadowrun_core.exceptions import BadInputError
from meadowrun_core.seams.secret_store import SecretNotFoundError


class LocalSecretStore:
    def __init__(self, home: Path) -> None:
        self._path = home / "secrets.json"
        self._lock_path = home / ".secrets.lock"

    @contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read(self) -> dict[str, str]:
        try:
            data: dict[str, str] = json.loads(self._path.read_text())
            return data
        except FileNotFoundError:
            return {}

    def _write(self, secrets: dict[str, str]) -> None:
        tmp = self._path.with_name(f".{self._path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(secrets, f)
        os.replace(tmp, self._path)

    def put(self, name: str, value: str) -> None:
        if not name or not isinstance(name, str):
            raise BadInputError(f"a secret needs a non-empty name, got {name!r}")
        with self._locked():
            secrets = self._read()
            secrets[name] = value
            self._write(secrets)

    def get(self, name: str) -> str:
        secrets = self._read()
        if name not in secrets:
            raise SecretNotFoundError(
                f"no secret named {name!r} in the local secret store; add it with "
                f"`meadowrun secret set {name} --file PATH`"
            )
        return secrets[name]

    def delete(self, name: str) -> bool:
        with self._locked():
            secrets = self._read()
            found = secrets.pop(name, None) is not None
            self._write(secrets)
        return found

    def names(self) -> list[str]:
        return sorted(self._read())
