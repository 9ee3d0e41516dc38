"""meadowrun-core: run functions, commands and map jobs on cheap instances, or on the embedded
local cloud by default. ``import meadowrun_core as mr``."""

from meadowrun_core.api import (
    attach_job,
    cancel_job,
    expose_port,
    forget_job,
    job_info,
    job_status,
    run_command,
    run_command_async,
    run_function,
    run_function_async,
    run_map,
    run_map_as_completed,
    run_map_as_completed_async,
    run_map_async,
    wait_job_async,
)
from meadowrun_core.client.job_handle import JobHandle
from meadowrun_core.client.keyed_jobs import JobNotFoundError
from meadowrun_core.client.results import JobCancelledError, OutOfMemoryError
from meadowrun_core.deployment import (
    CondaEnvironmentFile,
    ContainerInterpreter,
    Deployment,
    LocalCurrentInterpreter,
    PipRequirementsFile,
    PoetryProjectPath,
    PreinstalledInterpreter,
    UvProject,
)
from meadowrun_core.exceptions import (
    Attempt,
    BadInputError,
    CommandResult,
    JobTimeoutError,
    MeadowrunError,
    ResourcesNotAvailableError,
    RunMapTasksFailedException,
    TaskException,
    TaskResult,
    WorkerDiedError,
)
from meadowrun_core.host_info import capacity_shortage, launch_limit
from meadowrun_core.hosts import (
    AllocAzureVM,
    AllocEC2Instance,
    AllocLocalInstance,
    Host,
    resolve_host,
)
from meadowrun_core.instance_metadata import current_instance_id, interruption_notice
from meadowrun_core.job_context import JobLogForwarder, report
from meadowrun_core.job_cost import JobCost
from meadowrun_core.resources import Resources

__all__ = [
    "AllocAzureVM",
    "AllocEC2Instance",
    "AllocLocalInstance",
    "Attempt",
    "BadInputError",
    "CommandResult",
    "CondaEnvironmentFile",
    "ContainerInterpreter",
    "Deployment",
    "Host",
    "JobCancelledError",
    "JobCost",
    "JobHandle",
    "JobLogForwarder",
    "JobNotFoundError",
    "JobTimeoutError",
    "LocalCurrentInterpreter",
    "MeadowrunError",
    "OutOfMemoryError",
    "PipRequirementsFile",
    "PoetryProjectPath",
    "PreinstalledInterpreter",
    "Resources",
    "ResourcesNotAvailableError",
    "RunMapTasksFailedException",
    "TaskException",
    "TaskResult",
    "UvProject",
    "WorkerDiedError",
    "attach_job",
    "cancel_job",
    "capacity_shortage",
    "current_instance_id",
    "expose_port",
    "forget_job",
    "interruption_notice",
    "job_info",
    "job_status",
    "launch_limit",
    "report",
    "resolve_host",
    "run_command",
    "run_command_async",
    "run_function",
    "run_function_async",
    "run_map",
    "run_map_as_completed",
    "run_map_as_completed_async",
    "run_map_async",
    "wait_job_async",
]
