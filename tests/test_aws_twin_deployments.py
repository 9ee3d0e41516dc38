"""On the EC2 twin: secrets read through the instance's cloud (a private git repository over
SSH, served by a git host in another namespace), and a SIGKILLed client's job stopped by its
lease on EC2."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest
import yaml
from botocore.exceptions import ClientError

import meadowrun_core as mr
from meadowrun_core.bootstrap.instance_script import AGENT_PYTHON
from tests.aws_twin import AwsTwinCloud
from tests.twin_hosts import IngressRule, TwinHost

REPO_PATH = "/home/git/repo.git"


@pytest.fixture
def git_host(aws: AwsTwinCloud) -> Iterator[tuple[TwinHost, str]]:
    """A git server over SSH on its own host; (host, the deploy key's private half)."""
    deploy_key = asyncssh.generate_private_key("ssh-ed25519")
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    module = 'def greet():\n    return "hello from a private repository"\n'
    document = {
        "ssh_keys": {
            "ed25519_private": host_key.export_private_key().decode(),
            "ed25519_public": host_key.export_public_key().decode().strip(),
        },
        "users": [
            {
                "name": "git",
                "shell": "/bin/sh",
                "ssh_authorized_keys": [deploy_key.export_public_key().decode().strip()],
            }
        ],
        "write_files": [{"path": "/root/work/private_module.py", "content": module}],
        "runcmd": [
            f"git init -q --bare --initial-branch=main {REPO_PATH}",
            "cd /root/work && git init -q --initial-branch=main && git add private_module.py",
            "cd /root/work && git -c user.name=t -c user.email=t@example.com commit -qm first",
            f"cd /root/work && git push -q {REPO_PATH} main",
            f"chown -R git:git {REPO_PATH} && touch /home/git/ready",
        ],
    }
    network = aws.twin.network
    host = network.new_host("git", aws.scratch / "git-host")
    host.boot(
        "#cloud-config\n" + yaml.safe_dump(document),
        (network.gateway, 1),
        [IngressRule("tcp", str(network.subnet), 22, 22)],
        {},
        hostname="git",
    )
    try:
        deadline = time.monotonic() + 30
        while not host.path("/home/git/ready").exists():
            assert time.monotonic() < deadline, host.cloud_init_log()
            time.sleep(0.1)
        yield host, deploy_key.export_private_key().decode()
    finally:
        network.release(host)


def test_private_git_over_ssh_with_a_secret_from_secrets_manager(
    aws: AwsTwinCloud, git_host: tuple[TwinHost, str]
) -> None:
    host, key = git_host
    stored = subprocess.run(
        [sys.executable, "-m", "meadowrun_core.cli", "secret", "set", "deploy-key",
         "--cloud", "aws"],
        input=key, capture_output=True, text=True, env=os.environ.copy(), check=False,
    )  # fmt: skip
    assert stored.returncode == 0, stored.stderr
    assert key not in stored.stdout + stored.stderr
    secret = aws.client("secretsmanager").get_secret_value(SecretId="meadowrun/user/deploy-key")
    assert secret["SecretString"] == key  # in the cloud, not in the client's local store
    deployment = mr.Deployment.git_repo(
        f"ssh://git@{host.ip}{REPO_PATH}",
        branch="main",
        ssh_key_secret="deploy-key",
        interpreter=mr.PreinstalledInterpreter(AGENT_PYTHON),
    )
    result = mr.run_function("private_module.greet", host=aws.host(), deployment=deployment)
    assert result == "hello from a private repository"
    (instance,) = aws.instances("running")
    twin_host = aws.twin_host(instance["InstanceId"])
    # the key never reached the instance's disk or its logs; the table holds only the name
    disk = subprocess.run(
        ["grep", "-rlF", key.splitlines()[3], str(twin_host.disk_dir)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert disk.stdout == ""


def test_a_missing_secret_is_named_before_launch(aws: AwsTwinCloud, tmp_path: Path) -> None:
    deployment = mr.Deployment.git_repo(
        f"ssh://git@{aws.twin.network.gateway}:1/none.git",  # never reached: the secret is missing
        branch="main",
        ssh_key_secret="no-such-secret",
    )
    with pytest.raises(mr.exceptions.BadInputError, match=r"no-such-secret.*--cloud aws"):
        mr.run_function("m.f", host=aws.host(), deployment=deployment)
    assert aws.instances() == []


_CLIENT = textwrap.dedent(
    """
    import sys
    import meadowrun_core as mr
    from meadowrun_core.bootstrap.instance_script import AGENT_PYTHON
    from tests import twin_workloads as work
    deployment = mr.Deployment.mirror_local(interpreter=mr.PreinstalledInterpreter(AGENT_PYTHON))
    print("starting", flush=True)
    mr.run_function(work.sleep_and_mark, args=(30, "orphan-ran"),
                    host=mr.AllocEC2Instance(region_name="us-east-1"), deployment=deployment)
    """
)


def test_sigkilled_client_leaves_no_worker_past_its_lease(aws: AwsTwinCloud) -> None:
    client = subprocess.Popen(
        [sys.executable, "-c", _CLIENT],
        cwd=Path(__file__).parent.parent,
        env=os.environ.copy(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        from meadowrun_core.aws.dynamodb_allocation_table import DynamoDbAllocationTable

        table = DynamoDbAllocationTable(aws.client("dynamodb"))
        deadline = time.monotonic() + 180
        worker_pid = None
        while worker_pid is None:  # the job's own worker (not an idle pre-started one)
            assert time.monotonic() < deadline, "the job never started on EC2"
            assert client.poll() is None, client.stdout.read() if client.stdout else ""
            with contextlib.suppress(ClientError):  # the client has not made the table yet
                worker_pid = next(
                    (a.worker_pid for a in table.list_allocations() if a.worker_pid), None
                )
            time.sleep(0.3)
        client.send_signal(signal.SIGKILL)
        client.wait()
        killed = time.monotonic()
        (instance,) = aws.instances("running")
        host = aws.twin_host(instance["InstanceId"])
        lease = float(os.environ["MEADOWRUN_LEASE_SECONDS"])
        # the lease lapses within its length; the agent's reconciler (0.5 s) then reads the
        # table on moto, which answers slowly on a loaded machine: a margin for that
        deadline = killed + lease + 10
        while Path(f"/proc/{worker_pid}").exists():  # the twin shares the pid namespace
            assert time.monotonic() < deadline, "the worker outlived its client's lease"
            time.sleep(0.2)
        print(f"worker stopped {time.monotonic() - killed:.1f} s after its client was killed")
        assert not host.path("/tmp/orphan-ran").exists()
    finally:
        if client.poll() is None:
            client.kill()
