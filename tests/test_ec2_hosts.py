"""The EC2 test-host harness (tests/ec2_hosts.py) against moto's server: real SSH, real
processes, real port forwarding, real HTTP to the IMDS emulator. No mocks."""

from __future__ import annotations

import asyncio
import datetime
import json
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
import boto3
import psutil
import pytest

from meadowrun_core.bootstrap.cloud_init import InstanceBoot, render_user_data
from tests.ec2_hosts import Ec2TestHosts

REGION = "us-east-1"
USER = "ubuntu"


@pytest.fixture
def ec2(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    client = boto3.client(
        "ec2",
        region_name=REGION,
        endpoint_url=moto_endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    yield client
    # moto outlives the test: leave no running instance for the next test's harness to boot.
    running = [
        instance["InstanceId"]
        for reservation in client.describe_instances()["Reservations"]
        for instance in reservation["Instances"]
        if instance["State"]["Name"] in ("pending", "running")
    ]
    if running:
        client.terminate_instances(InstanceIds=running)


@pytest.fixture
def hosts(moto_endpoint: str, ec2: Any, tmp_path: Path) -> Iterator[Ec2TestHosts]:
    with Ec2TestHosts(moto_endpoint, REGION, tmp_path / "hosts", env={"EXTRA": "given"}) as h:
        yield h


@dataclass
class Instance:
    instance_id: str
    host_key: asyncssh.SSHKey
    client_key: asyncssh.SSHKey
    address: str

    @property
    def ip(self) -> str:
        return self.address.rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])

    async def connect(self, **overrides: Any) -> asyncssh.SSHClientConnection:
        options: dict[str, Any] = {
            "known_hosts": _pinned(self.host_key),
            "client_keys": [self.client_key],
            "username": USER,
            "agent_path": None,
            "config": [],
        }
        options.update(overrides)
        return await asyncssh.connect(self.ip, self.port, **options)


def _pinned(host_key: asyncssh.SSHKey) -> tuple[list[asyncssh.SSHKey], list[Any], list[Any]]:
    """known_hosts trusting exactly this host key (by its public half)."""
    return ([asyncssh.import_public_key(host_key.export_public_key())], [], [])


_images: dict[str, str] = {}


def _run_instance(ec2: Any, user_data: str | None) -> str:
    if REGION not in _images:  # moto's describe_images lists every default AMI: slow
        _images[REGION] = ec2.describe_images()["Images"][0]["ImageId"]
    image = _images[REGION]
    extra = {} if user_data is None else {"UserData": user_data}
    reservation = ec2.run_instances(
        ImageId=image, MinCount=1, MaxCount=1, InstanceType="t3.micro", **extra
    )
    return str(reservation["Instances"][0]["InstanceId"])


@pytest.fixture
def launch(ec2: Any, hosts: Ec2TestHosts) -> Callable[[], Instance]:
    def launch() -> Instance:
        host_key = asyncssh.generate_private_key("ssh-ed25519")
        client_key = asyncssh.generate_private_key("ssh-ed25519")
        boot = InstanceBoot(
            host_private_key=host_key.export_private_key().decode(),
            host_public_key=host_key.export_public_key().decode(),
            authorized_key=client_key.export_public_key().decode(),
            ssh_user=USER,
        )
        instance_id = _run_instance(ec2, render_user_data(boot))
        return Instance(instance_id, host_key, client_key, hosts.address(instance_id))

    return launch


def _address_map(hosts: Ec2TestHosts) -> dict[str, str]:
    return dict(json.loads(hosts.address_map_path.read_text()))


def _eventually(check: Callable[[], bool], timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def test_host_runs_commands_over_ssh_with_pinned_host_key(
    hosts: Ec2TestHosts, launch: Callable[[], Instance]
) -> None:
    instance = launch()
    assert instance.ip.startswith("127.0.0.") and instance.ip != "127.0.0.1"
    assert _address_map(hosts) == {instance.instance_id: instance.address}
    home = hosts.home(instance.instance_id)
    assert home.is_dir() and home.stat().st_mode & 0o777 == 0o700

    async def scenario() -> None:
        async with await instance.connect() as conn:
            result = await conn.run(
                "echo hello; echo $MEADOWRUN_TEST_HOST; echo $HOME; pwd; echo $EXTRA; "
                "echo oops >&2; exit 3"
            )
            assert result.stdout == f"hello\n{instance.instance_id}\n{home}\n{home}\ngiven\n"
            assert result.stderr == "oops\n"
            assert result.exit_status == 3
            # stdin reaches the command, and output larger than a pipe buffer comes back whole
            echoed = await conn.run("cat", input="x" * 300_000)
            assert echoed.stdout == "x" * 300_000
            killed = await conn.run("kill -TERM $$")
            assert killed.exit_signal is not None and killed.exit_signal[0] == "TERM"

        # Host key checking is the point: a different pinned key must not connect.
        other_host_key = asyncssh.generate_private_key("ssh-ed25519")
        with pytest.raises(asyncssh.HostKeyNotVerifiable):
            await instance.connect(known_hosts=_pinned(other_host_key))
        # Only the authorized key, and only for the UserData's user.
        other_client_key = asyncssh.generate_private_key("ssh-ed25519")
        with pytest.raises(asyncssh.PermissionDenied):
            await instance.connect(client_keys=[other_client_key])
        with pytest.raises(asyncssh.PermissionDenied):
            await instance.connect(username="root")

    asyncio.run(scenario())


def test_port_forwarding_reaches_the_instances_loopback_only(
    launch: Callable[[], Instance],
) -> None:
    instance = launch()

    async def scenario() -> None:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"echo:" + await reader.readline())
            await writer.drain()
            writer.close()

        agent = await asyncio.start_server(echo, "127.0.0.1", 0)
        agent_port = agent.sockets[0].getsockname()[1]
        async with await instance.connect() as conn:
            listener = await conn.forward_local_port("127.0.0.1", 0, "127.0.0.1", agent_port)
            reader, writer = await asyncio.open_connection("127.0.0.1", listener.get_port())
            writer.write(b"ping\n")
            await writer.drain()
            assert await asyncio.wait_for(reader.read(), 5) == b"echo:ping\n"
            writer.close()
            listener.close()
            # Anything that is not the instance's own loopback is refused.
            with pytest.raises(asyncssh.ChannelOpenError):
                await conn.open_connection("10.1.2.3", 80)
        agent.close()
        await agent.wait_closed()

    asyncio.run(scenario())


