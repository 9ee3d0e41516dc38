"""Creating, finding and removing everything meadowrun needs in an AWS account and region.

``install`` is idempotent: it creates what is missing and reports what it found, so running it
again after an upgrade only refreshes policies and the manager's code. Secrets are created once
and never overwritten (instances and clients already hold them). Everything carries
``names.TAGS`` and a fixed name, so ``uninstall`` and ``clean`` need no local record.
"""

from __future__ import annotations

import ast
import base64
import functools
import hashlib
import io
import json
import logging
import time
import urllib.parse
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from meadowrun_core.aws import names
from meadowrun_core.aws.account import (
    OBJECT_EXPIRY_DAYS,
    account_id,
    bucket_exists,
    ensure_bucket,
    fetch_or_create_secret,
    get_or_create_secret,
    new_cluster_key,
)
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
from meadowrun_core.aws.security_group import (
    client_cidr,
    ensure_security_group,
    find_security_group,
)
from meadowrun_core.aws.ssh import new_client_key_text

log = logging.getLogger(__name__)

MANAGER_HANDLER = "meadowrun_core.aws.manager.lambda_handler"
MANAGER_RUNTIME = "python3.12"
MANAGER_MODULE = "meadowrun_core.aws.manager"
_TARGET_ID = "meadowrun-manager"
_PERMISSION_ID = "meadowrun-manager-schedule"
_PACKAGE_ROOT = Path(__file__).resolve().parent.parent.parent  # holds meadowrun_core/
# A zip entry's fixed timestamp, so the same code gives the same CodeSha256.
_ZIP_TIME = (2020, 1, 1, 0, 0, 0)
_ROLE_PROPAGATION_SECONDS = 60.0


def _tag_dict() -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in names.TAGS}


# --- secrets -------------------------------------------------------------------------------
def ensure_secret(name: str, make: Callable[[], str], region: str | None = None) -> str:
    """The value of Secrets Manager secret ``name``, created from ``make()`` if missing."""
    return get_or_create_secret(region, name, make)


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


# --- EC2 security group (aws/security_group.py) ---------------------------------------
def _install_security_group(region: str) -> str:
    group_id, created = ensure_security_group(region, client_cidr(None))
    return f"{'created' if created else 'found'} security group {names.SECURITY_GROUP} ({group_id})"


# --- IAM -----------------------------------------------------------------------------------
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


def _ensure_role(iam: Any, name: str, service: str, policy: dict[str, Any]) -> tuple[str, bool]:
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
        _install_instance_role(region, account)
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


