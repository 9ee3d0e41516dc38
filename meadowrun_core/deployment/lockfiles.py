"""Reading the spec files uv cannot read itself: ``poetry.lock`` (to pinned requirements that
uv installs exactly) and conda's ``environment.yml``."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

from meadowrun_core.exceptions import BadInputError


def poetry_lock_to_requirements(text: str, where: str = "poetry.lock") -> str:
    """Every locked package pinned (with its markers), as ``poetry install`` installs them:
    the lock lists the whole dependency closure, so uv installs it without resolving."""
    try:
        lock = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BadInputError(f"{where} is not valid TOML: {exc}") from None
    lines = []
    for package in lock.get("package", []):
        if package.get("optional") and not package.get("groups"):
            continue  # an extra of the project (poetry 1.x locks): not installed by default
        requirement = _poetry_requirement(package)
        if requirement is None:
            continue
        markers = _poetry_markers(package.get("markers"))
        lines.append(f"{requirement} ; {markers}" if markers else requirement)
    if not lines:
        raise BadInputError(f"{where} locks no packages")
    return "\n".join(sorted(lines)) + "\n"


def _poetry_requirement(package: dict[str, Any]) -> str | None:
    name, version = package["name"], package["version"]
    source = package.get("source") or {}
    kind = source.get("type")
    if kind in ("directory", "file"):
        return None  # the user's own code: mirrored, not installed
    if kind == "git":
        ref = source.get("resolved_reference") or source.get("reference") or ""
        return f"{name} @ git+{source['url']}@{ref}"
    if kind == "url":
        return f"{name} @ {source['url']}"
    return f"{name}=={version}"


def _poetry_markers(markers: Any) -> str:
    if not markers:
        return ""
    if isinstance(markers, str):
        return markers
    values = sorted({str(v) for v in markers.values() if v})
    if len(values) != len(markers):
        return ""  # unconditional in at least one group
    return " or ".join(f"({v})" for v in values) if len(values) > 1 else values[0]


@dataclass
class CondaEnvironment:
    name: str = ""
    channels: list[str] = field(default_factory=list)
    conda: list[str] = field(default_factory=list)
    pip: list[str] = field(default_factory=list)

    @property
    def python_version(self) -> str | None:
        for dep in self.conda:
            match = re.fullmatch(r"python\s*(?:==?|>=)\s*(\d+\.\d+)(?:[.\d*]*)", dep.strip())
            if match:
                return match.group(1)
        return None

    @property
    def conda_only(self) -> list[str]:
        """Packages that need conda itself (everything but python and pip)."""
        return [dep for dep in self.conda if re.split(r"[\s=<>!~]", dep.strip())[0] not in _PYTHON]


_PYTHON = {"python", "pip"}


def parse_environment_yml(text: str, where: str = "environment.yml") -> CondaEnvironment:
    """The subset of YAML that ``conda env export`` writes and people write by hand: name,
    channels, and dependencies (strings, and one ``pip:`` list)."""
    env = CondaEnvironment()
    section = ""
    in_pip = False
    for raw in text.splitlines():
        line = raw.split(" #")[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        stripped = line.strip()
        if indent == 0 and ":" in stripped and not stripped.startswith("-"):
            key, _, value = stripped.partition(":")
            section, in_pip = key.strip(), False
            if section == "name":
                env.name = value.strip().strip("'\"")
            continue
        if not stripped.startswith("-"):
            raise BadInputError(f"{where}: cannot read line {raw!r}")
        item = stripped[1:].strip().strip("'\"")
        if section == "channels":
            env.channels.append(item)
        elif section == "dependencies":
            if item == "pip:":
                in_pip, pip_indent = True, indent
                continue
            if in_pip and indent > pip_indent:
                env.pip.append(item)
            else:
                in_pip = False
                env.conda.append(item)
    return env
