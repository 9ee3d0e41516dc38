"""boto3 clients with one place to point them at an endpoint (moto's server in tests)."""

from __future__ import annotations

import os
from typing import Any

import boto3
from botocore.exceptions import ClientError


def resolve_region(region_name: str | None = None) -> str:
    """The region asked for, else ``AWS_DEFAULT_REGION``, else us-east-1."""
    return region_name or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


def aws_client(service: str, region_name: str | None = None) -> Any:
    """A boto3 client; ``MEADOWRUN_AWS_ENDPOINT_URL`` redirects every service (tests)."""
    endpoint = os.environ.get("MEADOWRUN_AWS_ENDPOINT_URL") or None
    return boto3.client(service, region_name=resolve_region(region_name), endpoint_url=endpoint)


def error_code(exc: ClientError) -> str:
    """The AWS error code of a failed call, e.g. ``ResourceNotFoundException``."""
    return str(exc.response.get("Error", {}).get("Code", ""))
