"""What every ``meadowrun`` command shares: the app, choosing a cloud, error handling and
output (rich tables on a terminal, ``--json`` for scripts)."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from importlib import metadata
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import typer

from meadowrun_core import clouds
from meadowrun_core.config import meadowrun_home


class _Choice(Protocol):
    @property
    def offer(self) -> Any: ...


if TYPE_CHECKING:
    from meadowrun_core.hosts import Host
    from meadowrun_core.local.allocation_table import SqliteAllocationTable

_T = TypeVar("_T")
_C = TypeVar("_C", bound="_Choice")
_CLOUD_HELP = " or ".join(clouds.BUILT)
_REGION_HELP = (
    "AWS region (default: AWS_DEFAULT_REGION or us-east-1); on azure the location (default: "
    "MEADOWRUN_AZURE_LOCATION or `az configure --defaults location=...`)"
)
_JSON_HELP = "print JSON (stable keys) instead of a table"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"meadowrun-core {metadata.version('meadowrun-core')}")
        raise typer.Exit()


app = typer.Typer(
    help="Manage meadowrun clouds and inspect what runs on them.", no_args_is_help=True
)


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", help="show the version and exit", callback=_version, is_eager=True
    ),
) -> None:
    """Manage meadowrun clouds and inspect what runs on them."""


def _table() -> SqliteAllocationTable:
    from meadowrun_core.local.allocation_table import SqliteAllocationTable

    return _local(lambda: SqliteAllocationTable(meadowrun_home() / "state.db"))


def _local(action: Callable[[], _T]) -> _T:
    """Run a local-cloud action; damaged or vanished state is a message and exit 1 (the
    database itself recovers: see local/sqlite_db.py), never a raw sqlite traceback."""
    import sqlite3

    from meadowrun_core.exceptions import MeadowrunError

    try:
        return action()
    except (MeadowrunError, sqlite3.DatabaseError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


# The clouds the command line manages (install, instances, jobs, ...).
_CLI_CLOUDS = ("local", "aws", "azure")


def _check_cloud(cloud: str) -> None:
    if cloud not in clouds.NAMES:
        raise typer.BadParameter(f"--cloud must be one of {', '.join(clouds.NAMES)}")
    if not clouds.named(cloud).built:
        typer.echo(f"The {cloud} backend is not built yet (see README, 'Not built yet').", err=True)
        raise typer.Exit(2)
    if cloud not in _CLI_CLOUDS:
        typer.echo(
            f"The command line does not manage the {cloud} cloud yet (see README, 'Not built "
            "yet'); its jobs run through the Python API",
            err=True,
        )
        raise typer.Exit(2)


def _host(cloud: str, region: str) -> Host:
    """The host a (checked) cloud name stands for."""
    from meadowrun_core.hosts import AllocAzureVM, AllocEC2Instance, AllocLocalInstance

    if cloud == "azure":
        return AllocAzureVM(location=region or None)
    return AllocEC2Instance(region_name=region or None) if cloud == "aws" else AllocLocalInstance()


def _aws(action: Callable[[], Any]) -> Any:
    """Run an AWS action, turning AWS and configuration errors into a message and exit 1."""
    from botocore.exceptions import BotoCoreError, ClientError

    from meadowrun_core.exceptions import MeadowrunError

    try:
        return action()
    except (MeadowrunError, BotoCoreError, ClientError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


def _guarded(cloud: str, action: Callable[[], _T]) -> _T:
    """Run a cloud's action with that cloud's errors turned into a message and exit 1."""
    if cloud == "azure":
        from meadowrun_core.cli import azure_admin

        result: _T = azure_admin.run(action)
        return result
    return _aws(action) if cloud == "aws" else _local(action)


def _echo_lines(lines: list[str], empty: str) -> None:
    for line in lines or [empty]:
        typer.echo(line)


def _aws_table(region: str | None) -> Any:
    from meadowrun_core.aws import names
    from meadowrun_core.aws.clients import aws_client
    from meadowrun_core.aws.dynamodb_allocation_table import DynamoDbAllocationTable

    return DynamoDbAllocationTable(aws_client("dynamodb", region or None), names.TABLE_NAME)


def _ts(t: float | None) -> str:
    return "-" if t is None else datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def _echo_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True))


def _echo_table(
    columns: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None
) -> None:
    """A rich table on stdout. Cells never wrap (ids stay whole and greppable); piped output
    gets a wide line rather than one cut to 80 columns."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 250, highlight=False)
    table = Table(
        title=title, title_justify="left", box=None, header_style="bold", show_header=any(columns)
    )
    for name in columns:
        numeric = name.split(" ")[0] in _NUMERIC
        table.add_column(name, no_wrap=True, justify="right" if numeric else "left")
    for row in rows:
        table.add_row(*("-" if cell is None else str(cell) for cell in row))
    console.print(table)


_NUMERIC = {"CPU", "GB", "FREE", "JOBS", "AGE", "PID", "SECONDS", "COST", "DURATION"}


def unwrap_help(text: str | None) -> str | None:
    """A docstring as help text: the lines of each paragraph joined (docstrings are wrapped
    for the source, not for the terminal, which wraps again at its own width)."""
    if not text:
        return text
    import inspect

    paragraphs = re.split(r"\n\s*\n", inspect.cleandoc(text))
    return "\n\n".join(" ".join(p.split()) for p in paragraphs)


def unwrap_all_help(group: typer.Typer) -> None:
    """Give every command of ``group`` (and its sub-groups) its docstring as unwrapped help."""
    import inspect

    for command in group.registered_commands:
        if command.help is None and command.callback is not None:
            command.help = unwrap_help(inspect.getdoc(command.callback))
    for sub in group.registered_groups:
        if sub.typer_instance is not None:
            unwrap_all_help(sub.typer_instance)


def cheapest_per_type(choices: Sequence[_C], limit: int) -> list[_C]:
    """The first (cheapest per worker) choice of each instance type or VM size, at most
    ``limit`` of them: a type can come back once per market."""
    shown: dict[str, _C] = {}
    for choice in choices:
        if len(shown) >= limit:
            break
        shown.setdefault(choice.offer.name, choice)
    return list(shown.values())
