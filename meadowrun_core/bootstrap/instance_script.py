"""What a fresh instance runs at boot (through cloud-init) to become a meadowrun instance.

cloud-init writes ``BOOTSTRAP_SCRIPT`` (stdlib-only Python) and runs ``boot_commands`` as
root: find a Python of the client's minor version (cloudpickle needs the same one; installed
from the image's package manager when the image lacks it), download the agent bundle from a
presigned URL, check its SHA-256, and unpack it into a venv (``AGENT_PYTHON``). Nothing is
started: the client starts the agent over SSH once ``BOOT_FINISHED`` exists, and reports the
bootstrap's log if ``BOOT_FAILED`` appears instead.
"""

from __future__ import annotations

import shlex

BOOT_DIR = "/var/meadowrun"
BOOT_FINISHED = f"{BOOT_DIR}/boot-finished"
BOOT_FAILED = f"{BOOT_DIR}/boot-failed"
BOOT_LOG = f"{BOOT_DIR}/bootstrap.log"
AGENT_VENV = "/opt/meadowrun/venv"
AGENT_PYTHON = f"{AGENT_VENV}/bin/python"
SCRIPT_PATH = "/opt/meadowrun/bootstrap.py"
SOURCE_PATH = "/opt/meadowrun/agent-source.json"

BOOTSTRAP_SCRIPT = '''\
"""meadowrun's instance bootstrap: unpack the agent bundle into a venv (stdlib only)."""
import hashlib, json, os, subprocess, sys, tarfile, urllib.request

source = json.load(open(sys.argv[1]))
venv = source["venv"]
bundle = "/opt/meadowrun/agent.tar.gz"
digest = hashlib.sha256()
with urllib.request.urlopen(source["url"], timeout=60) as response, open(bundle, "wb") as out:
    while True:
        chunk = response.read(1 << 20)
        if not chunk:
            break
        digest.update(chunk)
        out.write(chunk)
if digest.hexdigest() != source["sha256"]:
    sys.exit("the agent bundle's SHA-256 is %s, not %s" % (digest.hexdigest(), source["sha256"]))
subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
site = "%s/lib/python%d.%d/site-packages" % (venv, sys.version_info[0], sys.version_info[1])
with tarfile.open(bundle) as tar:
    for member in tar.getmembers():
        top, _, rest = member.name.partition("/")
        if member.name.startswith("/") or ".." in member.name.split("/") or not rest:
            sys.exit("unsafe path in the agent bundle: %r" % member.name)
        if not (member.isfile() or member.isdir()):
            continue
        base = {"site-packages": site, "bin": venv + "/bin"}.get(top)
        if base is None:
            continue
        member.name = rest
        tar.extract(member, base)
        if top == "bin":
            os.chmod(os.path.join(base, rest), 0o755)
os.unlink(bundle)
print("meadowrun agent ready in %s" % venv)
'''


def boot_files(url: str, sha256: str) -> list[dict[str, str]]:
    """cloud-init ``write_files``: the script and where to get the bundle (root only: the
    presigned URL is a credential until it expires)."""
    import json

    source = json.dumps({"url": url, "sha256": sha256, "venv": AGENT_VENV})
    return [
        {"path": SCRIPT_PATH, "content": BOOTSTRAP_SCRIPT, "permissions": "0600"},
        {"path": SOURCE_PATH, "content": source, "permissions": "0600"},
    ]


def boot_commands(python: str) -> list[str]:
    """cloud-init ``runcmd`` (one shell script, as root): a Python of minor version
    ``python``, then the bootstrap, its outcome left in ``BOOT_FINISHED``/``BOOT_FAILED``."""
    wanted = shlex.quote(python)
    check = f"import sys; sys.exit(sys.version_info[:2] != tuple(map(int, '{python}'.split('.'))))"
    find = (
        f'PY=""; for candidate in python{wanted} python3; do '
        f'if command -v "$candidate" >/dev/null && "$candidate" -c "{check}"; then '
        'PY="$(command -v "$candidate")"; break; fi; done'
    )
    install = (
        f'if [ -z "$PY" ]; then echo "no Python {python} on this image: installing it"; '
        f"(dnf install -y python{wanted} || yum install -y python{wanted} || "
        f"(apt-get update && apt-get install -y python{wanted} python{wanted}-venv)) || true; fi"
    )
    return [
        f"exec >> {BOOT_LOG} 2>&1",
        find,
        install,
        find,
        f'if [ -z "$PY" ]; then echo "meadowrun needs Python {python} (the client\'s version, '
        f"for cloudpickle) and could not find or install it; use an image that has it "
        f'(AllocEC2Instance(ami_id=...))"; touch {BOOT_FAILED}; exit 1; fi',
        f'"$PY" {SCRIPT_PATH} {SOURCE_PATH} && touch {BOOT_FINISHED} || '
        f"{{ touch {BOOT_FAILED}; exit 1; }}",
    ]


def wait_for_boot(timeout: float) -> str:
    """Shell that waits for the bootstrap to finish; on failure prints its log and exits 3."""
    polls = max(1, int(timeout / 0.2))
    return (
        f"i=0; while [ ! -e {BOOT_FINISHED} ]; do "
        f'if [ -e {BOOT_FAILED} ] || [ "$i" -ge {polls} ]; then '
        f"echo \"meadowrun's bootstrap did not finish on this instance; its log "
        f'({BOOT_LOG}):" >&2; tail -n 40 {BOOT_LOG} >&2; exit 3; fi; '
        "i=$((i+1)); sleep 0.2; done"
    )
