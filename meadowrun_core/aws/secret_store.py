"""Named user secrets in AWS Secrets Manager, under ``meadowrun/user/`` (tagged).

The instance role may read only ``meadowrun/*`` secrets, so an instance reads the secrets its
deployments name (``meadowrun secret set NAME --cloud aws``) and nothing else of the account.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from meadowrun_core.aws import names
from meadowrun_core.aws.clients import aws_client, error_code
from meadowrun_core.seams.secret_store import SecretNotFoundError

PREFIX = "meadowrun/user/"


class SecretsManagerStore:
    def __init__(self, region: str, client: Any | None = None) -> None:
        self.region = region
        self._sm = client or aws_client("secretsmanager", region)

    def get(self, name: str) -> str:
        try:
            value = self._sm.get_secret_value(SecretId=PREFIX + name)["SecretString"]
        except ClientError as exc:
            if error_code(exc) != "ResourceNotFoundException":
                raise
            raise SecretNotFoundError(
                f"no secret {name!r} in Secrets Manager ({self.region}); store it with "
                f"`meadowrun secret set {name} --cloud aws`"
            ) from None
        return str(value)

    def put(self, name: str, value: str) -> None:
        try:
            self._sm.create_secret(Name=PREFIX + name, SecretString=value, Tags=names.TAGS)
        except ClientError as exc:
            if error_code(exc) != "ResourceExistsException":
                raise
            self._sm.put_secret_value(SecretId=PREFIX + name, SecretString=value)

    def delete(self, name: str) -> bool:
        try:
            self._sm.delete_secret(SecretId=PREFIX + name, ForceDeleteWithoutRecovery=True)
        except ClientError as exc:
            if error_code(exc) != "ResourceNotFoundException":
                raise
            return False
        return True

    def names(self) -> list[str]:
        found = []
        paginator = self._sm.get_paginator("list_secrets")
        for page in paginator.paginate(Filters=[{"Key": "name", "Values": [PREFIX]}]):
            found += [s["Name"].removeprefix(PREFIX) for s in page["SecretList"]]
        return sorted(found)
