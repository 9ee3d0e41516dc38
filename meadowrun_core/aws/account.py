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
from meadowrun_core.aws.clients import aws_client
from meadowrun_core.aws.dynamodb_allocation_table import DynamoDbAllocationTable
from meadowrun_core.aws.s3_object_store import S3ObjectStore
from meadowrun_core.aws.sqs_task_queue import SqsTaskQueue

log = logging.getLogger(__name__)


def region_name(region: str | None) -> str:
    resolved: str = aws_client("sts", region).meta.region_name
    return resolved


@functools.cache
def account_id(region: str) -> str:
    identity: dict[str, Any] = aws_client("sts", region).get_caller_identity()
    return str(identity["Account"])


def get_or_create_secret(region: str, name: str, make: Callable[[], str]) -> str:
    """The secret's value; on first use, ``make`` one and store it (never overwritten)."""
    client = aws_client("secretsmanager", region)
    try:
        return str(client.get_secret_value(SecretId=name)["SecretString"])
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "ResourceNotFoundException":
            raise
    try:
        client.create_secret(Name=name, SecretString=make(), Tags=names.TAGS)
        log.info("created secret %s", name)
    except ClientError as exc:  # another client created it first: use theirs
        if exc.response["Error"]["Code"] != "ResourceExistsException":
            raise
    return str(client.get_secret_value(SecretId=name)["SecretString"])


def cluster_key(region: str) -> bytes:
    """The HMAC key that authenticates every frame and stored pickle of this account."""
    return bytes.fromhex(
        get_or_create_secret(region, names.SECRET_CLUSTER_KEY, lambda: secrets.token_hex(32))
    )


def ensure_bucket(region: str) -> str:
    bucket = names.bucket_name(account_id(region), region)
    s3 = aws_client("s3", region)
    try:
        s3.head_bucket(Bucket=bucket)
        return bucket
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in ("404", "NoSuchBucket", "NotFound"):
            raise
    kwargs: dict[str, Any] = {"Bucket": bucket}
    if region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        s3.create_bucket(**kwargs)
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "BucketAlreadyOwnedByYou":
            raise
    s3.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": names.TAGS})
    s3.put_public_access_block(
        Bucket=bucket,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True,
        },
    )
    log.info("created bucket %s", bucket)
    return bucket


@dataclass
class DataPlane:
    region: str
    table: DynamoDbAllocationTable
    queues: SqsTaskQueue
    store: S3ObjectStore
    bucket: str
    key: bytes


def open_data_plane(region: str, create: bool = True) -> DataPlane:
    """The table, queues, store and cluster key of ``region``; created if missing."""
    table = DynamoDbAllocationTable(aws_client("dynamodb", region), names.TABLE_NAME)
    if create:
        table.create()
    bucket = ensure_bucket(region) if create else names.bucket_name(account_id(region), region)
    return DataPlane(
        region=region,
        table=table,
        queues=SqsTaskQueue(aws_client("sqs", region), names.QUEUE_PREFIX),
        store=S3ObjectStore(aws_client("s3", region), bucket, names.OBJECT_PREFIX),
        bucket=bucket,
        key=cluster_key(region),
    )
