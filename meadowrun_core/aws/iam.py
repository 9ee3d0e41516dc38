"""The IAM side of an install: the instance role and profile (what instances may do, least
privilege: only ``meadowrun/*`` secrets, tagged instances) and the manager's role."""

from __future__ import annotations

import json
import logging
import urllib.parse
from typing import Any

from botocore.exceptions import ClientError

from meadowrun_core.aws import names
from meadowrun_core.aws.account import account_id
from meadowrun_core.aws.clients import aws_client, error_code

log = logging.getLogger(__name__)

ROLE_PROPAGATION_SECONDS = 60.0


def tag_dict() -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in names.TAGS}


def _trust(service: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}
            ],
        }
    )


def _arns(region: str, account: str) -> dict[str, str]:
    bucket = names.bucket_name(account, region)
    return {
        "table": f"arn:aws:dynamodb:{region}:{account}:table/{names.TABLE_NAME}",
        "queues": f"arn:aws:sqs:{region}:{account}:{names.QUEUE_PREFIX}*",
        "bucket": f"arn:aws:s3:::{bucket}",
        "objects": f"arn:aws:s3:::{bucket}/*",
        "secrets": f"arn:aws:secretsmanager:{region}:{account}:secret:meadowrun/*",
        "instances": f"arn:aws:ec2:{region}:{account}:instance/*",
        "logs": f"arn:aws:logs:{region}:{account}:*",
    }


_TABLE_ACTIONS = [
    "dynamodb:DescribeTable",
    "dynamodb:GetItem",
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "dynamodb:DeleteItem",
    "dynamodb:ConditionCheckItem",
    "dynamodb:Scan",
    "dynamodb:Query",
]


def _terminate_tagged(arns: dict[str, str]) -> dict[str, Any]:
    return {
        "Effect": "Allow",
        "Action": "ec2:TerminateInstances",
        "Resource": arns["instances"],
        "Condition": {"StringEquals": {f"aws:ResourceTag/{names.TAG_KEY}": names.TAG_VALUE}},
    }


def instance_policy(region: str, account: str) -> dict[str, Any]:
    """What an instance's agent does: its allocation rows, the task queues, the object
    store, the cluster's secrets, and terminating itself when idle."""
    arns = _arns(region, account)
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": _TABLE_ACTIONS, "Resource": arns["table"]},
            {
                "Effect": "Allow",
                "Action": [
                    "sqs:GetQueueUrl",
                    "sqs:GetQueueAttributes",
                    "sqs:SendMessage",
                    "sqs:ReceiveMessage",
                    "sqs:DeleteMessage",
                    "sqs:ChangeMessageVisibility",
                    "sqs:DeleteQueue",
                ],
                "Resource": arns["queues"],
            },
            {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": arns["bucket"]},
            {
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
                "Resource": arns["objects"],
            },
            {
                "Effect": "Allow",
                "Action": "secretsmanager:GetSecretValue",
                "Resource": arns["secrets"],
            },
            _terminate_tagged(arns),
        ],
    }


def manager_policy(region: str, account: str) -> dict[str, Any]:
    """What ``manager.manage_once`` does, plus writing its own logs."""
    arns = _arns(region, account)
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": "ec2:DescribeInstances", "Resource": "*"},
            _terminate_tagged(arns),
            {"Effect": "Allow", "Action": _TABLE_ACTIONS, "Resource": arns["table"]},
            {"Effect": "Allow", "Action": "sqs:ListQueues", "Resource": "*"},
            {
                "Effect": "Allow",
                "Action": ["sqs:GetQueueAttributes", "sqs:DeleteQueue"],
                "Resource": arns["queues"],
            },
            {
                "Effect": "Allow",
                "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
                "Resource": arns["logs"],
            },
        ],
    }


def ensure_role(iam: Any, name: str, service: str, policy: dict[str, Any]) -> tuple[str, bool]:
    """The role's ARN and whether it was created; its inline policy is always rewritten so an
    upgrade's permissions take effect."""
    try:
        arn = iam.create_role(
            RoleName=name,
            AssumeRolePolicyDocument=_trust(service),
            Description="created by meadowrun install",
            Tags=names.TAGS,
        )["Role"]["Arn"]
        created = True
    except ClientError as exc:
        if error_code(exc) != "EntityAlreadyExists":
            raise
        arn = iam.get_role(RoleName=name)["Role"]["Arn"]
        created = False
    iam.put_role_policy(RoleName=name, PolicyName=name, PolicyDocument=json.dumps(policy))
    return str(arn), created


def ensure_instance_profile(region: str, likely_missing: bool = False) -> str:
    """The instance profile whose role lets an agent use the table, bucket, queues and
    secrets; created on first use, so that a fresh account works without install, and its
    policy brought up to this version's when it differs (two reads when all is in place).
    ``likely_missing`` (an account set up just now) creates it without reading first."""
    account = account_id(region)
    policy = instance_policy(region, account)
    if likely_missing or not _instance_role_in_place(aws_client("iam", region), policy):
        install_instance_role(region, account)
    return names.INSTANCE_PROFILE


def _instance_role_in_place(iam: Any, policy: dict[str, Any]) -> bool:
    try:
        profile = iam.get_instance_profile(InstanceProfileName=names.INSTANCE_PROFILE)
        document = iam.get_role_policy(RoleName=names.INSTANCE_ROLE, PolicyName=names.INSTANCE_ROLE)
    except ClientError as exc:
        if error_code(exc) != "NoSuchEntity":
            raise
        return False
    stored = document["PolicyDocument"]
    if isinstance(stored, str):  # URL-encoded JSON on the wire; boto3 usually decodes it
        stored = json.loads(urllib.parse.unquote(stored))
    roles = profile["InstanceProfile"].get("Roles", [])
    return stored == policy and any(r["RoleName"] == names.INSTANCE_ROLE for r in roles)


def install_instance_role(region: str, account: str) -> list[str]:
    iam = aws_client("iam", region)
    _, created = ensure_role(
        iam, names.INSTANCE_ROLE, "ec2.amazonaws.com", instance_policy(region, account)
    )
    done = [f"{'created' if created else 'found'} IAM role {names.INSTANCE_ROLE}"]
    try:
        profile = iam.create_instance_profile(
            InstanceProfileName=names.INSTANCE_PROFILE, Tags=names.TAGS
        )["InstanceProfile"]
        done.append(f"created instance profile {names.INSTANCE_PROFILE}")
    except ClientError as exc:
        if error_code(exc) != "EntityAlreadyExists":
            raise
        profile = iam.get_instance_profile(InstanceProfileName=names.INSTANCE_PROFILE)[
            "InstanceProfile"
        ]
        done.append(f"found instance profile {names.INSTANCE_PROFILE}")
    if not any(r["RoleName"] == names.INSTANCE_ROLE for r in profile.get("Roles", [])):
        iam.add_role_to_instance_profile(
            InstanceProfileName=names.INSTANCE_PROFILE, RoleName=names.INSTANCE_ROLE
        )
    return done
