"""The secret store seam: named secrets (a git SSH key, registry credentials) in the cloud.

Deployments carry only a secret's name; whoever needs the value (the client resolving a git
branch, the instance fetching it) reads it from its cloud's store: a private file on the
local cloud, Secrets Manager on AWS. Values never go into logs, command lines or the table.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from meadowrun_core.exceptions import BadInputError

SecretReader = Callable[[str], str]


class SecretNotFoundError(BadInputError, KeyError):
    """No secret with this name in the secret store."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "secret not found"


class SecretStore(Protocol):
    def get(self, name: str) -> str:
        """The value; raises ``SecretNotFoundError`` (a ``BadInputError``) naming a missing one."""
        ...

    def put(self, name: str, value: str) -> None: ...

    def delete(self, name: str) -> bool:
        """Whether there was such a secret."""
        ...

    def names(self) -> list[str]: ...
