"""The ``aws`` fixture: moto's server on the twin network's gateway plus the EC2 twin.

The client (this test process) lives in the root namespace at the gateway address, like a
laptop outside the VPC: it reaches moto over HTTP and instances only on the ports their
security group admits from its address (which it learns from the twin's checkip service).
Instances reach moto (their only route), get role credentials from the metadata service and
have nothing of ours until their boot script installs it from S3.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

import meadowrun_core as mr
from meadowrun_core.aws import names
from meadowrun_core.client.runtime import ClientRuntime
from tests.ec2_twin import Ec2Twin
from tests.moto_server import reset_moto
from tests.process_env import TWIN_LEASE_SECONDS, lease_seconds
from tests.twin_hosts import TwinHost, TwinNetwork, claimed_subnet

REGION = "us-east-1"
FIXTURES = Path(__file__).parent / "fixtures" / "aws"
# Jobs run in the agent's own interpreter, which the boot script installed from S3.
DEPLOYMENT = mr.Deployment.mirror_local(
    interpreter=mr.PreinstalledInterpreter(names.INSTANCE_PYTHON)
)


class AwsTwinCloud:
    def __init__(
        self, endpoint: str, twin: Ec2Twin, scratch: Path, server: ThreadedMotoServer | None = None
    ) -> None:
        self.endpoint = endpoint
        self.twin = twin
        self.scratch = scratch
        self.server = server  # moto's, where the caller wants to watch it

    def client(self, service: str) -> Any:
        return boto3.client(service, region_name=REGION, endpoint_url=self.endpoint)

    def host(self, **overrides: Any) -> mr.AllocEC2Instance:
        return mr.AllocEC2Instance(region_name=REGION, **overrides)

    def instances(self, *states: str) -> list[dict[str, Any]]:
        filters = [*names.TAG_FILTER]
        if states:
            filters.append({"Name": "instance-state-name", "Values": list(states)})
        reservations = self.client("ec2").describe_instances(Filters=filters)["Reservations"]
        return [i for r in reservations for i in r["Instances"]]

    def twin_host(self, ec2_id: str) -> TwinHost:
        return self.twin.host(ec2_id)

    def registered_at(self, host: TwinHost) -> float:
        """When the host's agent registered (the time it logged that it listens)."""
        for log in host.path("/home/meadowrun/.meadowrun").glob("agent-*.log"):
            for line in log.read_text().splitlines():
                if " listening on " in line:
                    stamp = " ".join(line.split()[:2])
                    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
        raise AssertionError(f"the agent on {host.name} never registered")

    def registered_instances(self) -> list[str]:
        """Instances whose agent registered its address."""
        from meadowrun_core.aws.dynamodb_allocation_table import DynamoDbAllocationTable

        table = DynamoDbAllocationTable(self.client("dynamodb"))
        return [r.instance_id for r in table.list_instances() if r.address is not None]

    def table_instances(self) -> list[str]:
        from meadowrun_core.aws.dynamodb_allocation_table import DynamoDbAllocationTable

        table = DynamoDbAllocationTable(self.client("dynamodb"))
        return [r.instance_id for r in table.list_instances()]


@pytest.fixture(scope="session")
def twin_network() -> Iterator[TwinNetwork]:
    # a subnet of its own per test process, so that concurrent runs never share addresses
    tag = os.getpid()  # the creator's pid: a later run removes what a killed one left
    with claimed_subnet(tag) as subnet:
        network = TwinNetwork(tag=str(tag), subnet=subnet)
        yield network
        network.close()


@contextlib.contextmanager
def aws_twin_cloud(
    network: TwinNetwork, scratch: Path, lease: float = TWIN_LEASE_SECONDS
) -> Iterator[tuple[AwsTwinCloud, dict[str, str]]]:
    """Everything of the ``aws`` fixture on ``network``, in ``scratch``: moto on its gateway
    (an empty account) and the EC2 twin, and the environment a client needs to use them (the
    caller sets it; the fixture through monkeypatch, bench/bench_clouds.py around its AWS
    part)."""
    server = ThreadedMotoServer(ip_address=network.gateway, port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    twin: Ec2Twin | None = None
    try:
        reset_moto(endpoint)  # an empty account
        environment = {
            "MEADOWRUN_AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": REGION,
            "MEADOWRUN_AWS_PRICE_FIXTURE": str(FIXTURES),
            "MEADOWRUN_LEASE_SECONDS": f"{lease:g}",
            "MEADOWRUN_VISIBILITY_TIMEOUT": "6",
            "MEADOWRUN_RECONCILE_INTERVAL": "0.5",
            "MEADOWRUN_HOME": str(scratch / "client-home"),
        }
        twin = Ec2Twin(network, endpoint, REGION, scratch / "twin")
        twin.start()
        environment["MEADOWRUN_EC2_ADDRESS_MAP"] = str(twin.address_map_path)
        environment["MEADOWRUN_CHECKIP_URL"] = twin.checkip_url
        yield AwsTwinCloud(endpoint, twin, scratch, server), environment
    finally:
        ClientRuntime.get().forget_backends()
        if twin is not None:
            twin.close()
        reset_moto(endpoint)  # nothing left for a later module's moto server
        server.stop()


@pytest.fixture
def aws(
    twin_network: TwinNetwork,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> Iterator[AwsTwinCloud]:
    lease = lease_seconds(request.node)
    with aws_twin_cloud(twin_network, tmp_path, lease) as (cloud, environment):
        for name, value in environment.items():
            monkeypatch.setenv(name, value)
        yield cloud
