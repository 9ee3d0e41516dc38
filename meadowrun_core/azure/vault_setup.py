"""meadowrun's Key Vault, made by ``meadowrun install --cloud azure`` and removed by
``uninstall``, through ARM (Microsoft.KeyVault/vaults, api-version 2023-07-01).

**Install** looks for the vault named ``MEADOWRUN_AZURE_KEY_VAULT`` in the resource group:

* found: used as it is (a vault the user made keeps being theirs; its access model is theirs
  too: the VMs' Key Vault Secrets User role only counts where it uses RBAC authorization);
* soft-deleted: Key Vault's soft delete is always on ("Azure Key Vault soft-delete
  overview"): a deleted vault keeps its contents and its name, which no one can take, until
  it is purged or its retention passes. One carrying meadowrun's tag (an uninstall whose
  purge was refused) is **recovered** (``createMode: recover``), with its secrets; one that
  is not meadowrun's is left to the user (``az keyvault recover`` or ``purge``);
* missing: created, Standard, with RBAC authorization (``enableRbacAuthorization``), soft
  delete's shortest retention (7 days) and meadowrun's tag. The signed-in principal (the
  ``oid`` of its ARM token) then gets **Key Vault Secrets Officer** on it: with RBAC
  authorization even a subscription's Owner reads and writes no secret without a data role.

**Uninstall** deletes a vault that carries meadowrun's tag and **purges** it, so its secrets
are gone and its name is free at once; where Azure refuses the purge (purge protection,
which meadowrun never turns on, or a policy), the vault waits out its retention and the next
install recovers it. A vault that is not meadowrun's stays; uninstall deletes only
meadowrun's secrets in it.

**A vault in another resource group** (``MEADOWRUN_AZURE_KEY_VAULT_RESOURCE_GROUP``: a
central security team's, say) is the user's: install checks that it is there before it
creates anything (``check_vault``), never creates, recovers, tags or deletes it, gives the
signed-in principal no role on it (their own data role must let them write the secrets),
and scopes the VMs' Key Vault Secrets User to that vault's id; uninstall deletes only
meadowrun's secrets and that role assignment. A name (not a lookup of every vault in the
subscription) because a name that is wrong must fail, not make a new vault, and because
reading one known id needs no right beyond the vault itself.

Role assignments take a while to reach Key Vault ("observe propagation time"): an install
that fails with ``ForbiddenByRbac`` right after creating the vault succeeds when run again.
"""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

from azure.core.exceptions import HttpResponseError

from meadowrun_core.azure import installed, settings
from meadowrun_core.azure.account import TAGS
from meadowrun_core.azure.arm import Arm
from meadowrun_core.azure.settings import AzureTarget
from meadowrun_core.exceptions import BadInputError

log = logging.getLogger(__name__)

RETENTION_DAYS = 7  # the shortest soft-delete retention Key Vault allows


def signed_in_principal(credential: Any) -> str:
    """The object id of whoever ``credential`` signs in as (the ``oid`` claim of its ARM
    access token, "Access token claims reference"); the token itself is never logged."""
    token = str(credential.get_token(settings.ARM_SCOPE).token)
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return str(claims["oid"])
    except (IndexError, ValueError, KeyError, TypeError) as exc:
        raise BadInputError(
            "cannot tell who is signed in to Azure (the ARM access token carries no 'oid' "
            "claim); sign in as a user or service principal (`az login`)"
        ) from exc


def ensure_role(
    arm: Arm,
    target: AzureTarget,
    scope: str,
    principal: str,
    role: str,
    who: str,
    principal_type: str | None = None,
) -> str:
    """The role assignment (fixed name: ``installed.role_assignment_path``), created if
    missing; the report line."""
    path = installed.role_assignment_path(scope, principal, role)
    what = f"role {installed.ROLES[role]} for {who}"
    if arm.get(path, installed.API_ROLES) is not None:
        return f"found {what}"
    properties = {
        "roleDefinitionId": installed.role_definition_id(target, role),
        "principalId": principal,
        "description": "meadowrun install",
    }
    if principal_type:
        properties["principalType"] = principal_type
    arm.put(path, installed.API_ROLES, {"properties": properties})
    return f"created {what}"


