"""Container deployments: a worker that runs inside an image, with docker or podman.

The agent starts workers as ``<python> -m meadowrun_core.worker`` with one end of a socket
pair inherited. For an image, ``<python>`` is a small launcher script: it starts
``ENGINE run`` with the instance's state directory mounted and hands the inherited socket to
the process in the container over a mounted unix socket (SCM_RIGHTS), so the worker speaks to
its agent exactly as it does outside a container. A watchdog removes the container if the
launcher is killed. The image needs meadowrun-core installed (``pip install meadowrun-core``).

Registry credentials come from the secret store by name, are written to a private temporary
config directory only for ``login`` and ``pull``, and deleted after.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meadowrun_core.deployment.process import DeploymentError, run_tool

_ENGINES = ("docker", "podman")
_probe_cache: dict[str, tuple[float, str]] = {}

# runs inside the container: take the worker's socket from the launcher, then be the worker
HANDOFF_SHIM = (
    "import os,runpy,socket,sys;"
    "s=socket.socket(socket.AF_UNIX);s.connect(os.environ.pop('MEADOWRUN_HANDOFF'));"
    "_,fds,_,_=socket.recv_fds(s,16,1);s.close();"
    "os.environ['MEADOWRUN_WORKER_FD']=str(fds[0]);sys.argv=['meadowrun_core.worker'];"
    "runpy.run_module('meadowrun_core.worker',run_name='__main__',alter_sys=True)"
)


@dataclass(frozen=True)
class Engine:
    name: str
    path: str


def find_engine() -> tuple[Engine | None, str]:
    """A container engine that answers (``info`` succeeds), else None and why not."""
    reasons = []
    for name in _ENGINES:
        path = shutil.which(name)
        if path is None:
            reasons.append(f"{name} is not installed")
            continue
        now = time.monotonic()
        cached = _probe_cache.get(path)
        if cached is None or now - cached[0] > 30:
            proc = subprocess.run(
                [path, "info"], capture_output=True, timeout=30, check=False, text=True
            )
            problem = "" if proc.returncode == 0 else _last_line(proc.stderr or proc.stdout)
            cached = (now, problem)
            _probe_cache[path] = cached
        if not cached[1]:
            return Engine(name, path), ""
        reasons.append(f"{name} at {path} does not answer: {cached[1]}")
    return None, "; ".join(reasons)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def require_engine(image: str, error: type[Exception] = DeploymentError) -> Engine:
    engine, why = find_engine()
    if engine is None:
        raise error(
            f"the container image {image!r} needs docker or podman with a running engine on "
            f"the instance, and there is none ({why})"
        )
    return engine


def registry_of(image: str) -> str:
    first = image.split("/")[0]
    if "/" in image and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


def parse_credentials(value: str) -> tuple[str, str]:
    """A registry secret: ``username:password`` or JSON ``{"username": .., "password": ..}``."""
    try:
        data = json.loads(value)
        return str(data["username"]), str(data["password"])
    except (ValueError, TypeError, KeyError):
        username, sep, password = value.strip().partition(":")
        if not sep:
            raise DeploymentError(
                "a registry secret must be 'username:password' or JSON with username and password"
            ) from None
        return username, password


def ensure_image(
    engine: Engine,
    image: str,
    credentials_secret: str | None,
    secrets: Callable[[str], str] | None,
) -> None:
    """Pull ``image`` unless present, logging in with the named secret first if given."""
    present = subprocess.run(
        [engine.path, "image", "inspect", image], capture_output=True, check=False
    )
    if present.returncode == 0:
        return
    with tempfile.TemporaryDirectory(prefix="meadowrun-registry-") as config:
        os.chmod(config, 0o700)
        env = {**os.environ, "DOCKER_CONFIG": config, "REGISTRY_AUTH_FILE": f"{config}/auth.json"}
        hide: list[str] = []
        if credentials_secret is not None:
            if secrets is None:
                raise DeploymentError("no secret store to read registry credentials from")
            username, password = parse_credentials(secrets(credentials_secret))
            hide = [password]
            run_tool(
                login_command(engine, registry_of(image), username),
                f"cannot log in to {registry_of(image)} with secret {credentials_secret!r}",
                env=env,
                stdin=password.encode(),
                hide=hide,
            )
        run_tool([engine.path, "pull", image], f"cannot pull the image {image}", env=env, hide=hide)


def login_command(engine: Engine, registry: str, username: str) -> list[str]:
    """The password goes on standard input, never on the command line."""
    return [engine.path, "login", "--username", username, "--password-stdin", registry]


def run_command(
    engine: Engine,
    image: str,
    *,
    name: str,
    mounts: Sequence[str],
    env_names: Sequence[str],
    command: Sequence[str],
) -> list[str]:
    """The exact ``run`` command for a worker; variables are passed by name only, so their
    values never appear on a command line."""
    argv = [engine.path, "run", "--rm", "--interactive", "--init", "--name", name]
    argv += ["--network", "host", "--pid", "host", "--user", f"{os.getuid()}:{os.getgid()}"]
    for mount in dict.fromkeys(mounts):
        argv += ["--volume", f"{mount}:{mount}"]
    for variable in dict.fromkeys(env_names):
        argv += ["--env", variable]
    return [*argv, image, *command]


def write_launcher(spec: Mapping[str, Any], directory: Path) -> str:
    """An executable that the worker pool runs as ``python``; it starts the container."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "container.json").write_text(json.dumps(dict(spec)))
    script = directory / "python"
    if not script.exists():
        tmp = directory / f".python.{os.getpid()}.tmp"
        tmp.write_text(
            f"#!/bin/sh\nexec {sys.executable} -m meadowrun_core.deployment.containers "
            f"{directory / 'container.json'}\n"
        )
        tmp.chmod(0o700)
        os.replace(tmp, script)
    return str(script)


