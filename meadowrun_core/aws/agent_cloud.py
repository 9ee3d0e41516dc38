"""The agent's view of AWS: the shared data plane, the instance metadata service (spot
interruption notices) and terminating its own instance when it goes idle."""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path

from meadowrun_core.aws.account import open_data_plane
from meadowrun_core.aws.clients import aws_client, resolve_region
from meadowrun_core.aws.secret_store import SecretsManagerStore
from meadowrun_core.serialization import Signer

log = logging.getLogger(__name__)

_IMDS_DEFAULT = "http://169.254.169.254/"
_TOKEN_TTL_SECONDS = 21600


class InstanceMetadata:
    """IMDSv2: a session token, then GETs. The endpoint follows botocore's variable
    ``AWS_EC2_METADATA_SERVICE_ENDPOINT`` so that tests can serve it on loopback."""

    def __init__(self, endpoint: str | None = None, timeout: float = 1.0) -> None:
        self.endpoint = (
            endpoint or os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT") or _IMDS_DEFAULT
        ).rstrip("/")
        self.timeout = timeout
        self._token: str | None = None
        self._token_expires = 0.0

    def _get_token(self) -> str:
        if self._token is None or time.monotonic() > self._token_expires:
            request = urllib.request.Request(
                f"{self.endpoint}/latest/api/token",
                method="PUT",
                headers={"X-aws-ec2-metadata-token-ttl-seconds": str(_TOKEN_TTL_SECONDS)},
            )
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                self._token = response.read().decode()
            self._token_expires = time.monotonic() + _TOKEN_TTL_SECONDS / 2
        return self._token

    def get(self, path: str) -> str | None:
        """The value at ``latest/meta-data/<path>``, or None where IMDS has none (404)."""
        request = urllib.request.Request(
            f"{self.endpoint}/latest/meta-data/{path}",
            headers={"X-aws-ec2-metadata-token": self._get_token()},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return str(response.read().decode())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            if exc.code == 401:
                self._token = None
            raise


def parse_instance_action(text: str) -> float:
    """``{"action": "terminate", "time": "2026-11-23T12:00:00Z"}`` -> epoch seconds."""
    when = json.loads(text)["time"]
    return datetime.fromisoformat(when.replace("Z", "+00:00")).timestamp()


class AwsAgentCloud:
    def __init__(self, home: Path, region: str | None) -> None:
        plane = open_data_plane(resolve_region(region), create=False)
        self.region = plane.region
        self.table = plane.table
        self.queues = plane.queues
        self.store = plane.store
        self.bucket = plane.bucket
        self.signer = Signer(plane.key)
        self.secrets = SecretsManagerStore(plane.region)
        # workers on this instance read the key from here, private to this user
        key_path = home / "cluster.key"
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(plane.key)
        self.metadata = InstanceMetadata()

    def worker_environment(self) -> dict[str, str]:
        """What jobs see of their cloud; ``MEADOWRUN_INSTANCE_ADDRESS`` is the instance's
        private address, where servers a job runs (a Dask scheduler) are reached in the VPC."""
        environment = {
            "MEADOWRUN_CLOUD": "aws",
            "MEADOWRUN_AWS_REGION": self.region,
            "MEADOWRUN_OBJECT_STORE": f"s3://{self.bucket}/objects/",
        }
        try:
            address = self.metadata.get("local-ipv4")
        except (OSError, urllib.error.URLError):
            log.warning("instance metadata not reachable: jobs get no MEADOWRUN_INSTANCE_ADDRESS")
            address = None
        if address:
            environment["MEADOWRUN_INSTANCE_ADDRESS"] = address
        return environment

    def interruption_notice(self) -> float | None:
        try:
            action = self.metadata.get("spot/instance-action")
        except (OSError, urllib.error.URLError):
            log.debug("instance metadata not reachable", exc_info=True)
            return None
        return None if action is None else parse_instance_action(action)

    def terminate_self(self, instance_id: str) -> None:
        """Terminate this EC2 instance (its id from IMDS), so an idle instance stops billing."""
        try:
            ec2_id = self.metadata.get("instance-id")
        except (OSError, urllib.error.URLError):
            log.exception("cannot learn this instance's EC2 id; it is left to the manager")
            return
        if ec2_id:
            log.info("terminating EC2 instance %s (meadowrun %s)", ec2_id, instance_id)
            aws_client("ec2", self.region).terminate_instances(InstanceIds=[ec2_id])
