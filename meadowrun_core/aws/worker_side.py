"""What a worker process and a running job need of AWS (``clouds.Cloud``), from the
variables the agent set (``AwsAgentCloud.worker_environment``)."""

from __future__ import annotations

import os
from pathlib import Path

from meadowrun_core.aws.clients import aws_client
from meadowrun_core.aws.s3_object_store import S3ObjectStore


def object_store(home: Path) -> S3ObjectStore:
    """The account's bucket, as ``MEADOWRUN_OBJECT_STORE=s3://bucket/prefix`` names it."""
    del home  # everything lives in S3
    url = os.environ["MEADOWRUN_OBJECT_STORE"]
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    return S3ObjectStore(aws_client("s3", os.environ.get("MEADOWRUN_AWS_REGION")), bucket, prefix)


def interruption_notice(instance_id: str) -> float | None:
    """Only the agent polls IMDS; a job learns of a notice from the file the agent writes."""
    del instance_id
    return None
