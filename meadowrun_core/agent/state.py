"""What the parts of an instance's agent share: the connection handler starts jobs in it, the
job runners use its workers and folders, and the reconciler watches it."""

from __future__ import annotations

import asyncio
import functools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from meadowrun_core.agent.cloud import AgentCloud
from meadowrun_core.agent.map_feeder import MapFeeder
from meadowrun_core.agent.running_job import RunningJob

if TYPE_CHECKING:
    from meadowrun_core.agent.held_rooms import HeldRoom
from meadowrun_core.agent.worker_pool import WorkerPool
from meadowrun_core.config import Settings
from meadowrun_core.deployment.spec import PreparedDeployment
from meadowrun_core.frames import DeploymentJson
from meadowrun_core.seams.allocation_table import AllocationTable
from meadowrun_core.seams.object_store import ObjectStore
from meadowrun_core.seams.task_queue import TaskQueue
from meadowrun_core.serialization import Signer


@dataclass(frozen=True)
class InstanceFolders:
    """This instance's folder (``<home>/instances/<id>``): PID files, mirrored code,
    environments and scratch space of its jobs."""

    dir: Path

    @property
    def pid_dir(self) -> Path:
        return self.dir / "pids"

    @property
    def code_dir(self) -> Path:
        return self.dir / "code"

    @property
    def interruption_file(self) -> Path:
        """When the instance will be interrupted, for its jobs (``job_context``)."""
        return self.dir / "interruption_at"

    @functools.cached_property
    def function_scratch(self) -> Path:
        """Where function jobs with no better working directory run (made on first use)."""
        scratch = self.dir / "work"
        scratch.mkdir(exist_ok=True)
        return scratch

    def pid_file(self, job_id: str) -> Path:
        """The file a job's worker (or command) writes its PID to; the reconciler reads it."""
        return self.pid_dir / f"{job_id}.pid"


@dataclass(eq=False)
class AgentState:
    """The instance, its cloud, its workers and the jobs running on it."""

    instance_id: str
    home: Path
    folders: InstanceFolders
    settings: Settings
    cloud: AgentCloud
    pool: WorkerPool
    # read it here each time: the reconciler swaps in a stand-in when the home was deleted
    table: AllocationTable
    jobs: dict[str, RunningJob] = field(default_factory=dict)
    # finished calls' rooms kept for their client's next call, by job id (``held_rooms``)
    held: dict[str, HeldRoom] = field(default_factory=dict)
    # a map job's feeder on this instance, by its request queue, while it has slots here
    feeders: dict[str, MapFeeder] = field(default_factory=dict)
    shutdown: asyncio.Event = field(default_factory=asyncio.Event)
    # the last run frame's deployment and its parsed form (``job_setup._prepared``)
    last_deployment: tuple[DeploymentJson, PreparedDeployment] | None = None
    # when a job last started or ended here (the idle timeout counts from it)
    last_activity: float = field(default_factory=time.monotonic)

    @property
    def signer(self) -> Signer:
        return self.cloud.signer

    @property
    def store(self) -> ObjectStore:
        return self.cloud.store

    @property
    def queues(self) -> TaskQueue:
        return self.cloud.queues
