"""``@task.meadowrun(...)``: the TaskFlow form of MeadowrunOperator, as ``@task.docker`` is of
DockerOperator. Registered with Airflow through ``task-decorators`` in the provider info."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, ClassVar

from airflow.sdk.bases.decorator import DecoratedOperator, TaskDecorator, task_decorator_factory

from meadowrun_airflow.operators import MeadowrunOperator


class _MeadowrunDecoratedOperator(DecoratedOperator, MeadowrunOperator):  # type: ignore[misc]
    """Runs the decorated function on a meadowrun instance; its return value is the XCom."""

    custom_operator_name: str = "@task.meadowrun"
    template_fields: Sequence[str] = (
        "op_args",
        "op_kwargs",
        "environment",
        "host",
        "meadowrun_resources",
    )
    template_fields_renderers: ClassVar[dict[str, str]] = {
        "op_args": "py",
        "op_kwargs": "py",
        "environment": "json",
        "host": "py",
        "meadowrun_resources": "py",
    }

    def __init__(
        self,
        *,
        python_callable: Callable[..., Any],
        op_args: Collection[Any] | None = None,
        op_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            kwargs_to_upstream={
                "python_callable": python_callable,
                "op_args": op_args,
                "op_kwargs": op_kwargs,
            },
            python_callable=python_callable,
            op_args=op_args,
            op_kwargs=op_kwargs,
            **kwargs,
        )


def meadowrun_task(
    python_callable: Callable[..., Any] | None = None,
    multiple_outputs: bool | None = None,
    **kwargs: Any,
) -> TaskDecorator:
    """Wrap a function into a MeadowrunOperator; takes MeadowrunOperator's arguments
    (``host``, ``resources``, ``deployment``, ``environment``, ``deferrable``, ...)."""
    if kwargs.get("resources") is not None:
        # Airflow coerces ``resources`` of mapped tasks into its own executor resources
        kwargs["meadowrun_resources"] = kwargs.pop("resources")
    return task_decorator_factory(
        python_callable=python_callable,
        multiple_outputs=multiple_outputs,
        decorated_operator_class=_MeadowrunDecoratedOperator,
        **kwargs,
    )
