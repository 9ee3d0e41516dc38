"""Deploying the manager: its Lambda (a deterministic zip of ``aws/manager.py`` and the light
``meadowrun_core`` modules it imports, so a reinstall with the same code changes nothing) and
the EventBridge schedule that runs it every minute."""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from meadowrun_core.aws import names
from meadowrun_core.aws.clients import aws_client, error_code
from meadowrun_core.aws.iam import ROLE_PROPAGATION_SECONDS, ensure_role, manager_policy, tag_dict
from meadowrun_core.module_imports import PACKAGE_ROOT, imported_modules, module_file

log = logging.getLogger(__name__)

MANAGER_HANDLER = "meadowrun_core.aws.manager.lambda_handler"
MANAGER_RUNTIME = "python3.12"
MANAGER_MODULE = "meadowrun_core.aws.manager"
SCHEDULE_TARGET_ID = "meadowrun-manager"
_PERMISSION_ID = "meadowrun-manager-schedule"
_PACKAGE_ROOT = PACKAGE_ROOT
# A zip entry's fixed timestamp, so the same code gives the same CodeSha256.
_ZIP_TIME = (2020, 1, 1, 0, 0, 0)


def manager_modules(root: str = MANAGER_MODULE) -> dict[str, Path]:
    """The manager module and every meadowrun_core module it imports, transitively, by
    dotted name (package ``__init__`` files are left out: ``manager_zip`` stubs them)."""
    found: dict[str, Path] = {}
    pending = [root]
    while pending:
        module = pending.pop()
        path = module_file(module)
        if module in found or path is None or path.name == "__init__.py":
            continue
        found[module] = path
        package = module.rsplit(".", 1)[0]
        pending.extend(imported_modules(path, package))
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
    deadline = time.monotonic() + ROLE_PROPAGATION_SECONDS
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
                Tags=tag_dict(),
            )
            return response
        except ClientError as exc:
            if error_code(exc) != "InvalidParameterValueException" or time.monotonic() > deadline:
                raise
            log.info("waiting for IAM role %s to reach Lambda", names.MANAGER_ROLE)
            sleep(3)


def install_function(
    region: str, account: str, sleep: Callable[[float], None]
) -> tuple[str, list[str]]:
    role_arn, role_created = ensure_role(
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


def install_schedule(region: str, function_arn: str) -> str:
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
    events.put_targets(
        Rule=names.MANAGER_RULE, Targets=[{"Id": SCHEDULE_TARGET_ID, "Arn": function_arn}]
    )
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
