"""boto3 clients with one place to point them at an endpoint (moto's server in tests)."""

from __future__ import annotations

import os
from typing import Any

import boto3


def aws_client(service: str, region_name: str | None = None) -> Any:
    """A boto3 client; ``MEADOWRUN_AWS_ENDPOINT_URL`` redirects every service (tests)."""
    endpoint = os.environ.get("MEADOWRUN_AWS_ENDPOINT_URL") or None
    region = region_name or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return boto3.client(service, region_name=region, endpoint_url=endpoint)
