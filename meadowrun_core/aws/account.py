"""The AWS account's data plane that clients and agents share: allocation table, bucket,
queues and the two secrets. Created on first use, so a fresh account works without an
install step (``meadowrun install --cloud aws`` adds the scheduled manager on top)."""

from __future__ import annotations

import functools
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from meadowrun_core.aws import names
from meadowrun_core.aws.clients import aws_client, error_code
from meadowrun_core.aws.dynamodb_allocation_table import DynamoDbAllocationTable
from meadowrun_core.aws.s3_object_store import S3ObjectStore
from meadowrun_core.aws.sqs_task_queue import SqsTaskQueue
from meadowrun_core.exceptions import MeadowrunError

log = logging.getLogger(__name__)

# Cached code, arguments and results expire from the bucket after this many days.
OBJECT_EXPIRY_DAYS = 7
LIFECYCLE_RULE = "meadowrun-expire-objects"


@functools.cache
def account_id(region: str | None) -> str:
    identity: dict[str, Any] = aws_client("sts", region).get_caller_identity()
    return str(identity["Account"])


def fetch_or_create_secret(
    sm: Any, name: str, make: Callable[[], str], create_first: bool = False
) -> tuple[str, bool]:
    """The secret's value and whether this call created it. ``make`` runs only when the
    secret is missing; if another process creates it first, theirs wins. A secret scheduled
    for deletion is restored, keeping the value that clients and instances hold.
    ``create_first``: the account was empty a moment ago, so try creating before reading
    (one request instead of two; an existing secret falls back to reading it)."""
    if create_first:
        value = make()
        try:
            sm.create_secret(Name=name, SecretString=value, Tags=names.TAGS)
        except ClientError as exc:
            if error_code(exc) not in ("ResourceExistsException", "InvalidRequestException"):
                raise  # exists, or is scheduled for deletion: read or restore it below
        else:
            log.info("created secret %s", name)
            return value, True
    try:
        return str(sm.get_secret_value(SecretId=name)["SecretString"]), False
    except ClientError as exc:
        if error_code(exc) == "InvalidRequestException" and "DeletedDate" in sm.describe_secret(
            SecretId=name
        ):
            sm.restore_secret(SecretId=name)
            log.info("restored secret %s, which was scheduled for deletion", name)
            return str(sm.get_secret_value(SecretId=name)["SecretString"]), False
        if error_code(exc) != "ResourceNotFoundException":
            raise
    value = make()
    try:
        sm.create_secret(Name=name, SecretString=value, Tags=names.TAGS)
        log.info("created secret %s", name)
    except ClientError as exc:
        if error_code(exc) != "ResourceExistsException":
            raise
        return str(sm.get_secret_value(SecretId=name)["SecretString"]), False
    return value, True


def get_or_create_secret(
    region: str | None, name: str, make: Callable[[], str], create_first: bool = False
) -> str:
    """The secret's value, created with ``make`` on first use (never overwritten)."""
    sm = aws_client("secretsmanager", region)
    value, _ = fetch_or_create_secret(sm, name, make, create_first)
    return value


def new_cluster_key() -> str:
    return secrets.token_hex(32)


def cluster_key(region: str, create_first: bool = False) -> bytes:
    """The HMAC key that authenticates every frame and stored pickle of this account."""
    return bytes.fromhex(
        get_or_create_secret(region, names.SECRET_CLUSTER_KEY, new_cluster_key, create_first)
    )


def bucket_exists(s3: Any, bucket: str) -> bool:
    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError as exc:
        code = error_code(exc)
        if code in ("404", "NoSuchBucket", "NotFound"):
            return False
        if code in ("403", "Forbidden", "AccessDenied"):
            raise MeadowrunError(
                f"the S3 bucket {bucket} exists but this account cannot use it"
            ) from exc
        raise
    return True


def ensure_bucket(
    region: str,
    expiry_days: int = OBJECT_EXPIRY_DAYS,
    reconfigure: bool = True,
    likely_missing: bool = False,
) -> tuple[str, bool]:
    """meadowrun's bucket in ``region`` (private, tagged, cached objects expiring after
    ``expiry_days``) and whether this call created it. ``reconfigure=False`` (a client's
    first use) leaves an existing bucket's settings as install made them: three requests
    fewer on every client's start. ``likely_missing`` (an account set up just now) creates
    it without looking first; creating an existing bucket of ours is harmless."""
    s3 = aws_client("s3", region)
    bucket = names.bucket_name(account_id(region), region)
    existed = False if likely_missing else bucket_exists(s3, bucket)
    if existed and not reconfigure:
        return bucket, False
    if not existed:
        kwargs: dict[str, Any] = {"Bucket": bucket}
        if region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            s3.create_bucket(**kwargs)
        except ClientError as exc:
            if error_code(exc) != "BucketAlreadyOwnedByYou":
                raise
        log.info("created bucket %s", bucket)
    s3.put_public_access_block(
        Bucket=bucket,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True,
        },
    )
    s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": names.TAGS})
    s3.put_bucket_lifecycle_configuration(
        Bucket=bucket,
        LifecycleConfiguration={
            "Rules": [
                {
                    "ID": LIFECYCLE_RULE,
                    "Filter": {"Prefix": names.OBJECT_PREFIX},
                    "Status": "Enabled",
                    "Expiration": {"Days": expiry_days},
                }
            ]
        },
    )
    return bucket, not existed


@dataclass
class DataPlane:
    region: str
    table: DynamoDbAllocationTable
    queues: SqsTaskQueue
    store: S3ObjectStore
    bucket: str
    key: bytes
    # this call created the account's table: the rest is most likely missing too, so it is
    # created without looking first (a request fewer for each of bucket, secrets, group, role)
    fresh_account: bool = False


def open_data_plane(region: str, create: bool = True) -> DataPlane:
    """The table, queues, store and cluster key of ``region``; created if missing."""
    table = DynamoDbAllocationTable(aws_client("dynamodb", region), names.TABLE_NAME)
    fresh = table.create() if create else False
    if create:
        bucket, _ = ensure_bucket(region, reconfigure=False, likely_missing=fresh)
    else:
        bucket = names.bucket_name(account_id(region), region)
    return DataPlane(
        region=region,
        table=table,
        queues=SqsTaskQueue(aws_client("sqs", region), names.QUEUE_PREFIX),
        store=S3ObjectStore(aws_client("s3", region), bucket, names.OBJECT_PREFIX),
        bucket=bucket,
        key=cluster_key(region, create_first=fresh),
        fresh_account=fresh,
    )
