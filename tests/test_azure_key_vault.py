"""The Key Vault secret store through the real ``SecretClient`` (challenge flow, TLS) against
the Azure twin's vault (tests/azure_twin_vault.py)."""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from meadowrun_core.azure.key_vault_secret_store import (
    KeyVaultSecretStore,
    meadowrun_name,
    vault_name,
)
from meadowrun_core.exceptions import BadInputError
from meadowrun_core.seams.secret_store import SecretNotFoundError
from tests.azure_twin import AzureTwin, running_twin
from tests.azure_twin_http import VAULT_SCOPE


@pytest.fixture
def twin(tmp_path: Path) -> Iterator[AzureTwin]:
    with running_twin(tmp_path / "twin", vault_page_size=2) as twin:
        yield twin


def store_on(twin: AzureTwin) -> KeyVaultSecretStore:
    return KeyVaultSecretStore(twin.base_url, client=twin.secret_client())


def test_secrets_round_trip_after_the_challenge(twin: AzureTwin) -> None:
    store = store_on(twin)
    store.put("git-key", "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n")
    store.put("git-key", "second value")
    assert store.get("git-key") == "second value"
    assert twin.vault.values(vault_name("git-key")) == [
        "-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n",
        "second value",
    ]
    # The vault asked for its own audience, and nothing else was asked for.
    assert set(twin.credential.scopes_asked) == {VAULT_SCOPE}
    assert store.names() == ["git-key"]
    assert store.delete("git-key") is True
    assert store.names() == []
    with pytest.raises(SecretNotFoundError, match="git-key"):
        store.get("git-key")
    assert store.delete("git-key") is False


def test_unauthenticated_requests_get_the_key_vault_challenge(twin: AzureTwin) -> None:
    request = urllib.request.Request(f"{twin.base_url}/secrets/x/?api-version=7.5")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, context=twin.ssl_context(), timeout=10)
    assert caught.value.code == 401
    challenge = caught.value.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer authorization=") and 'resource="https://vault' in challenge


def test_names_map_reversibly_and_never_collide_in_a_case_insensitive_vault(
    twin: AzureTwin,
) -> None:
    names = ["Deploy_Key", "deploy_key", "deploy-key", "deploy--key", "ü/registry token", "A"]
    store = store_on(twin)
    for i, name in enumerate(names):
        store.put(name, f"value {i}")
    stored = twin.vault.stored_names()
    assert len(stored) == len(names)
    assert len({s.lower() for s in stored}) == len(names)  # distinct even ignoring case
    assert all(re.fullmatch(r"[0-9a-z-]{1,127}", s) for s in stored)
    for i, name in enumerate(names):
        assert store.get(name) == f"value {i}"
        assert meadowrun_name(vault_name(name)) == name
    # Listing pages through nextLink (2 to a page here) and skips other applications' secrets.
    twin.secret_client().set_secret("another-apps-secret", "x")
    assert store.names() == sorted(names)


def test_a_name_too_long_for_key_vault_fails_before_any_request(twin: AzureTwin) -> None:
    before = len(twin.server.requests)
    with pytest.raises(BadInputError, match="too long for Key Vault"):
        store_on(twin).put("X" * 40, "value")
    assert len(twin.server.requests) == before
    assert meadowrun_name("meadowrun-user--zz") is None
    assert meadowrun_name("someone-else") is None


def test_delete_purges_so_the_name_can_be_set_again(twin: AzureTwin) -> None:
    store = store_on(twin)
    store.put("token", "old")
    store.delete("token")
    assert twin.vault.stored_names(include_deleted=True) == []
    store.put("token", "new")
    assert store.get("token") == "new"


def test_put_recovers_a_secret_deleted_but_not_purged(twin: AzureTwin) -> None:
    store = store_on(twin)
    store.put("token", "old")
    # Another client deleted it without purging: the name is reserved (409 on a plain set).
    twin.secret_client().begin_delete_secret(vault_name("token")).wait()
    assert store.names() == []
    store.put("token", "new")
    assert store.get("token") == "new"
    assert store.names() == ["token"]
