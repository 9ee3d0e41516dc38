"""Installing and uninstalling meadowrun on AWS, and cleaning up its instances and queues,
against moto's server over real HTTP (reset before every test).

moto serves every API used here, including Lambda's create_function (the manager is never
invoked there: that needs docker); the manager's code is checked instead by importing it
from the very zip install uploads and running its handler against moto. What every installed
resource must look like is tests/aws_admin_support.py's ``check_installed``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from meadowrun_core.aws import install as aws_install
from meadowrun_core.aws import manager_deploy as aws_manager_deploy
from meadowrun_core.aws import names
from meadowrun_core.aws import uninstall as aws_uninstall
from meadowrun_core.aws.account import get_or_create_secret
from tests.aws_admin_support import (
    ONE,
    REGION,
    SMALL,
    TAG,
    aws_client,
    check_installed,
    error_code,
    instance_state,
    launch_instance,
    make_queue,
    make_table,
    queue_names,
)

# the fixtures aws and checkip: pytest finds them in this module
from tests.aws_admin_support import checkip_server as checkip_server
from tests.aws_admin_support import moto_account as moto_account


def test_install_creates_every_resource_tagged_and_is_idempotent(aws: str) -> None:
    first = aws_install.install()
    assert len(first) == 10 and all(line.startswith("created ") for line in first), first
    created = check_installed(aws)

    second = aws_install.install()
    assert len(second) == 10 and all(line.startswith("found ") for line in second), second
    assert check_installed(aws) == created  # same secrets, group and manager code
    assert len(aws_client(aws, "iam").list_roles()["Roles"]) == 2
    assert len(aws_client(aws, "secretsmanager").list_secrets()["SecretList"]) == 2


def test_install_keeps_secrets_that_exist_or_await_deletion(aws: str) -> None:
    aws_client(aws, "secretsmanager").create_secret(
        Name=names.SECRET_CLUSTER_KEY, SecretString="ab" * 32
    )
    sm = aws_client(aws, "secretsmanager")
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
    make_table(aws)
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


def test_uninstall_removes_everything_and_tolerates_parts_already_gone(aws: str) -> None:
    aws_install.install()
    account = aws_client(aws, "sts").get_caller_identity()["Account"]
    bucket = names.bucket_name(account, REGION)
    aws_client(aws, "s3").put_object(Bucket=bucket, Key=names.OBJECT_PREFIX + "abc", Body=b"x")
    ec2_id = launch_instance(aws, "mr-1")
    make_queue(aws, names.QUEUE_PREFIX + "mr-abc-requests")
    # what Lambda makes when the manager first runs
    aws_client(aws, "logs").create_log_group(logGroupName="/aws/lambda/meadowrun-manager")

    done = aws_uninstall.uninstall()
    assert f"terminated instance {ec2_id} (meadowrun mr-1)" in done
    assert f"deleted queue {names.QUEUE_PREFIX}mr-abc-requests" in done
    assert instance_state(aws, ec2_id) == "terminated" and not queue_names(aws)
    dynamodb, s3, sm = (aws_client(aws, s) for s in ("dynamodb", "s3", "secretsmanager"))
    ec2, iam, lam, events = (aws_client(aws, s) for s in ("ec2", "iam", "lambda", "events"))
    assert (
        error_code(dynamodb.describe_table, TableName=names.TABLE_NAME)
        == "ResourceNotFoundException"
    )
    assert error_code(s3.head_bucket, Bucket=bucket) == "404"
    for name in (names.SECRET_SSH_KEY, names.SECRET_CLUSTER_KEY):
        assert error_code(sm.describe_secret, SecretId=name) == "ResourceNotFoundException"
    groups = ec2.describe_security_groups(
        Filters=[{"Name": "group-name", "Values": [names.SECURITY_GROUP]}]
    )["SecurityGroups"]
    assert groups == []
    for role in (names.INSTANCE_ROLE, names.MANAGER_ROLE):
        assert error_code(iam.get_role, RoleName=role) == "NoSuchEntity"
    profile = names.INSTANCE_PROFILE
    assert error_code(iam.get_instance_profile, InstanceProfileName=profile) == "NoSuchEntity"
    function = names.MANAGER_FUNCTION
    assert error_code(lam.get_function, FunctionName=function) == "ResourceNotFoundException"
    assert error_code(events.describe_rule, Name=names.MANAGER_RULE) == "ResourceNotFoundException"
    assert "deleted log group /aws/lambda/meadowrun-manager" in done
    assert aws_client(aws, "logs").describe_log_groups()["logGroups"] == []

    assert aws_uninstall.uninstall() == []  # nothing left, nothing fails
    # a later install starts from scratch
    assert all(line.startswith("created ") for line in aws_install.install())


def test_uninstall_after_a_partial_install(aws: str) -> None:
    make_table(aws)
    aws_client(aws, "iam").create_role(
        RoleName=names.MANAGER_ROLE, AssumeRolePolicyDocument="{}", Tags=[TAG]
    )
    assert aws_uninstall.uninstall() == [
        f"deleted IAM role {names.MANAGER_ROLE}",
        f"deleted DynamoDB table {names.TABLE_NAME}",
    ]


def test_clean_terminates_tagged_instances_only(aws: str) -> None:
    table = make_table(aws)
    mine = [launch_instance(aws, "mr-a"), launch_instance(aws, "mr-b")]
    other = launch_instance(aws, None, tagged=False)
    assert table.allocate_on_new_instance("mr-a", SMALL, ["job-1"], ONE, "c1", "d", 100, 100)
    table.register_instance("mr-a", "10.0.0.1", 42)
    make_queue(aws, names.QUEUE_PREFIX + "mr-abc-results")
    make_queue(aws, "someone-elses-queue")

    done = aws_uninstall.clean()
    assert sorted(done) == sorted(
        [
            f"terminated instance {mine[0]} (meadowrun mr-a)",
            f"terminated instance {mine[1]} (meadowrun mr-b)",
            f"deleted queue {names.QUEUE_PREFIX}mr-abc-results",
        ]
    )
    assert [instance_state(aws, i) for i in mine] == ["terminated", "terminated"]
    assert instance_state(aws, other) == "running"
    assert table.list_instances() == []
    (history,) = table.job_history()
    assert (history["job_id"], history["outcome"]) == ("job-1", "terminated by clean")
    assert queue_names(aws) == {"someone-elses-queue"}
    assert aws_uninstall.clean() == []
