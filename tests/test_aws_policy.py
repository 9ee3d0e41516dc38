"""docs/aws-client-policy.json allows everything the client calls.

A cold start, a map, a named secret, costs, install, clean and uninstall run on the EC2 twin
while every AWS operation the client sends is recorded; each must be allowed by an action of
the documented policy (resources are not checked: moto does not enforce IAM)."""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from typer.testing import CliRunner

import meadowrun_core as mr
from meadowrun_core.aws import install as aws_install
from meadowrun_core.aws import uninstall as aws_uninstall
from meadowrun_core.aws.secret_store import SecretsManagerStore
from meadowrun_core.cli import app
from meadowrun_core.client.runtime import ClientRuntime
from tests import twin_workloads as work
from tests.aws_twin import DEPLOYMENT, AwsTwinCloud

POLICY = Path(__file__).parent.parent / "docs" / "aws-client-policy.json"
# API operations whose IAM action has another name, or that need none.
_ACTION_OF = {
    "s3:HeadObject": "s3:GetObject",
    "s3:HeadBucket": "s3:ListBucket",
    "s3:ListObjectsV2": "s3:ListBucket",
    "s3:CreateMultipartUpload": "s3:PutObject",
    "s3:UploadPart": "s3:PutObject",
    "s3:CompleteMultipartUpload": "s3:PutObject",
    "s3:AbortMultipartUpload": "s3:AbortMultipartUpload",
    "s3:DeleteObjects": "s3:DeleteObject",
    "s3:PutBucketLifecycleConfiguration": "s3:PutLifecycleConfiguration",
    "s3:GetBucketLifecycleConfiguration": "s3:GetLifecycleConfiguration",
    "s3:PutPublicAccessBlock": "s3:PutBucketPublicAccessBlock",
    "s3:PutBucketEncryption": "s3:PutEncryptionConfiguration",
    "s3:ListObjectVersions": "s3:ListBucketVersions",
    "sts:GetCallerIdentity": None,  # needs no permission
}
_SERVICE_PREFIX = {"events": "events", "lambda": "lambda", "logs": "logs"}


@pytest.fixture
def calls() -> Iterator[set[str]]:
    """Every ``service:Operation`` the client's boto3 clients send from now on."""
    seen: set[str] = set()

    def record(event_name: str, model: Any, **_: Any) -> None:
        prefix = model.service_model.signing_name or model.service_model.endpoint_prefix
        seen.add(f"{_SERVICE_PREFIX.get(prefix, prefix)}:{model.name}")

    ClientRuntime.get().forget_backends()
    session = boto3._get_default_session()
    session.events.register("before-call", record)
    yield seen
    session.events.unregister("before-call", record)


def _allowed(action: str, statements: list[dict[str, Any]]) -> bool:
    for statement in statements:
        if statement["Effect"] != "Allow":
            continue
        actions = statement["Action"]
        for pattern in [actions] if isinstance(actions, str) else actions:
            if fnmatch.fnmatchcase(action.lower(), pattern.lower()):
                return True
    return False


def test_the_documented_client_policy_covers_every_call(aws: AwsTwinCloud, calls: set[str]) -> None:
    aws_install.install("us-east-1")
    assert mr.run_function(work.square, args=(3,), host=aws.host(), deployment=DEPLOYMENT) == 9
    assert mr.run_map(work.square, range(5), host=aws.host(), deployment=DEPLOYMENT) == [
        0, 1, 4, 9, 16,
    ]  # fmt: skip
    secrets = SecretsManagerStore("us-east-1")
    secrets.put("token", "value")
    assert secrets.get("token") == "value" and secrets.names() == ["token"]
    secrets.delete("token")
    costs = CliRunner().invoke(app, ["costs", "--cloud", "aws", "--region", "us-east-1"])
    assert costs.exit_code == 0, costs.output
    ClientRuntime.get().forget_backends()
    aws_uninstall.clean("us-east-1")
    aws_uninstall.uninstall("us-east-1", sleep=lambda _: None)
    document = json.loads(POLICY.read_text())
    assert document["Version"] == "2012-10-17"
    missing = sorted(
        action
        for action in (_ACTION_OF.get(call, call) for call in calls)
        if action is not None and not _allowed(action, document["Statement"])
    )
    assert not missing, f"docs/aws-client-policy.json does not allow: {missing}"
    assert len(calls) > 40  # the recorder saw the whole run
