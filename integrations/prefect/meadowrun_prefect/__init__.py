"""Prefect integration: ``@flow(task_runner=MeadowrunTaskRunner(...))`` runs a flow's tasks on
meadowrun instances. See docs/prefect.md."""

from meadowrun_prefect.task_runners import (
    MeadowrunOptions,
    MeadowrunTaskRunner,
    PrefectMeadowrunFuture,
    meadowrun_options,
    resources_from_tags,
)

__all__ = [
    "MeadowrunOptions",
    "MeadowrunTaskRunner",
    "PrefectMeadowrunFuture",
    "meadowrun_options",
    "resources_from_tags",
]
