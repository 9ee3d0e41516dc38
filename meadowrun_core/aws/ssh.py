"""The AWS account's SSH client key, in Secrets Manager (the connections: ``remote.ssh``)."""

from __future__ import annotations

import asyncssh

from meadowrun_core.aws import names
from meadowrun_core.aws.account import get_or_create_secret
from meadowrun_core.remote.ssh import new_client_key_text


def client_key(region: str, create_first: bool = False) -> asyncssh.SSHKey:
    return asyncssh.import_private_key(
        get_or_create_secret(region, names.SECRET_SSH_KEY, new_client_key_text, create_first)
    )
