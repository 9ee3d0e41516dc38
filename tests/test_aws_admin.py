"""Installing, cleaning and uninstalling meadowrun on AWS, the scheduled manager and job
costs, against moto's server over real HTTP (reset before every test).

moto serves every API used here, including Lambda's create_function (the manager is never
invoked there: that needs docker); the manager's code is checked instead by importing it
from the very zip install uploads and running its handler against moto.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh
import boto3
import pytest
from botocore.exceptions import ClientError
from typer.testing import CliRunner

from meadowrun_core.aws import iam as aws_iam
from meadowrun_core.aws import install as aws_install
from meadowrun_core.aws import manager_deploy as aws_manager_deploy
from meadowrun_core.aws import names
from meadowrun_core.aws import uninstall as aws_uninstall
from meadowrun_core.aws.account import get_or_create_secret
from meadowrun_core.aws.costs import CostReport, costs_of_rows, job_costs
from meadowrun_core.aws.dynamodb_allocation_table import DynamoDbAllocationTable
from meadowrun_core.aws.manager import manage_once, queue_job_prefix
from meadowrun_core.aws.pricing import FixturePriceSource, PriceData
from meadowrun_core.cli import app
from meadowrun_core.local.allocation_table import SqliteAllocationTable
from meadowrun_core.resources import Resources
from meadowrun_core.seams.instance_provider import InstanceType
from tests.moto_server import CheckIpServer, point_at_fresh_moto_account

REGION = "us-east-1"
FIXTURE = Path(__file__).parent / "fixtures" / "aws"
TAG = {"Key": names.TAG_KEY, "Value": names.TAG_VALUE}
ONE = Resources(logical_cpu=1, memory_gb=1)
SMALL = InstanceType("m5.large", 2, 8, 0.0359)


@pytest.fixture(scope="module")
def checkip() -> Iterator[str]:
    server = CheckIpServer()
    yield server.url
    server.close()


@pytest.fixture
def aws(moto_endpoint: str, checkip: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """A fresh moto account; every meadowrun client points at it."""
    point_at_fresh_moto_account(moto_endpoint, monkeypatch, tmp_path / "home", REGION)
    monkeypatch.setenv("MEADOWRUN_CHECKIP_URL", checkip)
    return moto_endpoint


def _client(aws: str, service: str) -> Any:
    return boto3.client(
        service,
        region_name=REGION,
        endpoint_url=aws,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def _code(call: Any, *args: Any, **kwargs: Any) -> str:
    """The error code ``call`` fails with ("" if it succeeds)."""
    try:
        call(*args, **kwargs)
    except ClientError as exc:
        return str(exc.response["Error"]["Code"])
    return ""


def _table(aws: str) -> DynamoDbAllocationTable:
    table = DynamoDbAllocationTable(_client(aws, "dynamodb"), names.TABLE_NAME)
    table.create()
    return table


def _launch(aws: str, meadowrun_id: str | None, tagged: bool = True) -> str:
    """A moto EC2 instance (never connected to), tagged as meadowrun's or not."""
    tags = [TAG] if tagged else [{"Key": "owner", "Value": "someone-else"}]
    if meadowrun_id:
        tags.append({"Key": names.INSTANCE_ID_TAG, "Value": meadowrun_id})
    response = _client(aws, "ec2").run_instances(
        ImageId="ami-12345678",
        InstanceType="m5.large",
        MinCount=1,
        MaxCount=1,
        TagSpecifications=[{"ResourceType": "instance", "Tags": tags}],
    )
    return str(response["Instances"][0]["InstanceId"])


def _state(aws: str, ec2_id: str) -> str:
    reservations = _client(aws, "ec2").describe_instances(InstanceIds=[ec2_id])["Reservations"]
    return str(reservations[0]["Instances"][0]["State"]["Name"])


def _queue(aws: str, name: str) -> str:
    return str(_client(aws, "sqs").create_queue(QueueName=name)["QueueUrl"])


def _queue_names(aws: str) -> set[str]:
    urls = _client(aws, "sqs").list_queues().get("QueueUrls", [])
    return {url.rsplit("/", 1)[-1] for url in urls}


