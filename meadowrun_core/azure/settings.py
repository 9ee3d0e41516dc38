"""Where an ``AllocAzureVM`` runs (subscription, location, resource group) and where its
services answer, resolved before anything is created, with a message naming the fix.

Defaults: the host's fields, then ``AZURE_SUBSCRIPTION_ID``, ``MEADOWRUN_AZURE_LOCATION``,
``MEADOWRUN_AZURE_RESOURCE_GROUP``, then the Azure CLI's defaults (``az configure
--defaults group=... location=...``, kept in ``$AZURE_CONFIG_DIR/config`` or
``~/.azure/config``, section ``[defaults]``).

Endpoint overrides, for emulators (Azurite, the tests' Azure twin) as
``MEADOWRUN_AWS_ENDPOINT_URL`` is for AWS: ``MEADOWRUN_AZURE_ARM_URL`` (Resource Manager),
``MEADOWRUN_AZURE_VAULT_URL`` (the Key Vault; otherwise ``MEADOWRUN_AZURE_KEY_VAULT`` names
it), ``MEADOWRUN_AZURE_STORAGE_TABLE_URL`` / ``_QUEUE_URL`` / ``_BLOB_URL``. TLS trust follows
``REQUESTS_CA_BUNDLE``, which the Azure SDK honours.
"""

from __future__ import annotations

import configparser
import os
from dataclasses import dataclass
from pathlib import Path

from meadowrun_core.exceptions import BadInputError
from meadowrun_core.hosts import AllocAzureVM

ARM_URL_ENV = "MEADOWRUN_AZURE_ARM_URL"
VAULT_URL_ENV = "MEADOWRUN_AZURE_VAULT_URL"
VAULT_NAME_ENV = "MEADOWRUN_AZURE_KEY_VAULT"
VAULT_GROUP_ENV = "MEADOWRUN_AZURE_KEY_VAULT_RESOURCE_GROUP"
STORAGE_URL_ENVS = {
    "table": "MEADOWRUN_AZURE_STORAGE_TABLE_URL",
    "queue": "MEADOWRUN_AZURE_STORAGE_QUEUE_URL",
    "blob": "MEADOWRUN_AZURE_STORAGE_BLOB_URL",
}
ARM_URL = "https://management.azure.com"
ARM_SCOPE = "https://management.azure.com/.default"


@dataclass(frozen=True)
class AzureTarget:
    subscription_id: str
    location: str
    resource_group: str


def cli_defaults() -> dict[str, str]:
    """The Azure CLI's ``[defaults]`` (``group``, ``location``), empty where there are none."""
    directory = os.environ.get("AZURE_CONFIG_DIR") or str(Path.home() / ".azure")
    parser = configparser.ConfigParser()
    try:
        parser.read(Path(directory) / "config")
    except configparser.Error:
        return {}
    return dict(parser["defaults"]) if parser.has_section("defaults") else {}


def resolve_target(host: AllocAzureVM) -> AzureTarget:
    """The host's subscription, location and resource group, or a ``BadInputError``."""
    defaults = cli_defaults()
    subscription = host.subscription_id or os.environ.get("AZURE_SUBSCRIPTION_ID")
    location = (
        host.location or os.environ.get("MEADOWRUN_AZURE_LOCATION") or defaults.get("location")
    )
    group = (
        host.resource_group
        or os.environ.get("MEADOWRUN_AZURE_RESOURCE_GROUP")
        or defaults.get("group")
    )
    if not subscription:
        raise BadInputError(
            "AllocAzureVM needs a subscription: give AllocAzureVM(subscription_id=...) or set "
            "AZURE_SUBSCRIPTION_ID (`az account show --query id -o tsv`)"
        )
    if not location:
        raise BadInputError(
            "AllocAzureVM needs a location: give AllocAzureVM(location='eastus'), set "
            "MEADOWRUN_AZURE_LOCATION, or `az configure --defaults location=eastus`"
        )
    if not group:
        raise BadInputError(
            "AllocAzureVM needs a resource group for its VMs: give "
            "AllocAzureVM(resource_group=...), set MEADOWRUN_AZURE_RESOURCE_GROUP, or "
            "`az configure --defaults group=<name>`"
        )
    # the environment's values get the same checks as the host's own fields
    AllocAzureVM(location=location.strip().lower(), resource_group=group.strip())
    return AzureTarget(subscription.strip(), location.strip().lower(), group.strip())


def arm_url() -> str:
    return (os.environ.get(ARM_URL_ENV) or ARM_URL).rstrip("/")


def vault_url() -> str:
    """The Key Vault holding the cluster's keys and the storage account's key."""
    url = os.environ.get(VAULT_URL_ENV)
    if url:
        return url.rstrip("/")
    name = os.environ.get(VAULT_NAME_ENV)
    if not name:
        raise BadInputError(
            "AllocAzureVM needs meadowrun's Key Vault: set MEADOWRUN_AZURE_KEY_VAULT to its name "
            "(or MEADOWRUN_AZURE_VAULT_URL to its URL); docs/azure.md says what it holds"
        )
    return f"https://{name}.vault.azure.net"


def vault_name() -> str:
    """The name of meadowrun's Key Vault, which install creates (and uninstall removes)."""
    name = os.environ.get(VAULT_NAME_ENV)
    if not name:
        raise BadInputError(
            "meadowrun install|uninstall --cloud azure needs meadowrun's Key Vault: set "
            "MEADOWRUN_AZURE_KEY_VAULT to its name (3-24 letters, digits and dashes, unique "
            "across Azure); install creates it in the resource group"
        )
    return name.strip()


def vault_group() -> str | None:
    """The resource group of a vault the user keeps outside meadowrun's group (a central
    security team's, say), named by ``MEADOWRUN_AZURE_KEY_VAULT_RESOURCE_GROUP``; None where
    meadowrun's vault lives in meadowrun's own group. Set, the vault is the user's: install
    uses it as it is and never creates it, uninstall never deletes it."""
    group = (os.environ.get(VAULT_GROUP_ENV) or "").strip()
    return group or None


def vault_overridden() -> bool:
    """An emulator's vault: its bearer challenge names vault.azure.net, not its address."""
    return bool(os.environ.get(VAULT_URL_ENV))


def storage_urls(account_name: str) -> dict[str, str]:
    """table/queue/blob endpoints of the account (or the overrides')."""
    return {
        service: (
            os.environ.get(env) or f"https://{account_name}.{service}.core.windows.net"
        ).rstrip("/")
        for service, env in STORAGE_URL_ENVS.items()
    }


def agent_environment() -> dict[str, str]:
    """What the agent on a VM needs of these settings (the endpoints it must use)."""
    names = [ARM_URL_ENV, VAULT_URL_ENV, VAULT_NAME_ENV, *STORAGE_URL_ENVS.values()]
    return {name: os.environ[name] for name in names if os.environ.get(name)}
