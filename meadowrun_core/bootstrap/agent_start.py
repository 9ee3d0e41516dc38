"""The shell command a client runs over SSH to start meadowrun's agent on a fresh instance
(any cloud): wait for the bootstrap, start the agent detached so it outlives the client, and
return once it has registered (or print why it did not)."""

from __future__ import annotations

import shlex
from collections.abc import Mapping

from meadowrun_core.bootstrap.instance_script import AGENT_PYTHON, wait_for_boot
from meadowrun_core.config import Settings

# How long (0.1 s polls) the launch waits for a started agent to register.
AGENT_START_POLLS = 600
# Tunables the agent takes from the client that launches it, so both agree on leases.
AGENT_SETTINGS = {
    "MEADOWRUN_LEASE_SECONDS": "lease_seconds",
    "MEADOWRUN_VISIBILITY_TIMEOUT": "visibility_timeout_seconds",
    "MEADOWRUN_RECONCILE_INTERVAL": "reconcile_interval_seconds",
}


def agent_command(
    *,
    cloud: str,
    region: str,
    instance_id: str,
    idle_timeout: float,
    settings: Settings,
    launch_timeout: float,
    agent_python: str | None = None,
    environment: Mapping[str, str] | None = None,
) -> str:
    """Start the agent detached (setsid, nohup), state under ~/.meadowrun. ``agent_python``:
    an interpreter the image has (no bootstrap to wait for); ``environment``: the cloud's own
    variables for the agent (its endpoints, metadata service timeouts)."""
    variables = [
        f"{name}={shlex.quote(str(getattr(settings, field)))}"
        for name, field in AGENT_SETTINGS.items()
    ] + [f"{name}={shlex.quote(value)}" for name, value in (environment or {}).items()]
    agent = " ".join(
        shlex.quote(part)
        for part in [
            agent_python or AGENT_PYTHON,
            "-m",
            "meadowrun_core.agent.server",
            "--cloud",
            cloud,
            "--region",
            region,
            "--instance-id",
            instance_id,
            "--idle-timeout",
            str(idle_timeout),
        ]
    )
    log_file = f'"$MEADOWRUN_HOME"/agent-{shlex.quote(instance_id)}.log'
    wait = "" if agent_python else wait_for_boot(launch_timeout) + "; "
    return (
        wait + 'export MEADOWRUN_HOME="$HOME/.meadowrun"; '
        'mkdir -p -m 700 "$MEADOWRUN_HOME" && cd "$MEADOWRUN_HOME" || exit 1; '
        # a simple command in the background: its child holds none of the session's
        # streams, so the SSH command ends at once (a backgrounded list would not)
        f"{' '.join(variables)} setsid nohup {agent} > {log_file} 2>&1 < /dev/null & "
        # return once the agent has registered (it logs that it listens), so the client
        # finds its table item at the first read; an agent that died says why at once
        f"agent=$!; i=0; until grep -qs ' listening on ' {log_file}; do "
        f'if ! kill -0 "$agent" 2>/dev/null || [ "$i" -ge {AGENT_START_POLLS} ]; then '
        f'echo "meadowrun\'s agent did not start; its log ({log_file}):" >&2; '
        f"tail -n 30 {log_file} >&2; exit 5; fi; i=$((i+1)); sleep 0.1; done"
    )