def _set(table_client: Any, meadowrun_id: str, field: str, value: float) -> None:
    table_client.update_item(
        TableName=names.TABLE_NAME,
        Key={"pk": {"S": f"instance#{meadowrun_id}"}},
        UpdateExpression="SET #f = :v",
        ExpressionAttributeNames={"#f": field},
        ExpressionAttributeValues={":v": {"N": repr(value)}},
    )


def _has_tag(tags: Any) -> bool:
    if isinstance(tags, dict):
        return tags.get(names.TAG_KEY) == names.TAG_VALUE
    return TAG in tags


# --- install -------------------------------------------------------------------------------
def _check_installed(aws: str) -> dict[str, Any]:
    """Assert that every resource exists, is tagged and configured; some ids for comparing."""
    account = _client(aws, "sts").get_caller_identity()["Account"]
    dynamodb = _client(aws, "dynamodb")
    table = dynamodb.describe_table(TableName=names.TABLE_NAME)["Table"]
    assert _has_tag(dynamodb.list_tags_of_resource(ResourceArn=table["TableArn"])["Tags"])

    s3 = _client(aws, "s3")
    bucket = names.bucket_name(account, REGION)
    assert _has_tag(s3.get_bucket_tagging(Bucket=bucket)["TagSet"])
    block = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    assert all(block.values()) and len(block) == 4
    (rule,) = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert rule["Filter"]["Prefix"] == names.OBJECT_PREFIX and rule["Status"] == "Enabled"
    assert rule["Expiration"]["Days"] == aws_install.OBJECT_EXPIRY_DAYS

    sm = _client(aws, "secretsmanager")
    secrets = {}
    for name in (names.SECRET_SSH_KEY, names.SECRET_CLUSTER_KEY):
        assert _has_tag(sm.describe_secret(SecretId=name)["Tags"])
        secrets[name] = sm.get_secret_value(SecretId=name)["SecretString"]
    key = asyncssh.import_private_key(secrets[names.SECRET_SSH_KEY])
    assert key.get_algorithm() == "ssh-ed25519"
    assert len(bytes.fromhex(secrets[names.SECRET_CLUSTER_KEY])) == 32

    ec2 = _client(aws, "ec2")
    (vpc,) = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
    (group,) = ec2.describe_security_groups(
        Filters=[{"Name": "group-name", "Values": [names.SECURITY_GROUP]}]
    )["SecurityGroups"]
    assert group["VpcId"] == vpc["VpcId"] and _has_tag(group["Tags"])
    # SSH from this client's own address only; members reach each other on every port
    permissions = sorted(group["IpPermissions"], key=lambda p: p["IpProtocol"])
    assert [(p["IpProtocol"], p.get("FromPort"), p.get("ToPort")) for p in permissions] == [
        ("-1", None, None),
        ("tcp", 22, 22),
    ]
    assert [r["CidrIp"] for r in permissions[1]["IpRanges"]] == ["127.0.0.1/32"]
    assert [g["GroupId"] for g in permissions[0]["UserIdGroupPairs"]] == [group["GroupId"]]

    iam = _client(aws, "iam")
    for role in (names.INSTANCE_ROLE, names.MANAGER_ROLE):
        assert _has_tag(iam.list_role_tags(RoleName=role)["Tags"])
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
    assert _has_tag(profile["InstanceProfile"]["Tags"])

    lam = _client(aws, "lambda")
    function = lam.get_function(FunctionName=names.MANAGER_FUNCTION)
    config = function["Configuration"]
    assert (config["Runtime"], config["Handler"]) == (
        "python3.12",
        aws_manager_deploy.MANAGER_HANDLER,
    )
    assert config["Role"].endswith(f"role/{names.MANAGER_ROLE}")
    assert _has_tag(function["Tags"])
    statement = json.loads(lam.get_policy(FunctionName=names.MANAGER_FUNCTION)["Policy"])
    assert statement["Statement"][0]["Principal"] == {"Service": "events.amazonaws.com"}

    events = _client(aws, "events")
    rule_info = events.describe_rule(Name=names.MANAGER_RULE)
    assert (rule_info["ScheduleExpression"], rule_info["State"]) == ("rate(1 minute)", "ENABLED")
    assert _has_tag(events.list_tags_for_resource(ResourceARN=rule_info["Arn"])["Tags"])
    (target,) = events.list_targets_by_rule(Rule=names.MANAGER_RULE)["Targets"]
    assert target["Arn"] == config["FunctionArn"]
    return {"secrets": secrets, "group": group["GroupId"], "code": config["CodeSha256"]}