def launch(spec_path: str) -> int:
    """Run one worker in a container, handing it the inherited socket (see module doc)."""
    spec = json.loads(Path(spec_path).read_text())
    engine = Engine(spec["engine"], spec["engine_path"])
    worker_fd = int(os.environ.pop("MEADOWRUN_WORKER_FD"))
    home = os.environ["MEADOWRUN_HOME"]
    handoff_dir = tempfile.mkdtemp(prefix="handoff-", dir=spec["run_dir"])
    path = os.path.join(handoff_dir, "s")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(1)
    name = f"meadowrun-{uuid.uuid4().hex[:12]}"
    names = ["MEADOWRUN_HOME", "MEADOWRUN_INSTANCE_ID", "MEADOWRUN_HANDOFF", "PYTHONUNBUFFERED"]
    names += [n for n in os.environ.get("MEADOWRUN_CONTAINER_ENV", "").split(",") if n]
    argv = run_command(
        engine,
        spec["image"],
        name=name,
        mounts=[home, handoff_dir, *spec.get("mounts", [])],
        env_names=names,
        command=["python", "-c", HANDOFF_SHIM],
    )
    env = {**os.environ, "MEADOWRUN_HANDOFF": path}
    _watchdog(engine, name)
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL)
    listener.settimeout(0.5)
    try:
        while proc.poll() is None:
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                socket.send_fds(conn, [b"s"], [worker_fd])
            os.close(worker_fd)
            break
        return proc.wait()
    finally:
        listener.close()
        shutil.rmtree(handoff_dir, ignore_errors=True)


def _watchdog(engine: Engine, name: str) -> None:
    """A child that removes the container once this launcher is gone, even if SIGKILLed."""
    read_end, write_end = os.pipe()
    if os.fork() == 0:
        os.close(write_end)
        os.closerange(3, read_end)
        os.closerange(read_end + 1, 1 << 16)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.setsid()
        while os.read(read_end, 1):
            pass
        subprocess.run([engine.path, "rm", "--force", name], capture_output=True, check=False)
        os._exit(0)
    os.close(read_end)  # the write end stays open, inherited by nothing else, until we die
    os.set_inheritable(write_end, False)


if __name__ == "__main__":
    sys.exit(launch(sys.argv[1]))
