"""Shared fixtures and helpers of the AWS admin tests (tests/test_aws_admin_*.py).

The fixture ``aws`` (``moto_account``) is a fresh moto account that every meadowrun client
points at; a test module that imports it overrides the EC2 twin's ``aws`` of tests/aws_twin.py
(these tests need no hosts). ``checkip`` (``checkip_server``) stands in for the public address
lookup. The helpers make and inspect moto
resources, and ``check_installed`` asserts what a complete install looks like (the install
tests and the CLI test both check it). One copy here rather than one per test module.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh
import boto3
import pytest
from botocore.exceptions import ClientError

from meadowrun_core.aws import iam as aws_iam
from meadowrun_core.aws import install as aws_install
from meadowrun_core.aws import manager_deploy as aws_manager_deploy
from meadowrun_core.aws import names
from meadowrun_core.aws.dynamodb_allocation_table import DynamoDbAllocationTable
from meadowrun_core.resources import Resources
from meadowrun_core.seams.instance_provider import InstanceType
from tests.moto_server import CheckIpServer, point_at_fresh_moto_account

REGION = "us-east-1"
FIXTURE = Path(__file__).parent / "fixtures" / "aws"
TAG = {"Key": names.TAG_KEY, "Value": names.TAG_VALUE}
ONE = Resources(logical_cpu=1, memory_gb=1)
SMALL = InstanceType("m5.large", 2, 8, 0.0359)


@pytest.fixture(scope="module", name="checkip")
def checkip_server() -> Iterator[str]:
    server = CheckIpServer()
    yield server.url
    server.close()


@pytest.fixture(name="aws")
def moto_account(
    moto_endpoint: str, checkip: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> str:
    """A fresh moto account; every meadowrun client points at it."""
    point_at_fresh_moto_account(moto_endpoint, monkeypatch, tmp_path / "home", REGION)
    monkeypatch.setenv("MEADOWRUN_CHECKIP_URL", checkip)
    return moto_endpoint


def aws_client(aws: str, service: str) -> Any:
    return boto3.client(
        service,
        region_name=REGION,
        endpoint_url=aws,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def error_code(call: Any, *args: Any, **kwargs: Any) -> str:
    """The error code ``call`` fails with ("" if it succeeds)."""
    try:
        call(*args, **kwargs)
    except ClientError as exc:
        return str(exc.response["Error"]["Code"])
    return ""


def make_table(aws: str) -> DynamoDbAllocationTable:
    table = DynamoDbAllocationTable(aws_client(aws, "dynamodb"), names.TABLE_NAME)
    table.create()
    return table


def launch_instance(aws: str, meadowrun_id: str | None, tagged: bool = True) -> str:
    """A moto EC2 instance (never connected to), tagged as meadowrun's or not."""
    tags = [TAG] if tagged else [{"Key": "owner", "Value": "someone-else"}]
    if meadowrun_id:
        tags.append({"Key": names.INSTANCE_ID_TAG, "Value": meadowrun_id})
    response = aws_client(aws, "ec2").run_instances(
        ImageId="ami-12345678",
        InstanceType="m5.large",
        MinCount=1,
        MaxCount=1,
        TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
    )
    return str(response["Instances"][0]["InstanceId"])


def instance_state(aws: str, ec2_id: str) -> str:
    reservations = aws_client(aws, "ec2").describe_instances(InstanceIds=[ec2_id])["Reservations"]
    return str(reservations[0]["Instances"][0]["State"]["Name"])


def make_queue(aws: str, name: str) -> str:
    return str(aws_client(aws, "sqs").create_queue(QueueName=name)["QueueUrl"])


def queue_names(aws: str) -> set[str]:
    urls = aws_client(aws, "sqs").list_queues().get("QueueUrls", [])
    return {url.rsplit("/", 1)[-1] for url in urls}


def has_tag(tags: Any) -> bool:
    if isinstance(tags, dict):
        return tags.get(names.TAG_KEY) == names.TAG_VALUE
    return TAG in tags