def test_install_creates_every_resource_tagged_and_is_idempotent(aws: str) -> None:
    first = aws_install.install()
    assert len(first) == 10 and all(line.startswith("created ") for line in first), first
    created = _check_installed(aws)

    second = aws_install.install()
    assert len(second) == 10 and all(line.startswith("found ") for line in second), second
    assert _check_installed(aws) == created  # same secrets, group and manager code
    assert len(_client(aws, "iam").list_roles()["Roles"]) == 2
    assert len(_client(aws, "secretsmanager").list_secrets()["SecretList"]) == 2


def test_install_keeps_secrets_that_exist_or_await_deletion(aws: str) -> None:
    _client(aws, "secretsmanager").create_secret(
        Name=names.SECRET_CLUSTER_KEY, SecretString="ab" * 32
    )
    sm = _client(aws, "secretsmanager")
    sm.create_secret(Name=names.SECRET_SSH_KEY, SecretString="old key")
    sm.delete_secret(SecretId=names.SECRET_SSH_KEY, RecoveryWindowInDays=7)  # not gone yet
    done = aws_install.install()
    assert f"found secret {names.SECRET_CLUSTER_KEY}" in done
    assert f"found secret {names.SECRET_SSH_KEY}" in done  # restored, not replaced
    assert sm.get_secret_value(SecretId=names.SECRET_SSH_KEY)["SecretString"] == "old key"
    assert get_or_create_secret(None, names.SECRET_CLUSTER_KEY, lambda: "never") == "ab" * 32
    made = get_or_create_secret(None, "meadowrun/other", lambda: "fresh")
    assert made == "fresh" and get_or_create_secret(None, "meadowrun/other", lambda: "x") == made


