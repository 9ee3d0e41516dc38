"""The agent bundle in S3: uploaded once per version and account, fetched by presigned URL.

The bundle (``meadowrun_core.bootstrap.bundle``) is content-addressed, so a key that exists
already holds these bytes; a stock image has no AWS SDK, so the instance fetches it with a
plain HTTPS GET of a presigned URL that expires soon after the launch.
"""

from __future__ import annotations

import logging
from typing import Any

from botocore.exceptions import ClientError

from meadowrun_core.aws import names
from meadowrun_core.aws.clients import error_code
from meadowrun_core.bootstrap.bundle import AgentBundle

log = logging.getLogger(__name__)

URL_SECONDS = 3600


def upload_agent_bundle(s3: Any, bucket: str, bundle: AgentBundle) -> None:
    """Upload ``bundle`` unless the bucket has it (its key names its content)."""
    try:
        s3.head_object(Bucket=bucket, Key=bundle.key)
    except ClientError as exc:
        if error_code(exc) not in ("404", "NoSuchKey", "NotFound"):
            raise
        size = bundle.path.stat().st_size
        log.info(
            "uploading meadowrun's agent (%.1f MB) to s3://%s/%s", size / 1e6, bucket, bundle.key
        )
        tags = "&".join(f"{t['Key']}={t['Value']}" for t in names.TAGS)
        with open(bundle.path, "rb") as body:  # one PUT (S3 takes up to 5 GB in one)
            s3.put_object(Bucket=bucket, Key=bundle.key, Body=body, Tagging=tags)


def bundle_url(s3: Any, bucket: str, bundle: AgentBundle, seconds: int = URL_SECONDS) -> str:
    """A URL that GETs the bundle for ``seconds``: a stock image has no AWS SDK."""
    url: str = s3.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": bundle.key}, ExpiresIn=seconds
    )
    return url