def check_vault(arm: Arm, target: AzureTarget) -> None:
    """Where the user names a vault in another resource group, a ``BadInputError`` naming
    the fix unless it is there (install calls this before it creates anything)."""
    group = settings.vault_group()
    if group is None:
        return
    name = settings.vault_name()
    if arm.get(installed.vault_path(target, name), installed.API_KEYVAULT) is not None:
        return
    raise BadInputError(
        f"the Key Vault {name} (MEADOWRUN_AZURE_KEY_VAULT) is not in resource group {group} "
        f"(MEADOWRUN_AZURE_KEY_VAULT_RESOURCE_GROUP) of subscription {target.subscription_id}, "
        "or you cannot read it; install uses a vault there as it is and never creates one. "
        f"Find its group with `az keyvault show --name {name} --query resourceGroup`, recover "
        f"a deleted one with `az keyvault recover --name {name}`, or unset "
        "MEADOWRUN_AZURE_KEY_VAULT_RESOURCE_GROUP to have install create the vault in "
        f"meadowrun's group {target.resource_group}"
    )


def ensure_vault(arm: Arm, credential: Any, target: AzureTarget) -> list[str]:
    """meadowrun's vault (found, recovered or created in meadowrun's group; only found where
    it is the user's, in another group) and, on one meadowrun made, Key Vault Secrets
    Officer for the signed-in principal; the report lines."""
    name = settings.vault_name()
    path = installed.vault_path(target, name)
    api = installed.API_KEYVAULT
    elsewhere = settings.vault_group()
    vault = arm.get(path, api)
    if vault is None and elsewhere is not None:
        check_vault(arm, target)  # raises: gone since the check, never made here
    if vault is not None:
        done = [
            f"found Key Vault {name}" + (f" in resource group {elsewhere}" if elsewhere else "")
        ]
        if not (vault.get("properties") or {}).get("enableRbacAuthorization"):
            log.warning(
                "Key Vault %s uses access policies: give the identity %s secret get and list "
                "permissions by hand (the Key Vault Secrets User role does not apply)",
                name,
                installed.IDENTITY_NAME,
            )
    else:
        subscription = f"/subscriptions/{target.subscription_id}"
        tenant = (arm.get(subscription, installed.API_SUBSCRIPTIONS) or {}).get("tenantId")
        properties: dict[str, Any] = {
            "tenantId": tenant,
            "sku": {"family": "A", "name": "standard"},
            "enableRbacAuthorization": True,
            "softDeleteRetentionInDays": RETENTION_DAYS,
        }
        deleted = arm.get(installed.deleted_vault_path(target, name), api)
        if deleted is not None:
            if not installed.is_ours(deleted.get("properties")):
                raise BadInputError(
                    f"the Key Vault {name} was deleted but is kept (soft delete) and is not "
                    f"meadowrun's: recover it (`az keyvault recover --name {name}`) or purge "
                    f"it (`az keyvault purge --name {name}`), or name another vault in "
                    "MEADOWRUN_AZURE_KEY_VAULT"
                )
            properties["createMode"] = "recover"
        body = {"location": target.location, "tags": TAGS, "properties": properties}
        vault = arm.put(path, api, body)
        done = [f"{'recovered' if deleted else 'created'} Key Vault {name}"]
    if installed.is_ours(vault) and elsewhere is None:
        principal = signed_in_principal(credential)
        officer = installed.ROLE_VAULT_SECRETS_OFFICER
        done.append(ensure_role(arm, target, path, principal, officer, "you"))
    return done


def remove_vault(arm: Arm, credential: Any, target: AzureTarget) -> list[str] | None:
    """Delete and purge meadowrun's vault; None where the vault is not meadowrun's (the
    user's: untagged, or in another group, whatever its tags; or gone), so its secrets are
    the caller's to delete."""
    name = settings.vault_name()
    path = installed.vault_path(target, name)
    if settings.vault_group() is not None:
        return None
    if not installed.is_ours(arm.get(path, installed.API_KEYVAULT)):
        return None
    principal = signed_in_principal(credential)
    role = installed.ROLE_VAULT_SECRETS_OFFICER
    done = []
    if arm.delete(installed.role_assignment_path(path, principal, role), installed.API_ROLES):
        done.append(f"deleted role {installed.ROLES[role]} for you")
    arm.delete(path, installed.API_KEYVAULT)
    done.append(f"deleted Key Vault {name}")
    try:
        arm.post(f"{installed.deleted_vault_path(target, name)}/purge", installed.API_KEYVAULT)
        done.append(f"purged Key Vault {name}")
    except HttpResponseError as exc:
        log.warning(
            "could not purge the deleted Key Vault %s (%s): Azure keeps it and its name for "
            "%d days; the next install recovers it",
            name,
            exc.message,
            RETENTION_DAYS,
        )
    return done


def vault_exists(arm: Arm, target: AzureTarget) -> bool:
    """Whether meadowrun's vault is there to read (before touching its data plane)."""
    path = installed.vault_path(target, settings.vault_name())
    return arm.get(path, installed.API_KEYVAULT) is not None