def _install_instance_role(region: str, account: str) -> list[str]:
    iam = aws_client("iam", region)
    _, created = _ensure_role(
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


# --- the manager: Lambda + EventBridge -----------------------------------------------------
def _imported_modules(path: Path, package: str) -> set[str]:
    """meadowrun_core modules a source file imports (absolute and relative)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in found if m.split(".")[0] == "meadowrun_core"}


def _module_file(module: str) -> Path | None:
    base = _PACKAGE_ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def manager_modules(root: str = MANAGER_MODULE) -> dict[str, Path]:
    """The manager module and every meadowrun_core module it imports, transitively, by
    dotted name (package ``__init__`` files are left out: ``manager_zip`` stubs them)."""
    found: dict[str, Path] = {}
    pending = [root]
    while pending:
        module = pending.pop()
        path = _module_file(module)
        if module in found or path is None or path.name == "__init__.py":
            continue
        found[module] = path
        package = module.rsplit(".", 1)[0]
        pending.extend(_imported_modules(path, package))
    return found


def _zip_write(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
    info.external_attr = 0o644 << 16
    info.compress_type = zipfile.ZIP_DEFLATED
    archive.writestr(info, data)


def manager_zip() -> bytes:
    """The Lambda's code: the manager and the pure-python modules it imports, each package's
    ``__init__`` replaced by an empty one (``meadowrun_core/__init__.py`` imports the whole
    client, which the manager does not need). Deterministic, so a reinstall can tell whether
    the code changed."""
    modules = manager_modules()
    packages = {".".join(m.split(".")[:i]) for m in modules for i in range(1, len(m.split(".")))}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for package in sorted(packages):
            stub = b'"""Stub package of the meadowrun manager Lambda."""\n'
            _zip_write(archive, package.replace(".", "/") + "/__init__.py", stub)
        for module, path in sorted(modules.items()):
            _zip_write(archive, module.replace(".", "/") + ".py", path.read_bytes())
    return buffer.getvalue()


def _code_sha256(code: bytes) -> str:
    return base64.b64encode(hashlib.sha256(code).digest()).decode()


def _create_function(
    lam: Any, role_arn: str, code: bytes, sleep: Callable[[float], None]
) -> dict[str, Any]:
    """create_function, retried while a just-created role is not yet assumable by Lambda."""
    deadline = time.monotonic() + _ROLE_PROPAGATION_SECONDS
    while True:
        try:
            response: dict[str, Any] = lam.create_function(
                FunctionName=names.MANAGER_FUNCTION,
                Runtime=MANAGER_RUNTIME,
                Role=role_arn,
                Handler=MANAGER_HANDLER,
                Code={"ZipFile": code},
                Description="meadowrun: terminates lost instances, deletes abandoned queues",
                Timeout=120,
                MemorySize=256,
                Tags=_tag_dict(),
            )
            return response
        except ClientError as exc:
            if error_code(exc) != "InvalidParameterValueException" or time.monotonic() > deadline:
                raise
            log.info("waiting for IAM role %s to reach Lambda", names.MANAGER_ROLE)
            sleep(3)


def _install_function(
    region: str, account: str, sleep: Callable[[float], None]
) -> tuple[str, list[str]]:
    role_arn, role_created = _ensure_role(
        aws_client("iam", region),
        names.MANAGER_ROLE,
        "lambda.amazonaws.com",
        manager_policy(region, account),
    )
    done = [f"{'created' if role_created else 'found'} IAM role {names.MANAGER_ROLE}"]
    lam = aws_client("lambda", region)
    code = manager_zip()
    try:
        config = lam.get_function(FunctionName=names.MANAGER_FUNCTION)["Configuration"]
    except ClientError as exc:
        if error_code(exc) != "ResourceNotFoundException":
            raise
        config = _create_function(lam, role_arn, code, sleep)
        done.append(f"created Lambda function {names.MANAGER_FUNCTION}")
        return str(config["FunctionArn"]), done
    if config.get("CodeSha256") != _code_sha256(code):
        lam.update_function_code(FunctionName=names.MANAGER_FUNCTION, ZipFile=code)
        done.append(f"found Lambda function {names.MANAGER_FUNCTION}, updated its code")
    else:
        done.append(f"found Lambda function {names.MANAGER_FUNCTION}")
    return str(config["FunctionArn"]), done


def _install_schedule(region: str, function_arn: str) -> str:
    events = aws_client("events", region)
    try:
        events.describe_rule(Name=names.MANAGER_RULE)
        existed = True
    except ClientError as exc:
        if error_code(exc) != "ResourceNotFoundException":
            raise
        existed = False
    rule_arn = events.put_rule(
        Name=names.MANAGER_RULE,
        ScheduleExpression="rate(1 minute)",
        State="ENABLED",
        Description="runs the meadowrun manager",
        **({} if existed else {"Tags": names.TAGS}),
    )["RuleArn"]
    events.put_targets(Rule=names.MANAGER_RULE, Targets=[{"Id": _TARGET_ID, "Arn": function_arn}])
    try:
        aws_client("lambda", region).add_permission(
            FunctionName=names.MANAGER_FUNCTION,
            StatementId=_PERMISSION_ID,
            Action="lambda:InvokeFunction",
            Principal="events.amazonaws.com",
            SourceArn=rule_arn,
        )
    except ClientError as exc:
        if error_code(exc) != "ResourceConflictException":
            raise
    return f"{'found' if existed else 'created'} schedule {names.MANAGER_RULE} (every minute)"


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
    done += _install_instance_role(region, account)
    function_arn, function_done = _install_function(region, account, sleep)
    done += function_done
    done.append(_install_schedule(region, function_arn))
    for line in done:
        log.info("%s", line)
    return done


# --- clean and uninstall -------------------------------------------------------------------
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
        gone, functools.partial(events.remove_targets, Rule=names.MANAGER_RULE, Ids=[_TARGET_ID])
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
