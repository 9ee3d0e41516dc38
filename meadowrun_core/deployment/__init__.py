"""What runs on the instance: an interpreter (python and libraries) plus code."""

from meadowrun_core.deployment.spec import (
    CondaEnvironmentFile,
    ContainerInterpreter,
    Deployment,
    LocalCurrentInterpreter,
    PipRequirementsFile,
    PoetryProjectPath,
    PreinstalledInterpreter,
    UvProject,
)

__all__ = [
    "CondaEnvironmentFile",
    "ContainerInterpreter",
    "Deployment",
    "LocalCurrentInterpreter",
    "PipRequirementsFile",
    "PoetryProjectPath",
    "PreinstalledInterpreter",
    "UvProject",
]
