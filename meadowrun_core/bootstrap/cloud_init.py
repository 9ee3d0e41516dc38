"""The cloud-init document of a meadowrun instance (EC2 user data, Azure customData), and
reading it back.

The client generates a fresh SSH host key for every instance and hands it to cloud-init
(``ssh_keys``), so it knows the host key before the instance boots and checks it on every
connection instead of trusting the first key it sees. The client's own public key goes in
``ssh_authorized_keys``. ``write_files`` and the ``runcmd`` after its first two lines
(``install_commands``) bootstrap the agent (``meadowrun_core.bootstrap``). The loopback test
hosts (tests/ec2_hosts.py) read the same document back with ``parse_user_data``.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import yaml

from meadowrun_core.bootstrap.instance_script import BOOT_DIR

_HEADER = "#cloud-config\n"


@dataclass(frozen=True)
class InstanceBoot:
    host_private_key: str  # OpenSSH PEM, ed25519
    host_public_key: str  # "ssh-ed25519 AAAA..."
    authorized_key: str  # the client's public key, "ssh-ed25519 AAAA..."
    ssh_user: str
    install_commands: tuple[str, ...] = ()
    write_files: tuple[dict[str, str], ...] = ()


def render_user_data(boot: InstanceBoot) -> str:
    document = {
        "ssh_keys": {
            "ed25519_private": boot.host_private_key,
            "ed25519_public": boot.host_public_key,
        },
        "ssh_deletekeys": True,
        "users": [
            "default",
            {
                "name": boot.ssh_user,
                "ssh_authorized_keys": [boot.authorized_key],
                "sudo": "ALL=(ALL) NOPASSWD:ALL",
                "shell": "/bin/bash",
            },
        ],
        **({"write_files": list(boot.write_files)} if boot.write_files else {}),
        "runcmd": [
            f"mkdir -p {BOOT_DIR}",
            f"chown {boot.ssh_user} {BOOT_DIR}",
            *boot.install_commands,
        ],
    }
    return _HEADER + str(yaml.safe_dump(document, sort_keys=False))


def parse_user_data(text: str | bytes) -> InstanceBoot:
    """Read back what ``render_user_data`` wrote (also accepts the base64 EC2 returns)."""
    if isinstance(text, bytes):
        text = text.decode()
    if not text.startswith("#"):
        text = base64.b64decode(text).decode()
    document = yaml.safe_load(text)
    user = next(u for u in document["users"] if isinstance(u, dict))
    return InstanceBoot(
        host_private_key=document["ssh_keys"]["ed25519_private"],
        host_public_key=document["ssh_keys"]["ed25519_public"],
        authorized_key=user["ssh_authorized_keys"][0],
        ssh_user=user["name"],
        install_commands=tuple(document["runcmd"][2:]),
    )