def test_the_manager_zip_imports_and_runs_on_its_own(aws: str, tmp_path: Path) -> None:
    """What Lambda would run: only the zip's modules (their package __init__s stubbed)."""
    code = aws_manager_deploy.manager_zip()
    assert code == aws_manager_deploy.manager_zip()  # deterministic: reinstall sees no change
    archive = tmp_path / "manager.zip"
    archive.write_bytes(code)
    members = set(zipfile.ZipFile(archive).namelist())
    assert {
        "meadowrun_core/__init__.py",
        "meadowrun_core/aws/manager.py",
        "meadowrun_core/aws/names.py",
        "meadowrun_core/aws/dynamodb_allocation_table.py",
    } <= members
    assert "meadowrun_core/api.py" not in members and "meadowrun_core/aws/pricing.py" not in members
    _table(aws)
    script = (
        "import json, sys\n"
        "import meadowrun_core.aws.manager as m\n"
        "assert m.__file__.startswith(sys.argv[1]), m.__file__\n"
        "print(json.dumps(m.lambda_handler({}, None)))\n"
        "print(json.dumps(sorted(k for k in sys.modules if k.startswith('meadowrun_core'))))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(archive)}
    result = subprocess.run(
        [sys.executable, "-c", script, str(archive)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    handled, modules = (json.loads(line) for line in result.stdout.splitlines()[-2:])
    assert handled == {"actions": []}
    assert "meadowrun_core.api" not in modules and "meadowrun_core.client" not in modules


# --- uninstall and clean -------------------------------------------------------------------
def test_uninstall_removes_everything_and_tolerates_parts_already_gone(aws: str) -> None:
    aws_install.install()
    account = _client(aws, "sts").get_caller_identity()["Account"]
    bucket = names.bucket_name(account, REGION)
    _client(aws, "s3").put_object(Bucket=bucket, Key=names.OBJECT_PREFIX + "abc", Body=b"x")
    ec2_id = _launch(aws, "mr-1")
    _queue(aws, names.QUEUE_PREFIX + "mr-abc-requests")
    # what Lambda makes when the manager first runs
    _client(aws, "logs").create_log_group(logGroupName="/aws/lambda/meadowrun-manager")

    done = aws_uninstall.uninstall()
    assert f"terminated instance {ec2_id} (meadowrun mr-1)" in done
    assert f"deleted queue {names.QUEUE_PREFIX}mr-abc-requests" in done
    assert _state(aws, ec2_id) == "terminated" and not _queue_names(aws)
    dynamodb, s3, sm = (_client(aws, s) for s in ("dynamodb", "s3", "secretsmanager"))
    ec2, iam, lam, events = (_client(aws, s) for s in ("ec2", "iam", "lambda", "events"))
    assert _code(dynamodb.describe_table, TableName=names.TABLE_NAME) == "ResourceNotFoundException"
    assert _code(s3.head_bucket, Bucket=bucket) == "404"
    for name in (names.SECRET_SSH_KEY, names.SECRET_CLUSTER_KEY):
        assert _code(sm.describe_secret, SecretId=name) == "ResourceNotFoundException"
    groups = ec2.describe_security_groups(
        Filters=[{"Name": "group-name", "Values": [names.SECURITY_GROUP]}]
    )["SecurityGroups"]
    assert groups == []
    for role in (names.INSTANCE_ROLE, names.MANAGER_ROLE):
        assert _code(iam.get_role, RoleName=role) == "NoSuchEntity"
    profile = names.INSTANCE_PROFILE
    assert _code(iam.get_instance_profile, InstanceProfileName=profile) == "NoSuchEntity"
    function = names.MANAGER_FUNCTION
    assert _code(lam.get_function, FunctionName=function) == "ResourceNotFoundException"
    assert _code(events.describe_rule, Name=names.MANAGER_RULE) == "ResourceNotFoundException"
    assert "deleted log group /aws/lambda/meadowrun-manager" in done
    assert _client(aws, "logs").describe_log_groups()["logGroups"] == []

    assert aws_uninstall.uninstall() == []  # nothing left, nothing fails
    # a later install starts from scratch
    assert all(line.startswith("created ") for line in aws_install.install())


def test_uninstall_after_a_partial_install(aws: str) -> None:
    _table(aws)
    _client(aws, "iam").create_role(
        RoleName=names.MANAGER_ROLE, AssumeRolePolicyDocument="{}", Tags=[TAG]
    )
    assert aws_uninstall.uninstall() == [
        f"deleted IAM role {names.MANAGER_ROLE}",
        f"deleted DynamoDB table {names.TABLE_NAME}",
    ]


def test_clean_terminates_tagged_instances_only(aws: str) -> None:
    table = _table(aws)
    mine = [_launch(aws, "mr-a"), _launch(aws, "mr-b")]
    other = _launch(aws, None, tagged=False)
    assert table.allocate_on_new_instance("mr-a", SMALL, ["job-1"], ONE, "c1", "d", 100, 100)
    table.register_instance("mr-a", "10.0.0.1", 42)
    _queue(aws, names.QUEUE_PREFIX + "mr-abc-results")
    _queue(aws, "someone-elses-queue")

    done = aws_uninstall.clean()
    assert sorted(done) == sorted(
        [
            f"terminated instance {mine[0]} (meadowrun mr-a)",
            f"terminated instance {mine[1]} (meadowrun mr-b)",
            f"deleted queue {names.QUEUE_PREFIX}mr-abc-results",
        ]
    )
    assert [_state(aws, i) for i in mine] == ["terminated", "terminated"]
    assert _state(aws, other) == "running"
    assert table.list_instances() == []
    (history,) = table.job_history()
    assert (history["job_id"], history["outcome"]) == ("job-1", "terminated by clean")
    assert _queue_names(aws) == {"someone-elses-queue"}
    assert aws_uninstall.clean() == []


# --- the manager ---------------------------------------------------------------------------
def test_queue_job_prefix() -> None:
    assert queue_job_prefix("meadowrun-mr-0123abcd-requests") == "map-0123abcd-"
    assert queue_job_prefix("meadowrun-mr-0123abcd-results") == "map-0123abcd-"
    assert queue_job_prefix("meadowrun-something") == "something"


def test_manage_once_terminates_lost_instances_and_forgets_gone_ones(aws: str) -> None:
    table = _table(aws)
    db = _client(aws, "dynamodb")
    never = _launch(aws, "mr-never")  # launched, never registered
    stale = _launch(aws, "mr-stale")
    healthy = _launch(aws, "mr-healthy")
    gone = _launch(aws, "mr-gone")
    untagged = _launch(aws, None, tagged=False)
    for meadowrun_id, job in (("mr-stale", "job-s"), ("mr-healthy", "job-h"), ("mr-gone", "")):
        jobs = [job] if job else []
        assert table.allocate_on_new_instance(meadowrun_id, SMALL, jobs, ONE, "c", "d", 99, 99)
        table.register_instance(meadowrun_id, "10.0.0.2", 7)
    _client(aws, "ec2").terminate_instances(InstanceIds=[gone])
    # rows of reservations whose instance EC2 does not list: one old, one just made
    for meadowrun_id in ("mr-orphan", "mr-reserving"):
        assert table.allocate_on_new_instance(meadowrun_id, SMALL, [], ONE, "c", "d", 99, 99)
    now = time.time() + 100
    _set(db, "mr-stale", "last_heartbeat", now - 1000)
    _set(db, "mr-reserving", "created", now - 10)

    done = manage_once(now=now, launch_grace_seconds=60, heartbeat_timeout_seconds=300)
    assert len(done) == 4, done
    assert any(line.startswith(f"terminated {never} (meadowrun mr-never): never") for line in done)
    assert any(
        line.startswith(f"terminated {stale} (meadowrun mr-stale): no heart") for line in done
    )
    assert "removed table row of terminated instance mr-gone" in done
    assert "removed table row of unknown instance mr-orphan" in done
    states = {i: _state(aws, i) for i in (never, stale, healthy, gone, untagged)}
    assert states == {
        never: "terminated",
        stale: "terminated",
        healthy: "running",
        gone: "terminated",
        untagged: "running",
    }
    assert sorted(r.instance_id for r in table.list_instances()) == ["mr-healthy", "mr-reserving"]
    (history,) = table.job_history()
    assert history["job_id"] == "job-s"
    assert history["outcome"].startswith("terminated by the manager: no heartbeat")
    # a second pass finds nothing more to do
    assert manage_once(now=now, launch_grace_seconds=60, heartbeat_timeout_seconds=300) == []


def test_manage_once_deletes_old_queues_no_job_uses(aws: str) -> None:
    table = _table(aws)
    old_free = _queue(aws, names.QUEUE_PREFIX + "mr-0ld-requests")
    old_busy = _queue(aws, names.QUEUE_PREFIX + "mr-busy-results")
    _queue(aws, "someone-elses-old-queue")
    healthy = _launch(aws, "mr-1")
    assert table.allocate_on_new_instance("mr-1", SMALL, ["map-busy-w1"], ONE, "c", "d", 9, 9)
    table.register_instance("mr-1", "10.0.0.3", 7)
    time.sleep(1.1)  # CreatedTimestamp has whole seconds
    young = _queue(aws, names.QUEUE_PREFIX + "mr-y0ung-requests")
    sqs = _client(aws, "sqs")

    def created(url: str) -> float:
        attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["CreatedTimestamp"])
        return float(attrs["Attributes"]["CreatedTimestamp"])

    assert created(old_free) < created(young) and created(old_busy) < created(young)
    now = time.time() + 50
    done = manage_once(now=now, queue_max_age_seconds=now - created(young) + 0.5)
    assert len(done) == 1 and done[0].startswith(f"deleted queue {names.QUEUE_PREFIX}mr-0ld-req")
    assert _queue_names(aws) == {
        names.QUEUE_PREFIX + "mr-busy-results",
        names.QUEUE_PREFIX + "mr-y0ung-requests",
        "someone-elses-old-queue",
    }
    assert _state(aws, healthy) == "running"


# --- costs ---------------------------------------------------------------------------------
def _row(instance_type: str, cpu: float, instance_cpu: float, seconds: float, price: float) -> Any:
    return {
        "instance_type": instance_type,
        "cpu": cpu,
        "instance_cpu": instance_cpu,
        "started": 1000.0,
        "ended": 1000.0 + seconds,
        "price_per_hour": price,
    }


class _History:
    def __init__(self, rows: list[Any]) -> None:
        self.rows = rows
        self.limits: list[int] = []

    def job_history(self, limit: int = 100) -> list[Any]:
        self.limits.append(limit)
        return self.rows[:limit]


def test_job_costs_exact_figures() -> None:
    prices = FixturePriceSource(FIXTURE).prices(REGION)
    assert (prices.on_demand["m5.large"], prices.on_demand["t3.large"]) == (0.096, 0.0832)
    history = _History(
        [
            _row("m5.large", 1, 2, 3600, 0.0359),  # spot, half the instance for an hour
            _row("t3.large", 2, 2, 1800, 0.0832),  # on-demand, the whole instance
            _row("local.small", 1, 1, 360, 0.1),  # a type with no on-demand price
        ]
    )
    report = job_costs(history, prices)
    assert history.limits == [10000]
    assert report.jobs == 3
    assert report.job_seconds == pytest.approx(5760)
    assert report.instance_seconds == pytest.approx(1800 + 1800 + 360)
    assert report.cost == pytest.approx(0.0359 / 2 + 0.0832 / 2 + 0.01)
    assert report.on_demand_cost == pytest.approx(0.096 / 2 + 0.0832 / 2 + 0.01)
    assert report.unpriced_types == ("local.small",)
    assert report.savings == pytest.approx(1 - 0.06955 / 0.0996)
    without_prices = job_costs(history, limit=1)
    assert without_prices == CostReport(1, 3600, 1800, 0.0359 / 2, None)
    assert without_prices.savings is None
    assert costs_of_rows([], {}) == CostReport(0, 0, 0, 0, 0)


def test_job_costs_reads_both_tables(aws: str, tmp_path: Path) -> None:
    """Rows as DynamoDB (dicts) and SQLite (``sqlite3.Row``) give them."""
    prices = PriceData(REGION, on_demand={"m5.large": 0.096})
    for table in (_table(aws), SqliteAllocationTable(tmp_path / "state.db")):
        assert table.allocate_on_new_instance("i-1", SMALL, ["j-1"], ONE, "c", "d", 9, 9)
        assert table.deallocate("j-1", "succeeded")
        report = job_costs(table, prices)
        assert report.jobs == 1 and report.unpriced_types == ()
        held = report.job_seconds / 2  # 1 of 2 CPUs
        assert report.instance_seconds == pytest.approx(held)
        assert report.cost == pytest.approx(held / 3600 * 0.0359)
        assert report.on_demand_cost == pytest.approx(held / 3600 * 0.096)


# --- the CLI -------------------------------------------------------------------------------
def test_cli_install_instances_costs_clean_uninstall(
    aws: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEADOWRUN_AWS_PRICE_FIXTURE", str(FIXTURE))
    runner = CliRunner()
    result = runner.invoke(app, ["install", "--cloud", "aws", "--region", REGION])
    assert result.exit_code == 0, result.output
    assert f"created DynamoDB table {names.TABLE_NAME}" in result.output
    _check_installed(aws)

    table = DynamoDbAllocationTable(_client(aws, "dynamodb"), names.TABLE_NAME)
    assert table.allocate_on_new_instance("mr-cli", SMALL, ["j-1"], ONE, "c", "d", 9, 9)
    table.register_instance("mr-cli", "10.0.0.4", 7)
    result = runner.invoke(app, ["instances", "--cloud", "aws"])
    assert result.exit_code == 0, result.output
    assert "mr-cli" in result.output and "alive" in result.output

    assert table.deallocate("j-1", "succeeded")
    result = runner.invoke(app, ["costs", "--cloud", "aws"])
    assert result.exit_code == 0, result.output
    assert re.search(r"^\s*jobs\s+1\s*$", result.output, re.M), result.output
    assert "on-demand cost of the same" in result.output

    _launch(aws, "mr-cli")
    result = runner.invoke(app, ["clean", "--cloud", "aws"])
    assert result.exit_code == 0 and "terminated instance" in result.output, result.output

    result = runner.invoke(app, ["uninstall", "--cloud", "aws"])
    assert result.exit_code == 0, result.output
    assert f"deleted DynamoDB table {names.TABLE_NAME}" in result.output
    dynamodb = _client(aws, "dynamodb")
    assert _code(dynamodb.describe_table, TableName=names.TABLE_NAME) == "ResourceNotFoundException"
    result = runner.invoke(app, ["uninstall", "--cloud", "aws"])
    assert result.exit_code == 0 and result.output.strip() == "nothing to remove"


def test_cli_reports_aws_errors_and_missing_azure_settings(
    aws: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["instances", "--cloud", "aws"])  # not installed: no table
    assert result.exit_code == 1 and "error:" in result.output
    monkeypatch.delenv("AZURE_SUBSCRIPTION_ID", raising=False)
    result = runner.invoke(app, ["install", "--cloud", "azure"])
    assert result.exit_code == 1 and "needs a subscription" in result.stderr