def check_installed(aws: str) -> dict[str, Any]:
    """Assert that every resource exists, is tagged and configured; some ids for comparing."""
    account = aws_client(aws, "sts").get_caller_identity()["Account"]
    dynamodb = aws_client(aws, "dynamodb")
    table = dynamodb.describe_table(TableName=names.TABLE_NAME)["Table"]
    assert has_tag(dynamodb.list_tags_of_resource(ResourceArn=table["TableArn"])["Tags"])

    s3 = aws_client(aws, "s3")
    bucket = names.bucket_name(account, REGION)
    assert has_tag(s3.get_bucket_tagging(Bucket=bucket)["TagSet"])
    block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    assert all(block.values()) and len(block) == 4
    (rule,) = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert rule["Filter"]["Prefix"] == names.OBJECT_PREFIX and rule["Status"] == "Enabled"
    assert rule["Expiration"]["Days"] == aws_install.OBJECT_EXPIRY_DAYS

    sm = aws_client(aws, "secretsmanager")
    secrets = {}
    for name in (names.SECRET_SSH_KEY, names.SECRET_CLUSTER_KEY):
        assert has_tag(sm.describe_secret(SecretId=name)["Tags"])
        secrets[name] = sm.get_secret_value(SecretId=name)["SecretString"]
    key = asyncssh.import_private_key(secrets[names.SECRET_SSH_KEY])
    assert key.get_algorithm() == "ssh-ed25519"
    assert len(bytes.fromhex(secrets[names.SECRET_CLUSTER_KEY])) == 32

    ec2 = aws_client(aws, "ec2")
    (vpc,) = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
    (group,) = ec2.describe_security_groups(
        Filters=[{"Name": "group-name", "Values": [names.SECURITY_GROUP]}]
    )["SecurityGroups"]
    assert group["VpcId"] == vpc["VpcId"] and has_tag(group["Tags"])
    # SSH from this client's own address only; members reach each other on every port
    permissions = sorted(group["IpPermissions"], key=lambda p: p["IpProtocol"])
    assert [(p["IpProtocol"], p.get("FromPort"), p.get("ToPort")) for p in permissions] == [
        ("-1", None, None),
        ("tcp", 22, 22),
    ]
    assert [r["CidrIp"] for r in permissions[1]["IpRanges"]] == ["127.0.0.1/32"]
    assert [g["GroupId"] for g in permissions[0]["UserIdGroupPairs"]] == [group["GroupId"]]

    iam = aws_client(aws, "iam")
    for role in (names.INSTANCE_ROLE, names.MANAGER_ROLE):
        assert has_tag(iam.list_role_tags(RoleName=role)["Tags"])
        (policy,) = iam.list_role_policies(RoleName=role)["PolicyNames"]
        assert iam.get_role_policy(RoleName=role, PolicyName=policy)["PolicyDocument"]
    for role, policy in (
        (names.INSTANCE_ROLE, aws_iam.instance_policy(REGION, account)),
        (names.MANAGER_ROLE, aws_iam.manager_policy(REGION, account)),
    ):
        document = iam.get_role_policy(RoleName=role, PolicyName=role)["PolicyDocument"]
        assert document == policy
    resources = json.dumps(aws_iam.instance_policy(REGION, account))
    for resource in (
        f"arn:aws:dynamodb:{REGION}:{account}:table/{names.TABLE_NAME}",
        f"arn:aws:sqs:{REGION}:{account}:{names.QUEUE_PREFIX}*",
        f"arn:aws:s3:::{bucket}/*",
        f"arn:aws:secretsmanager:{REGION}:{account}:secret:meadowrun/*",
        f"aws:ResourceTag/{names.TAG_KEY}",
    ):
        assert resource in resources
    profile = iam.get_instance_profile(InstanceProfileName=names.INSTANCE_PROFILE)
    assert [r["RoleName"] for r in profile["InstanceProfile"]["Roles"]] == [names.INSTANCE_ROLE]
    # (moto has no list_instance_profile_tags; get_instance_profile returns the tags too)
    assert has_tag(profile["InstanceProfile"]["Tags"])

    lam = aws_client(aws, "lambda")
    function = lam.get_function(FunctionName=names.MANAGER_FUNCTION)
    config = function["Configuration"]
    assert (config["Runtime"], config["Handler"]) == (
        "python3.12",
        aws_manager_deploy.MANAGER_HANDLER,
    )
    assert config["Role"].endswith(f"role/{names.MANAGER_ROLE}")
    assert has_tag(function["Tags"])
    statement = json.loads(lam.get_policy(FunctionName=names.MANAGER_FUNCTION)["Policy"])
    assert statement["Statement"][0]["Principal"] == {"Service": "events.amazonaws.com"}

    events = aws_client(aws, "events")
    rule_info = events.describe_rule(Name=names.MANAGER_RULE)
    assert (rule_info["ScheduleExpression"], rule_info["State"]) == ("rate(1 minute)", "ENABLED")
    assert has_tag(events.list_tags_for_resource(ResourceARN=rule_info["Arn"])["Tags"])
    (target,) = events.list_targets_by_rule(Rule=names.MANAGER_RULE)["Targets"]
    assert target["Arn"] == config["FunctionArn"]
    return {"secrets": secrets, "group": group["GroupId"], "code": config["CodeSha256"]}
