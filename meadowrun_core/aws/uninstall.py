"""Removing what meadowrun made in an AWS account: ``clean`` (instances and their rows) and
``uninstall`` (everything, found by fixed names and ``names.TAGS``; no local record needed)."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError

from meadowrun_core.aws import names
from meadowrun_core.aws.account import account_id, bucket_exists
from meadowrun_core.aws.clients import aws_client, error_code, resolve_region
from meadowrun_core.aws.dynamodb_allocation_table import DynamoDbAllocationTable
from meadowrun_core.aws.manager import (
    LIVE_STATES,
    delete_queue,
    meadowrun_id,
    meadowrun_queue_urls,
    queue_name,
    tagged_instances,
    terminate,
)
from meadowrun_core.aws.manager_deploy import SCHEDULE_TARGET_ID
from meadowrun_core.aws.security_group import find_security_group

log = logging.getLogger(__name__)


def _forget_instances(region: str, instance_ids: list[str], outcome: str) -> None:
    """Remove the instances' rows (and record their jobs' history), if the table exists."""
    table = DynamoDbAllocationTable(aws_client("dynamodb", region), names.TABLE_NAME)
    try:
        for instance_id in instance_ids:
            table.remove_instance(instance_id, outcome)
    except ClientError as exc:
        if error_code(exc) != "ResourceNotFoundException":
            raise


def clean(region: str | None = None) -> list[str]:
    """Terminate every pending or running instance meadowrun launched (by tag), forget them in
    the allocation table, and delete every meadowrun task queue."""
    region = resolve_region(region)
    ec2 = aws_client("ec2", region)
    instances = tagged_instances(ec2, LIVE_STATES)
    done = []
    if instances:
        terminate(ec2, sorted(instances))
        done += [
            f"terminated instance {ec2_id} (meadowrun {meadowrun_id(i)})"
            for ec2_id, i in sorted(instances.items())
        ]
    _forget_instances(region, [meadowrun_id(i) for i in instances.values()], "terminated by clean")
    sqs = aws_client("sqs", region)
    for url in meadowrun_queue_urls(sqs):
        if delete_queue(sqs, url):
            done.append(f"deleted queue {queue_name(url)}")
    for line in done:
        log.info("%s", line)
    return done


def _ignore(codes: tuple[str, ...], call: Callable[[], object]) -> bool:
    """Run ``call``; False when it failed with one of ``codes`` (already gone)."""
    try:
        call()
    except ClientError as exc:
        if error_code(exc) in codes:
            return False
        raise
    return True


def _remove_schedule(region: str) -> list[str]:
    """DeleteRule succeeds for a missing rule, so look first to report truthfully."""
    events = aws_client("events", region)
    gone = ("ResourceNotFoundException",)
    if not _ignore(gone, functools.partial(events.describe_rule, Name=names.MANAGER_RULE)):
        return []
    _ignore(
        gone,
        functools.partial(events.remove_targets, Rule=names.MANAGER_RULE, Ids=[SCHEDULE_TARGET_ID]),
    )
    events.delete_rule(Name=names.MANAGER_RULE)
    return [f"deleted schedule {names.MANAGER_RULE}"]


def _remove_function(region: str) -> list[str]:
    lam = aws_client("lambda", region)
    if _ignore(
        ("ResourceNotFoundException",),
        lambda: lam.delete_function(FunctionName=names.MANAGER_FUNCTION),
    ):
        return [f"deleted Lambda function {names.MANAGER_FUNCTION}"]
    return []


def _remove_function_logs(region: str) -> list[str]:
    """The log group Lambda made for the manager's output (not made by install, but ours)."""
    logs = aws_client("logs", region)
    group = f"/aws/lambda/{names.MANAGER_FUNCTION}"
    if _ignore(
        ("ResourceNotFoundException",), functools.partial(logs.delete_log_group, logGroupName=group)
    ):
        return [f"deleted log group {group}"]
    return []


