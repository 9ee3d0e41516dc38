"""``meadowrun cache``: the result cache of ``cache=True`` calls in a cloud's object store
(``client/result_cache.py``): what it holds, and emptying it."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import typer

from meadowrun_core.cli._common import (
    _CLOUD_HELP,
    _JSON_HELP,
    _REGION_HELP,
    _aws,
    _check_cloud,
    _echo_json,
    _guarded,
    _ts,
    app,
)
from meadowrun_core.config import meadowrun_home

if TYPE_CHECKING:
    from meadowrun_core.seams.object_store import ObjectStore

_T = TypeVar("_T")

cache_app = typer.Typer(
    help="The stored results of cache=True calls (in the cloud's object store).",
    no_args_is_help=True,
)
app.add_typer(cache_app, name="cache")

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*")


def parse_duration(text: str) -> float:
    """Seconds in ``90s``, ``30m``, ``12h``, ``7d``, ``2w`` (a bare number is seconds)."""
    found = _DURATION.fullmatch(text)
    if found is None:
        raise typer.BadParameter(
            f"{text!r} is not a duration: use a number with s, m, h, d or w, e.g. 12h or 7d"
        )
    return float(found.group(1)) * _UNITS[found.group(2) or "s"]


def _store(cloud: str, region: str) -> ObjectStore:
    """The object store of ``cloud``, opened without creating anything."""
    _check_cloud(cloud)
    if cloud == "azure":
        from meadowrun_core.azure.account import default_credential, open_data_plane
        from meadowrun_core.cli import azure_admin

        azure_admin.target(region)
        store: ObjectStore = _run(cloud, lambda: open_data_plane(default_credential(), False).store)
        return store
    if cloud == "aws":
        from meadowrun_core.aws import names
        from meadowrun_core.aws.account import account_id
        from meadowrun_core.aws.clients import aws_client, resolve_region
        from meadowrun_core.aws.s3_object_store import S3ObjectStore

        name = resolve_region(region or None)
        bucket = _aws(lambda: names.bucket_name(account_id(name), name))
        return S3ObjectStore(aws_client("s3", name), bucket, names.OBJECT_PREFIX)
    from meadowrun_core.local.object_store import FileObjectStore

    return FileObjectStore(meadowrun_home() / "objects")


def _run(cloud: str, action: Callable[[], _T]) -> _T:
    """``action`` with this cloud's errors turned into a message and exit 1."""
    return _guarded(cloud, action)


@cache_app.command("info")
def cache_info(
    cloud: str = typer.Option("local", help=_CLOUD_HELP),
    region: str = typer.Option("", help=_REGION_HELP),
    json_output: bool = typer.Option(False, "--json", help=_JSON_HELP),
) -> None:
    """How many results the cache holds, their size, and when the oldest and newest were
    stored. Entries expire 7 days after they were stored."""
    from meadowrun_core.client.result_cache import contents

    store = _store(cloud, region)
    found = _run(cloud, lambda: contents(store))
    if json_output:
        _echo_json(
            {
                "entries": found.entries,
                "bytes": found.bytes,
                "oldest": found.oldest,
                "newest": found.newest,
            }
        )
        return
    typer.echo(
        f"{found.entries} cached result(s), {found.bytes / 1e6:.1f} MB; oldest "
        f"{_ts(found.oldest)}, newest {_ts(found.newest)}"
    )


@cache_app.command("clear")
def cache_clear(
    older_than: str = typer.Option(
        "", "--older-than", help="only results stored longer ago than this: 30m, 12h, 7d"
    ),
    cloud: str = typer.Option("local", help=_CLOUD_HELP),
    region: str = typer.Option("", help=_REGION_HELP),
) -> None:
    """Delete the cached results (all of them, or those stored longer ago than --older-than),
    so the next cache=True call runs again."""
    from meadowrun_core.client.result_cache import clear

    seconds = parse_duration(older_than) if older_than else None
    store = _store(cloud, region)
    started = time.monotonic()
    count, size = _run(cloud, lambda: clear(store, seconds))
    typer.echo(
        f"removed {count} cached result(s), {size / 1e6:.1f} MB "
        f"({time.monotonic() - started:.1f} s)"
    )
