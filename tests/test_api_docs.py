"""Every public function and class of ``meadowrun_core`` documents each of its parameters."""

from __future__ import annotations

import inspect
import pydoc
import re
from typing import Any

import pytest

import meadowrun_core as mr

# members whose docstrings a user reads besides the exported names themselves
_MEMBERS = [
    mr.Deployment.mirror_local,
    mr.Deployment.git_repo,
    mr.Deployment.container_image,
    mr.Deployment.preinstalled_interpreter,
    mr.JobHandle.result,
    mr.JobHandle.cancel,
    mr.JobHandle.wait_started,
    mr.JobHandle.next_report,
    mr.JobHandle.reach,
]


def _documented() -> list[tuple[str, Any]]:
    items = [
        (name, getattr(mr, name))
        for name in mr.__all__
        if inspect.isfunction(getattr(mr, name)) or inspect.isclass(getattr(mr, name))
    ]
    return items + [(member.__qualname__, member) for member in _MEMBERS]


def undocumented_parameters(obj: Any) -> list[str]:
    """The parameters of ``obj`` (a function, or a class's constructor) that its docstring
    does not name as ``name``; ["<no docstring>"] without one."""
    doc = inspect.getdoc(obj) if obj.__doc__ else None
    if not doc or (inspect.isclass(obj) and obj.__doc__ == _inherited_doc(obj)):
        return ["<no docstring>"]
    try:
        parameters = inspect.signature(obj).parameters.values()
    except (TypeError, ValueError):
        return []
    return [
        p.name
        for p in parameters
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        and p.name not in ("self", "cls")
        and not re.search(rf"``{re.escape(p.name)}``", doc)
    ]


def _inherited_doc(cls: type) -> str | None:
    for base in cls.__mro__[1:]:
        if base.__doc__:
            return base.__doc__
    return None


@pytest.mark.parametrize(("name", "obj"), _documented(), ids=[n for n, _ in _documented()])
def test_each_parameter_is_documented(name: str, obj: Any) -> None:
    assert undocumented_parameters(obj) == [], f"{name}: document these parameters"


def test_the_check_fails_on_a_missing_parameter() -> None:
    def documented(a: int, b: int = 2) -> None:
        """Uses ``a``."""

    def bare(a: int) -> None:
        pass

    assert undocumented_parameters(documented) == ["b"]
    assert undocumented_parameters(bare) == ["<no docstring>"]


def test_help_of_run_map_explains_concurrency_and_attempts() -> None:
    text = pydoc.plain(pydoc.render_doc(mr.run_map))
    assert "num_concurrent_tasks" in text and "max_num_task_attempts" in text
    assert re.search(r"num_concurrent_tasks``\s*\(default\s*None", text)
    assert "at most this many tasks run at the same time" in " ".join(text.split())
    assert "a task that fails is run again" in " ".join(text.split())
    assert "Example" in text