def _remove_role(iam: Any, name: str) -> list[str]:
    try:
        for policy in iam.list_role_policies(RoleName=name)["PolicyNames"]:
            iam.delete_role_policy(RoleName=name, PolicyName=policy)
        for policy in iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"]:
            iam.detach_role_policy(RoleName=name, PolicyArn=policy["PolicyArn"])
        iam.delete_role(RoleName=name)
    except ClientError as exc:
        if error_code(exc) != "NoSuchEntity":
            raise
        return []
    return [f"deleted IAM role {name}"]


def _remove_instance_profile(iam: Any) -> list[str]:
    try:
        profile = iam.get_instance_profile(InstanceProfileName=names.INSTANCE_PROFILE)
        for role in profile["InstanceProfile"].get("Roles", []):
            iam.remove_role_from_instance_profile(
                InstanceProfileName=names.INSTANCE_PROFILE, RoleName=role["RoleName"]
            )
        iam.delete_instance_profile(InstanceProfileName=names.INSTANCE_PROFILE)
    except ClientError as exc:
        if error_code(exc) != "NoSuchEntity":
            raise
        return []
    return [f"deleted instance profile {names.INSTANCE_PROFILE}"]


def _remove_security_group(
    region: str, sleep: Callable[[float], None], attempts: int = 20
) -> list[str]:
    """Delete the group, retrying while instances that are shutting down still use it."""
    ec2 = aws_client("ec2", region)
    group_id = find_security_group(ec2)
    if group_id is None:
        return []
    for attempt in range(attempts):
        try:
            ec2.delete_security_group(GroupId=group_id)
            return [f"deleted security group {names.SECURITY_GROUP} ({group_id})"]
        except ClientError as exc:
            if error_code(exc) == "InvalidGroup.NotFound":
                return []
            if error_code(exc) != "DependencyViolation" or attempt == attempts - 1:
                raise
            sleep(5)
    return []


def _remove_secrets(region: str) -> list[str]:
    """Forced deletion reports success for a missing secret, so look first."""
    sm = aws_client("secretsmanager", region)
    done = []
    for name in (names.SECRET_SSH_KEY, names.SECRET_CLUSTER_KEY):
        if _ignore(
            ("ResourceNotFoundException",), functools.partial(sm.describe_secret, SecretId=name)
        ):
            sm.delete_secret(SecretId=name, ForceDeleteWithoutRecovery=True)
            done.append(f"deleted secret {name}")
    return done


def _empty_bucket(s3: Any, bucket: str) -> None:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})


def _remove_bucket(region: str, account: str) -> list[str]:
    s3 = aws_client("s3", region)
    bucket = names.bucket_name(account, region)
    if not bucket_exists(s3, bucket):
        return []
    _empty_bucket(s3, bucket)
    s3.delete_bucket(Bucket=bucket)
    return [f"deleted S3 bucket {bucket}"]


def _remove_table(region: str) -> list[str]:
    dynamodb = aws_client("dynamodb", region)
    if _ignore(
        ("ResourceNotFoundException",), lambda: dynamodb.delete_table(TableName=names.TABLE_NAME)
    ):
        return [f"deleted DynamoDB table {names.TABLE_NAME}"]
    return []


def _wait_terminated(region: str, sleep: Callable[[float], None], timeout: float = 300) -> None:
    """Instances hold the security group until they are fully terminated."""
    ec2 = aws_client("ec2", region)
    deadline = time.monotonic() + timeout
    while tagged_instances(ec2, ("shutting-down",)) and time.monotonic() < deadline:
        sleep(5)


def uninstall(region: str | None = None, sleep: Callable[[float], None] = time.sleep) -> list[str]:
    """Remove everything ``install`` created and every instance and queue meadowrun made;
    parts already gone are skipped. Secrets are deleted without a recovery window, so a later
    install starts clean."""
    region = resolve_region(region)
    account = account_id(region)
    done = _remove_schedule(region) + _remove_function(region) + _remove_function_logs(region)
    done += clean(region)
    _wait_terminated(region, sleep)
    iam = aws_client("iam", region)
    done += _remove_instance_profile(iam)
    done += _remove_role(iam, names.INSTANCE_ROLE) + _remove_role(iam, names.MANAGER_ROLE)
    done += _remove_security_group(region, sleep)
    done += _remove_secrets(region)
    done += _remove_bucket(region, account)
    done += _remove_table(region)
    for line in done:
        log.info("%s", line)
    return done
