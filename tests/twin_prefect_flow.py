"""A Prefect flow whose tasks run on a twin instance (EC2 or Azure). Importable there (Prefect and
meadowrun_prefect are in the agent's environment once the client uses Prefect), so it imports
nothing test-only."""

from __future__ import annotations

import socket
from typing import Any

from prefect import flow, task

import meadowrun_core as mr
from meadowrun_prefect import MeadowrunTaskRunner


@task
def hostname_of_instance(x: int) -> tuple[str, int]:
    return socket.gethostname(), x * x


def run_on(host: mr.Host, deployment: mr.Deployment) -> list[Any]:
    @flow(task_runner=MeadowrunTaskRunner(host=host, deployment=deployment))
    def on_a_twin() -> list[Any]:
        futures = hostname_of_instance.map(range(3))
        return [f.result() for f in futures]

    return on_a_twin()
