"""The agent bundle in Blob storage: uploaded once per version (its name is its content), and
fetched by the VM's bootstrap with a plain HTTPS GET of a read-only SAS URL that expires soon
after the launch (a stock image has no Azure SDK)."""

from __future__ import annotations

import contextlib
import datetime
import logging
from typing import Any

from azure.core.exceptions import ResourceExistsError

from meadowrun_core.bootstrap.bundle import AgentBundle

log = logging.getLogger(__name__)

URL_SECONDS = 3600


def upload_agent_bundle(container: Any, bundle: AgentBundle) -> None:
    """Upload ``bundle`` unless the container has it."""
    blob = container.get_blob_client(bundle.key)
    if blob.exists():
        return
    size = bundle.path.stat().st_size
    log.info("uploading meadowrun's agent (%.1f MB) to blob %s", size / 1e6, bundle.key)
    # another client may upload the same bytes meanwhile
    with open(bundle.path, "rb") as body, contextlib.suppress(ResourceExistsError):
        blob.upload_blob(body, overwrite=False, metadata={"meadowrun": "true"})


def bundle_url(
    blob_url: str,
    account_name: str,
    account_key: str,
    container: str,
    bundle: AgentBundle,
    seconds: int = URL_SECONDS,
) -> str:
    """A URL that GETs the bundle for ``seconds`` (a service SAS signed with the key)."""
    from azure.storage.blob import BlobSasPermissions, generate_blob_sas

    now = datetime.datetime.now(datetime.UTC)
    sas = generate_blob_sas(
        account_name=account_name,
        container_name=container,
        blob_name=bundle.key,
        account_key=account_key,
        permission=BlobSasPermissions(read=True),
        start=now - datetime.timedelta(minutes=5),  # clock skew
        expiry=now + datetime.timedelta(seconds=seconds),
    )
    return f"{blob_url}/{container}/{bundle.key}?{sas}"
