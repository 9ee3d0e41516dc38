"""The one place that knows which clouds exist: a cloud's name, its host class, and where its
parts live.

Everything that must pick a cloud (the client opening a backend for a host, the agent's
``--cloud``, a worker finding its object store, a job asking for its interruption notice,
the CLI's ``--cloud``) asks this registry, so adding a cloud is one folder beside ``local/``
and ``aws/`` plus one entry here. Parts are named as ``"module:attribute"`` and imported
only when used, so the local cloud never imports boto3 (or the Azure SDKs).
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meadowrun_core.exceptions import BadInputError
from meadowrun_core.hosts import Host

if TYPE_CHECKING:
    from meadowrun_core.agent.cloud import AgentCloud
    from meadowrun_core.backend import Backend
    from meadowrun_core.seams.object_store import ObjectStore


@dataclass(frozen=True)
class Cloud:
    """One cloud. ``backend``: a class with ``open(host) -> Backend`` (the client's side);
    ``agent_cloud``: a class built as ``(home, region)`` (the agent's side); ``worker_side``:
    a module with ``object_store(home)`` and ``interruption_notice(instance_id)`` (what a
    worker process and a running job need, from the environment the agent gave them)."""

    name: str  # the CLI's --cloud, the agent's --cloud and the workers' MEADOWRUN_CLOUD
    host_class: str  # the class name in meadowrun_core.hosts
    host_setting: str  # its MEADOWRUN_HOST value
    backend: str
    agent_cloud: str
    worker_side: str
    built: bool = True

    def open_backend(self, host: Host) -> Backend:
        backend: Backend = _load(self.backend).open(host)
        return backend

    def open_agent_cloud(self, home: Path, region: str | None) -> AgentCloud:
        agent_cloud: AgentCloud = _load(self.agent_cloud)(home, region)
        return agent_cloud

    def worker_object_store(self, home: Path) -> ObjectStore:
        store: ObjectStore = importlib.import_module(self.worker_side).object_store(home)
        return store

    def job_interruption_notice(self, instance_id: str) -> float | None:
        notice: float | None = importlib.import_module(self.worker_side).interruption_notice(
            instance_id
        )
        return notice


CLOUDS: tuple[Cloud, ...] = (
    Cloud(
        name="local",
        host_class="AllocLocalInstance",
        host_setting="local",
        backend="meadowrun_core.local.backend:LocalBackend",
        agent_cloud="meadowrun_core.local.agent_cloud:LocalAgentCloud",
        worker_side="meadowrun_core.local.worker_side",
    ),
    Cloud(
        name="aws",
        host_class="AllocEC2Instance",
        host_setting="ec2",
        backend="meadowrun_core.aws.backend:AwsBackend",
        agent_cloud="meadowrun_core.aws.agent_cloud:AwsAgentCloud",
        worker_side="meadowrun_core.aws.worker_side",
    ),
    Cloud(
        name="azure",
        host_class="AllocAzureVM",
        host_setting="azure",
        backend="meadowrun_core.azure.backend:AzureBackend",
        agent_cloud="meadowrun_core.azure.agent_cloud:AzureAgentCloud",
        worker_side="meadowrun_core.azure.worker_side",
    ),
)

NAMES = tuple(cloud.name for cloud in CLOUDS)
BUILT = tuple(cloud.name for cloud in CLOUDS if cloud.built)


def _load(reference: str) -> Any:
    module, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module), attribute)


def _not_built(cloud: Cloud) -> BadInputError:
    return BadInputError(
        f"{cloud.host_class} ({cloud.name}) is not built yet in meadowrun-core (see README, "
        "'Not built yet'); use the local cloud (host=None or AllocLocalInstance()), "
        "AllocEC2Instance() or AllocAzureVM()"
    )


def named(name: str) -> Cloud:
    """The cloud called ``name`` (``local``, ``aws``, ``azure``), built or not."""
    for cloud in CLOUDS:
        if cloud.name == name:
            return cloud
    raise BadInputError(f"unknown cloud {name!r}: use one of {', '.join(NAMES)}")


def built(name: str) -> Cloud:
    """The cloud called ``name``; a clear error if it is not built yet."""
    cloud = named(name)
    if not cloud.built:
        raise _not_built(cloud)
    return cloud


def of_host(host: Host) -> Cloud:
    """The cloud a host class belongs to; a clear error if it is not built yet."""
    for cloud in CLOUDS:
        if type(host).__name__ == cloud.host_class:
            if not cloud.built:
                raise _not_built(cloud)
            return cloud
    raise BadInputError(f"{type(host).__name__} is not a meadowrun host")


def current() -> Cloud:
    """The cloud this process runs in, as the agent told its workers (``MEADOWRUN_CLOUD``);
    the local cloud outside an instance."""
    return built(os.environ.get("MEADOWRUN_CLOUD", "local") or "local")
