"""AWS assembled from its seams: DynamoDB table, SQS queues, S3 store, EC2 instances."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import boto3.session
from botocore.exceptions import NoCredentialsError

from meadowrun_core.aws.account import open_data_plane
from meadowrun_core.aws.clients import resolve_region
from meadowrun_core.aws.dynamodb_allocation_table import DynamoDbAllocationTable
from meadowrun_core.aws.ec2_provider import Ec2Provider
from meadowrun_core.aws.s3_object_store import S3ObjectStore
from meadowrun_core.aws.secret_store import SecretsManagerStore
from meadowrun_core.aws.sqs_task_queue import SqsTaskQueue
from meadowrun_core.config import Settings, _float_env, meadowrun_home
from meadowrun_core.exceptions import BadInputError
from meadowrun_core.hosts import AllocEC2Instance
from meadowrun_core.remote.ssh_backend import SshReachedBackend
from meadowrun_core.serialization import Signer

_NO_CREDENTIALS = (
    "no AWS credentials found for AllocEC2Instance: configure them as for the AWS CLI (aws "
    "configure, AWS_PROFILE, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY), or use the "
    "local cloud (host=None)"
)
# A spending guard: at most this much runs at once unless the host or environment says more.
DEFAULT_MAX_CPU = 256.0
DEFAULT_MAX_MEMORY_GB = 2048.0


@dataclass
class AwsBackend(SshReachedBackend):
    region: str
    home: Path
    settings: Settings
    table: DynamoDbAllocationTable
    queues: SqsTaskQueue
    store: S3ObjectStore
    provider: Ec2Provider
    signer: Signer
    max_cpu: float
    max_memory_gb: float
    secrets: SecretsManagerStore
    instances_are_this_machine: bool = False

    @classmethod
    def open(cls, host: AllocEC2Instance) -> AwsBackend:
        region = resolve_region(host.region_name)
        settings = Settings.from_env()
        # a fresh session looks again (the default one caches what it found first), and
        # nothing is sent to AWS before this check
        if boto3.session.Session().get_credentials() is None:
            raise BadInputError(_NO_CREDENTIALS)
        try:
            plane = open_data_plane(region)
        except NoCredentialsError:
            raise BadInputError(_NO_CREDENTIALS) from None
        home = meadowrun_home() / "aws" / region
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        max_cpu = host.max_cpu or _float_env("MEADOWRUN_AWS_MAX_CPU", DEFAULT_MAX_CPU)
        max_mem = host.max_memory_gb or _float_env(
            "MEADOWRUN_AWS_MAX_MEMORY_GB", DEFAULT_MAX_MEMORY_GB
        )
        return cls(
            region=region,
            home=home,
            settings=settings,
            table=plane.table,
            queues=plane.queues,
            store=plane.store,
            provider=Ec2Provider(
                host, region, settings, home / "cache", plane.bucket, plane.fresh_account
            ),
            signer=Signer(plane.key),
            max_cpu=max_cpu,
            max_memory_gb=max_mem,
            secrets=SecretsManagerStore(region),
        )

    @property
    def key(self) -> str:
        return f"aws:{self.region}:{os.environ.get('MEADOWRUN_AWS_ENDPOINT_URL', '')}"

    @property
    def description(self) -> str:
        return f"AWS {self.region} (limit {self.max_cpu:g} CPU / {self.max_memory_gb:g} GB)"
