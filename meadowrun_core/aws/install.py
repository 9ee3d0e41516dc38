"""Creating and finding everything meadowrun needs in an AWS account and region.

``install`` is idempotent: it creates what is missing and reports what it found, so running it
again after an upgrade only refreshes policies and the manager's code. Secrets are created once
and never overwritten (instances and clients already hold them). Everything carries
``names.TAGS`` and a fixed name, so ``uninstall.py`` needs no local record. The steps live
beside what they make: ``iam.py``, ``manager_deploy.py``, ``security_group.py``, ``account.py``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from botocore.exceptions import ClientError

from meadowrun_core.aws import names
from meadowrun_core.aws.account import (
    OBJECT_EXPIRY_DAYS,
    account_id,
    ensure_bucket,
    fetch_or_create_secret,
    new_cluster_key,
)
from meadowrun_core.aws.clients import aws_client, error_code, resolve_region
from meadowrun_core.aws.dynamodb_allocation_table import DynamoDbAllocationTable
from meadowrun_core.aws.iam import install_instance_role
from meadowrun_core.aws.manager_deploy import install_function, install_schedule
from meadowrun_core.aws.security_group import client_cidr, ensure_security_group
from meadowrun_core.remote.ssh import new_client_key_text

log = logging.getLogger(__name__)


# --- secrets -------------------------------------------------------------------------------
def _install_secrets(region: str) -> list[str]:
    sm = aws_client("secretsmanager", region)
    done = []
    wanted: list[tuple[str, Callable[[], str]]] = [
        (names.SECRET_SSH_KEY, new_client_key_text),
        (names.SECRET_CLUSTER_KEY, new_cluster_key),
    ]
    for name, make in wanted:
        _, created = fetch_or_create_secret(sm, name, make)
        done.append(f"{'created' if created else 'found'} secret {name}")
    return done


# --- DynamoDB and S3 -----------------------------------------------------------------------
def _install_table(region: str) -> str:
    dynamodb = aws_client("dynamodb", region)
    try:
        dynamodb.describe_table(TableName=names.TABLE_NAME)
        existed = True
    except ClientError as exc:
        if error_code(exc) != "ResourceNotFoundException":
            raise
        existed = False
    DynamoDbAllocationTable(dynamodb, names.TABLE_NAME).create()
    arn = dynamodb.describe_table(TableName=names.TABLE_NAME)["Table"]["TableArn"]
    dynamodb.tag_resource(ResourceArn=arn, Tags=names.TAGS)
    return f"{'found' if existed else 'created'} DynamoDB table {names.TABLE_NAME}"


def _install_bucket(region: str, expiry_days: int) -> str:
    bucket, created = ensure_bucket(region, expiry_days)
    return f"{'created' if created else 'found'} S3 bucket {bucket}"


# --- EC2 security group --------------------------------------------------------------------
def _install_security_group(region: str) -> str:
    group_id, created = ensure_security_group(region, client_cidr(None))
    return f"{'created' if created else 'found'} security group {names.SECURITY_GROUP} ({group_id})"


def install(
    region: str | None = None,
    object_expiry_days: int = OBJECT_EXPIRY_DAYS,
    sleep: Callable[[float], None] = time.sleep,
) -> list[str]:
    """Create what is missing; returns a line per resource, "created ..." or "found ..."."""
    region = resolve_region(region)
    account = account_id(region)
    done = [_install_table(region), _install_bucket(region, object_expiry_days)]
    done += _install_secrets(region)
    done.append(_install_security_group(region))
    done += install_instance_role(region, account)
    function_arn, function_done = install_function(region, account, sleep)
    done += function_done
    done.append(install_schedule(region, function_arn))
    for line in done:
        log.info("%s", line)
    return done