_IMDS_PROBE = r"""
import json, os, urllib.error, urllib.request
base = os.environ["AWS_EC2_METADATA_SERVICE_ENDPOINT"].rstrip("/")
def call(method, path, headers):
    request = urllib.request.Request(base + path, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, ""
_, token = call("PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": "60"})
auth = {"X-aws-ec2-metadata-token": token}
print(json.dumps({
    "no_ttl": call("PUT", "/latest/api/token", {})[0],
    "no_token": call("GET", "/latest/meta-data/instance-id", {})[0],
    "bad_token": call("GET", "/latest/meta-data/instance-id", {"X-aws-ec2-metadata-token": "x"})[0],
    "instance_id": call("GET", "/latest/meta-data/instance-id", auth),
    "spot": call("GET", "/latest/meta-data/spot/instance-action", auth),
}))
"""

_BOTOCORE_PROBE = (
    "import botocore.session, botocore.utils; "
    "print(botocore.utils.IMDSRegionProvider(botocore.session.get_session()).provide())"
)


def test_imds_serves_tokens_identity_and_spot_notices(
    hosts: Ec2TestHosts, launch: Callable[[], Instance]
) -> None:
    instance = launch()
    python = shlex.quote(sys.executable)

    async def probe() -> dict[str, Any]:
        async with await instance.connect() as conn:
            result = await conn.run(f"{python} -c {shlex.quote(_IMDS_PROBE)}", check=True)
        return dict(json.loads(str(result.stdout)))

    async def botocore_region() -> str:
        async with await instance.connect() as conn:
            result = await conn.run(f"{python} -c {shlex.quote(_BOTOCORE_PROBE)}", check=True)
        return str(result.stdout).strip()

    before = asyncio.run(probe())
    assert before["no_ttl"] == 400
    assert before["no_token"] == 401
    assert before["bad_token"] == 401
    assert before["instance_id"] == [200, instance.instance_id]
    assert before["spot"] == [404, ""]
    assert asyncio.run(botocore_region()) == REGION  # botocore's own IMDSv2 client agrees

    hosts.interrupt(instance.instance_id, 120)
    after = asyncio.run(probe())
    status, body = after["spot"]
    assert status == 200
    notice = json.loads(body)
    assert notice["action"] == "terminate"
    assert notice["time"].endswith("Z")
    when = datetime.datetime.strptime(notice["time"], "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=datetime.UTC
    )
    expected = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=120)
    assert abs((when - expected).total_seconds()) < 10


def _start_detached_sleep(instance: Instance) -> None:
    async def scenario() -> None:
        async with await instance.connect() as conn:
            await conn.run("setsid nohup sleep 300 >/dev/null 2>&1 &", check=True)

    asyncio.run(scenario())


def _sleeps(hosts: Ec2TestHosts, instance_id: str) -> list[psutil.Process]:
    return [p for p in hosts.processes(instance_id) if p.cmdline() == ["sleep", "300"]]


def test_terminating_the_instance_powers_its_host_off(
    ec2: Any, hosts: Ec2TestHosts, launch: Callable[[], Instance]
) -> None:
    instance, bystander = launch(), launch()
    assert instance.address != bystander.address
    _start_detached_sleep(instance)
    _start_detached_sleep(bystander)
    assert _eventually(lambda: len(_sleeps(hosts, instance.instance_id)) == 1)
    assert _eventually(lambda: len(_sleeps(hosts, bystander.instance_id)) == 1)
    sleep = _sleeps(hosts, instance.instance_id)[0]
    assert sleep.environ()["MEADOWRUN_TEST_HOST"] == instance.instance_id

    ec2.terminate_instances(InstanceIds=[instance.instance_id])

    def gone() -> bool:
        dead = not sleep.is_running() or sleep.status() == psutil.STATUS_ZOMBIE
        return dead and instance.instance_id not in _address_map(hosts)

    assert _eventually(gone)
    assert hosts.processes(instance.instance_id) == []
    assert _address_map(hosts) == {bystander.instance_id: bystander.address}
    with pytest.raises(OSError):
        asyncio.run(instance.connect())
    # The other instance is untouched, and its disk survives as a disk would.
    assert len(_sleeps(hosts, bystander.instance_id)) == 1
    assert hosts.home(instance.instance_id).is_dir()

    hosts.close()
    assert hosts.processes(bystander.instance_id) == []
    assert _address_map(hosts) == {}


def test_instances_without_meadowrun_user_data_are_ignored(
    ec2: Any, hosts: Ec2TestHosts, launch: Callable[[], Instance]
) -> None:
    plain = _run_instance(ec2, None)
    other = _run_instance(ec2, "#!/bin/bash\necho not cloud-config\n")
    ours = launch()  # booted after the others were polled
    assert set(_address_map(hosts)) == {ours.instance_id}
    with pytest.raises(TimeoutError):
        hosts.address(plain, timeout=0.3)
    with pytest.raises(TimeoutError):
        hosts.address(other, timeout=0.3)
