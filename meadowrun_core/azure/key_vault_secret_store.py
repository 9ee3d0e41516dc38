"""Named user secrets in Azure Key Vault, as ``meadowrun-user-<encoded name>`` (tagged).

Key Vault names allow only letters, digits and dashes, compare case-insensitively and are
at most 127 characters, while meadowrun's names are any non-empty string. The mapping is
reversible and case-safe: lower-case letters and digits stay, ``-`` becomes ``--``, every
other byte of the UTF-8 name becomes ``-`` and two lower-case hex digits (``Deploy_Key`` ->
``-44eploy-5f-4bey``). So no two names collide, even in a case-insensitive vault.

The vault keeps soft-deleted secrets (the default, and enforced on new vaults), and a deleted
name cannot be set again until purged. ``delete`` therefore waits for the deletion and purges
(the meadowrun role may purge); a ``put`` that finds its name deleted but not purged (purge
refused, or another client's delete) recovers it first, then sets the new value.

Credentials default to ``DefaultAzureCredential`` (the Azure CLI login, managed identity on
a VM); tests inject a ``SecretClient`` pointed at the Azure twin.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError

from meadowrun_core.exceptions import BadInputError
from meadowrun_core.seams.secret_store import SecretNotFoundError

log = logging.getLogger(__name__)

PREFIX = "meadowrun-user-"
TAGS = {"meadowrun": "true"}
MAX_NAME_LENGTH = 127
_PLAIN = re.compile(r"[a-z0-9]")
_ENCODED = re.compile(r"(?:[a-z0-9]|--|-[0-9a-f]{2})*")


def vault_name(name: str) -> str:
    """The Key Vault secret name of meadowrun's secret ``name`` (see the module docstring)."""
    if not name or not isinstance(name, str):
        raise BadInputError(f"a secret needs a non-empty name, got {name!r}")
    parts = []
    for char in name:
        if _PLAIN.fullmatch(char):
            parts.append(char)
        elif char == "-":
            parts.append("--")
        else:
            parts.extend(f"-{byte:02x}" for byte in char.encode())
    encoded = PREFIX + "".join(parts)
    if len(encoded) > MAX_NAME_LENGTH:
        raise BadInputError(
            f"the secret name {name!r} is too long for Key Vault: it is stored as "
            f"{len(encoded)} characters (at most {MAX_NAME_LENGTH}; upper-case letters and "
            "symbols take 3 each); choose a shorter name"
        )
    return encoded


def meadowrun_name(vault_secret_name: str) -> str | None:
    """The inverse of ``vault_name``; None for a name that is not a meadowrun user secret."""
    lowered = vault_secret_name.lower()  # the vault may echo another case; ours are lower
    if not lowered.startswith(PREFIX) or not _ENCODED.fullmatch(lowered[len(PREFIX) :]):
        return None
    encoded, out, i = lowered[len(PREFIX) :], bytearray(), 0
    while i < len(encoded):
        if encoded[i] != "-":
            out += encoded[i].encode()
            i += 1
        elif encoded[i + 1] == "-":
            out += b"-"
            i += 2
        else:
            out.append(int(encoded[i + 1 : i + 3], 16))
            i += 3
    try:
        return out.decode()
    except UnicodeDecodeError:
        return None


def _secret_client(vault_url: str, credential: Any | None) -> Any:
    from azure.keyvault.secrets import SecretClient

    if credential is None:
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential()
    return SecretClient(vault_url=vault_url, credential=credential)


class KeyVaultSecretStore:
    """The ``SecretStore`` seam on one vault (``https://<vault>.vault.azure.net``)."""

    def __init__(
        self, vault_url: str, credential: Any | None = None, client: Any | None = None
    ) -> None:
        self.vault_url = vault_url
        self._client = client or _secret_client(vault_url, credential)

    def get(self, name: str) -> str:
        try:
            secret = self._client.get_secret(vault_name(name))
        except ResourceNotFoundError:
            raise SecretNotFoundError(
                f"no secret {name!r} in Key Vault {self.vault_url}; store it with "
                f"`meadowrun secret set {name} --cloud azure`"
            ) from None
        return str(secret.value)

    def put(self, name: str, value: str) -> None:
        stored = vault_name(name)
        try:
            self._client.set_secret(stored, value, tags=TAGS)
        except ResourceExistsError as exc:  # 409: deleted, not yet purged
            if _inner_code(exc) != "ObjectIsDeletedButRecoverable":
                raise
            log.info("secret %r was deleted but not purged: recovering it to overwrite", name)
            self._client.begin_recover_deleted_secret(stored).wait()
            self._client.set_secret(stored, value, tags=TAGS)

    def delete(self, name: str) -> bool:
        stored = vault_name(name)
        try:
            self._client.begin_delete_secret(stored).wait()
        except ResourceNotFoundError:
            return False
        try:
            self._client.purge_deleted_secret(stored)
        except HttpResponseError as exc:
            # Purge protection, or no purge permission: the name stays reserved until the
            # vault's retention ends; ``put`` recovers and overwrites it.
            log.warning("could not purge deleted secret %r (%s)", name, exc.reason)
        return True

    def names(self) -> list[str]:
        found = []
        for properties in self._client.list_properties_of_secrets():
            name = meadowrun_name(str(properties.name))
            if name is not None:
                found.append(name)
        return sorted(found)


def _inner_code(exc: HttpResponseError) -> str | None:
    """Key Vault's ``error.innererror.code`` (``error.code`` is the generic ``Conflict``)."""
    inner = getattr(exc.error, "innererror", None) if exc.error is not None else None
    if isinstance(inner, dict):
        return str(inner.get("code"))
    return None
