"""cloud-init's work on a twin host's disk (tests/twin_hosts.py), done as cloud-init does it:
``ssh_keys`` (the host keys in ``/etc/ssh``), ``users`` (accounts in the host's own
``/etc/passwd``, ``group``, ``shadow``, and ``ssh_authorized_keys``), an sshd configuration, then
``write_files`` and ``runcmd`` as one root shell script with a timeout (as cloud-init's
scripts-user stage runs it), its output in ``/var/log/cloud-init-output.log``.

A host's disk holds its private folders (``PRIVATE_DIRS``), each bound over the image's own at
boot; ``disk_path`` says where a path inside the host lies on it."""

from __future__ import annotations

import base64
import contextlib
import os
import shlex
from pathlib import Path
from typing import Any

SSHD = "/usr/sbin/sshd"
RUNCMD_TIMEOUT_SECONDS = 900
_FIRST_UID = 2000
# The image's folders each host gets a private, initially empty copy of.
PRIVATE_DIRS = ("home", "root", "opt", "tmp", "var", "run", "etc/ssh")
ACCOUNT_FILES = ("passwd", "group", "shadow")


def disk_path(disk: Path, inside: str, owner: str = "this host") -> Path:
    """Where a path of the host's own filesystem lies on its disk (private dirs only)."""
    relative = inside.lstrip("/")
    for private in sorted(PRIVATE_DIRS, key=len, reverse=True):
        if relative == private or relative.startswith(private + "/"):
            return disk / relative
    raise ValueError(f"{inside} is on the shared image, not on {owner}'s disk")


def lay_disk(disk: Path, document: dict[str, Any], environment: dict[str, str]) -> None:
    """cloud-init's work on a host's disk, and the script (``/run/twin-init``) its first process
    runs: see the module docstring."""
    disk.mkdir(parents=True, exist_ok=True)
    for private in PRIVATE_DIRS:
        (disk / private).mkdir(parents=True, exist_ok=True)
    for name in ("log", "lib/cloud", "tmp"):
        (disk / "var" / name).mkdir(parents=True, exist_ok=True)
    (disk / "var/tmp").chmod(0o1777)
    (disk / "tmp").chmod(0o1777)
    with contextlib.suppress(FileExistsError):
        (disk / "var/run").symlink_to("/run")
    (disk / "run/sshd").mkdir(mode=0o755, exist_ok=True)
    (disk / "root").chmod(0o700)
    # /etc/passwd, group, shadow: the image's, plus cloud-init's users.
    accounts = {name: Path(f"/etc/{name}").read_text() for name in ACCOUNT_FILES}
    users = [u for u in document.get("users", []) if isinstance(u, dict)]
    for offset, user in enumerate(users):
        uid = _FIRST_UID + offset
        name = str(user["name"])
        home = Path(f"/home/{name}")
        shell = str(user.get("shell", "/bin/sh"))
        accounts["passwd"] += f"{name}:x:{uid}:{uid}::{home}:{shell}\n"
        accounts["group"] += f"{name}:x:{uid}:\n"
        accounts["shadow"] += f"{name}:*:19000:0:99999:7:::\n"
        ssh_dir = disk_path(disk, f"{home}/.ssh")
        ssh_dir.mkdir(parents=True, exist_ok=True)
        keys = "".join(f"{key}\n" for key in user.get("ssh_authorized_keys", []))
        (ssh_dir / "authorized_keys").write_text(keys)
        (ssh_dir / "authorized_keys").chmod(0o600)
        ssh_dir.chmod(0o700)
        for path in (ssh_dir.parent, ssh_dir, ssh_dir / "authorized_keys"):
            os.chown(path, uid, uid)
        disk_path(disk, str(home)).chmod(0o750)
    account_dir = disk / "accounts"
    account_dir.mkdir(exist_ok=True)
    for name, text in accounts.items():
        (account_dir / name).write_text(text)
    (account_dir / "shadow").chmod(0o640)
    # ssh_keys: the host keys cloud-init writes to /etc/ssh.
    etc_ssh = disk / "etc/ssh"
    for key_type, text in (document.get("ssh_keys") or {}).items():
        algorithm, _, half = str(key_type).rpartition("_")
        path = etc_ssh / f"ssh_host_{algorithm}_key"
        if half == "public":
            path = path.with_suffix(".pub")
        path.write_text(str(text).rstrip("\n") + "\n")
        path.chmod(0o600 if half == "private" else 0o644)
    host_keys = sorted(etc_ssh.glob("ssh_host_*_key"))
    set_env = " ".join(f"{name}={value}" for name, value in sorted(environment.items()))
    (etc_ssh / "sshd_config").write_text(
        "Port 22\nListenAddress 0.0.0.0\n"
        + "".join(f"HostKey /etc/ssh/{key.name}\n" for key in host_keys)
        + "PidFile /run/sshd.pid\nUsePAM no\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nPermitRootLogin no\n"
        "AuthorizedKeysFile .ssh/authorized_keys\nAllowTcpForwarding yes\n"
        "StrictModes yes\nSubsystem sftp internal-sftp\nLogLevel VERBOSE\n"
        + (f"SetEnv {set_env}\n" if set_env else "")
    )
    # write_files, then runcmd: one script, as cloud-init's scripts-user stage runs it.
    script = ["#!/bin/sh"]
    for item in document.get("write_files", []) or []:
        target = shlex.quote(str(item["path"]))
        content = str(item.get("content", "")).encode()
        script += [
            f"mkdir -p $(dirname {target})",
            f"echo {base64.b64encode(content).decode()} | base64 -d > {target}",
            f"chmod {item.get('permissions', '0644')} {target}",
        ]
    for command in document.get("runcmd", []) or []:
        script.append(command if isinstance(command, str) else shlex.join(map(str, command)))
    runcmd = disk / "var/lib/cloud/runcmd"
    runcmd.write_text("\n".join(script) + "\n")
    runcmd.chmod(0o700)
    (disk / "run/twin-init").write_text(
        "#!/bin/sh\n"
        f"{SSHD} -D -e -f /etc/ssh/sshd_config >> /var/log/sshd.log 2>&1 &\n"
        f"env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root "
        f"timeout {RUNCMD_TIMEOUT_SECONDS} /bin/sh -e /var/lib/cloud/runcmd "
        "> /var/log/cloud-init-output.log 2>&1\n"
        'echo "runcmd exited with $?" >> /var/log/cloud-init-output.log\n'
        "exec sleep infinity\n"
    )
