"""The ``meadowrun`` command: manage clouds and show their state."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import typer

from meadowrun_core.config import meadowrun_home
from meadowrun_core.local import admin
from meadowrun_core.local.allocation_table import SqliteAllocationTable

if TYPE_CHECKING:
    from meadowrun_core.seams.allocation_table import InstanceRecord

app = typer.Typer(
    help="Manage meadowrun clouds and inspect what runs on them.", no_args_is_help=True
)

_T = TypeVar("_T")
_CLOUDS = ("local", "aws", "azure")
_BUILT = ("local", "aws")
_CLOUD_HELP = "local or aws"
_REGION_HELP = "AWS region (default: AWS_DEFAULT_REGION or us-east-1)"


def _table() -> SqliteAllocationTable:
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


def _check_cloud(cloud: str) -> None:
    if cloud not in _CLOUDS:
        raise typer.BadParameter(f"--cloud must be one of {', '.join(_CLOUDS)}")
    if cloud not in _BUILT:
        typer.echo(f"The {cloud} backend is not built yet (see README, 'Not built yet').", err=True)
        raise typer.Exit(2)


def _aws(action: Callable[[], Any]) -> Any:
    """Run an AWS action, turning AWS and configuration errors into a message and exit 1."""
    from botocore.exceptions import BotoCoreError, ClientError

    from meadowrun_core.exceptions import MeadowrunError

    try:
        return action()
    except (MeadowrunError, BotoCoreError, ClientError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


def _echo_lines(lines: list[str], empty: str) -> None:
    for line in lines or [empty]:
        typer.echo(line)


def _aws_table(region: str | None) -> Any:
    from meadowrun_core.aws import names
    from meadowrun_core.aws.clients import aws_client
    from meadowrun_core.aws.dynamodb_allocation_table import DynamoDbAllocationTable

    return DynamoDbAllocationTable(aws_client("dynamodb", region or None), names.TABLE_NAME)


def _ts(t: float) -> str:
    return datetime.fromtimestamp(t).strftime("%H:%M:%S")


@app.command()
def install(
    cloud: str = typer.Option("local", help=_CLOUD_HELP),
    region: str = typer.Option("", help=_REGION_HELP),
) -> None:
    """Create what a cloud needs (local: the state directory and its key; aws: the table,
    bucket, secrets, security group, instance role and the scheduled manager)."""
    _check_cloud(cloud)
    if cloud == "aws":
        from meadowrun_core.aws import install as aws_install

        _echo_lines(_aws(lambda: aws_install.install(region or None)), "nothing to do")
        return
    from meadowrun_core.hosts import AllocLocalInstance
    from meadowrun_core.local.backend import LocalBackend

    backend = LocalBackend.open(AllocLocalInstance())
    typer.echo(
        f"local cloud ready in {backend.home} (limit {backend.max_cpu:g} CPU / "
        f"{backend.max_memory_gb:g} GB)"
    )


@app.command()
def uninstall(
    cloud: str = typer.Option("local", help=_CLOUD_HELP),
    region: str = typer.Option("", help=_REGION_HELP),
) -> None:
    """Remove everything install created (local: terminates instances, deletes the state)."""
    _check_cloud(cloud)
    if cloud == "aws":
        from meadowrun_core.aws import install as aws_install

        _echo_lines(_aws(lambda: aws_install.uninstall(region or None)), "nothing to remove")
        return
    import shutil

    admin.clean()
    home = meadowrun_home()
    shutil.rmtree(home)
    typer.echo(f"removed {home}")


@app.command()
def clean(
    cloud: str = typer.Option("local", help=_CLOUD_HELP),
    region: str = typer.Option("", help=_REGION_HELP),
) -> None:
    """Terminate every instance this cloud launched and delete its task queues."""
    _check_cloud(cloud)
    if cloud == "aws":
        from meadowrun_core.aws import install as aws_install

        _echo_lines(_aws(lambda: aws_install.clean(region or None)), "nothing to clean")
        return
    report = _local(admin.clean)
    typer.echo(
        f"terminated {report.instances_terminated} instance(s), "
        f"deleted {report.queues_deleted} queue(s), removed {report.instance_dirs_removed} "
        f"instance folder(s) and {report.objects_removed} unused object(s)"
    )


def _local_state(r: InstanceRecord) -> str:
    return (
        "interrupting"
        if r.interruption_at
        else "launching"
        if r.address is None
        else "alive"
        if admin.agent_is_alive(r.agent_pid)
        else "dead"
    )


def _aws_state(r: InstanceRecord) -> str:
    """From the table alone: an instance whose heartbeat stopped is one the manager ends."""
    from meadowrun_core.local.allocation_table import INSTANCE_DEAD_AFTER_SECONDS

    if r.interruption_at:
        return "interrupting"
    if r.address is None:
        return "launching"
    return "alive" if r.last_heartbeat >= time.time() - INSTANCE_DEAD_AFTER_SECONDS else "stale"


def _echo_untracked(known: set[str]) -> None:
    """Agents of this home that the table does not list (its state was deleted or damaged)."""
    for pid, instance_id in sorted(admin.home_agents().items()):
        if instance_id not in known:
            typer.echo(
                f"{instance_id}: agent pid {pid} runs but is not in the state table; "
                "`meadowrun clean` stops it",
                err=True,
            )


@app.command()
def instances(
    cloud: str = typer.Option("local", help=_CLOUD_HELP),
    region: str = typer.Option("", help=_REGION_HELP),
) -> None:
    """Instances of a cloud with their free capacity and running jobs."""
    _check_cloud(cloud)
    if cloud == "aws":
        rows = _aws(lambda: _aws_table(region).list_instances())
        state = _aws_state
    else:
        rows = _local(lambda: _table().list_instances())
        state = _local_state
        _echo_untracked({r.instance_id for r in rows})
    if not rows:
        typer.echo("no instances")
        return
    typer.echo(
        f"{'INSTANCE':14} {'TYPE':22} {'FREE CPU':>9} {'FREE GB':>8} {'JOBS':>5} "
        f"{'AGE':>6} {'STATE':10} ADDRESS"
    )
    now = time.time()
    for r in rows:
        typer.echo(
            f"{r.instance_id:14} {r.instance_type:22} {r.cpu_free:>9g} {r.memory_free:>8g} "
            f"{r.running_jobs:>5} {now - r.created:>5.0f}s {state(r):10} {r.address or '-'}"
        )


@app.command()
def jobs(history: int = typer.Option(0, help="also show this many finished jobs")) -> None:
    """Running jobs (allocations), and optionally recently finished ones."""
    table = _table()
    allocations = table.list_allocations()
    if not allocations:
        typer.echo("no running jobs")
    else:
        typer.echo(
            f"{'JOB':34} {'INSTANCE':14} {'CPU':>4} {'GB':>5} {'PID':>7} {'STARTED':8} DESCRIPTION"
        )
        for a in allocations:
            typer.echo(
                f"{a.job_id:34} {a.instance_id:14} {a.cpu:>4g} {a.memory_gb:>5g} "
                f"{a.worker_pid or '-':>7} {_ts(a.created):8} {a.description}"
            )
    if history:
        typer.echo("\nfinished:")
        for row in table.job_history(history):
            typer.echo(
                f"{row['job_id']:34} {row['instance_id']:14} {row['outcome']:24} "
                f"{row['ended'] - row['started']:8.2f}s {row['description']}"
            )


@app.command()
def logs(instance_id: str, lines: int = typer.Option(50, help="how many lines")) -> None:
    """The agent log of an instance."""
    path = meadowrun_home() / "instances" / instance_id / "agent.log"
    if not path.exists():
        raise typer.BadParameter(f"no log for instance {instance_id} at {path}")
    for line in path.read_text().splitlines()[-lines:]:
        typer.echo(line)


@app.command()
def costs(
    history: int = typer.Option(10000, help="how many finished jobs to count"),
    cloud: str = typer.Option("local", help=_CLOUD_HELP),
    region: str = typer.Option("", help=_REGION_HELP),
) -> None:
    """What finished jobs cost: each job pays its share (by CPU) of its instance's price.

    aws: also what the same instance-seconds would have cost on-demand (live prices, cached
    4 h; MEADOWRUN_AWS_PRICE_FIXTURE=<dir> uses a price fixture)."""
    from meadowrun_core.aws.costs import job_costs

    _check_cloud(cloud)
    if cloud == "aws":
        _aws_costs(history, region)
        return
    report = job_costs(_table(), limit=history)
    typer.echo(
        f"{report.jobs} jobs, {report.job_seconds:.1f} job-seconds, ${report.cost:.6f} at local "
        "list prices (the local cloud is free; prices model general-purpose cloud instances)"
    )


def _aws_costs(history: int, region: str) -> None:
    from meadowrun_core.aws.clients import resolve_region
    from meadowrun_core.aws.costs import job_costs
    from meadowrun_core.aws.pricing import default_price_source

    region = resolve_region(region)
    prices = None
    try:
        prices = default_price_source().prices(region)
    except Exception as exc:  # the comparison is optional; the bill is not
        typer.echo(f"no on-demand prices for {region} ({exc}): not compared", err=True)
    report = _aws(lambda: job_costs(_aws_table(region), prices, limit=history))
    typer.echo(
        f"{report.jobs} jobs, {report.job_seconds:.1f} job-seconds, "
        f"{report.instance_seconds:.1f} instance-seconds, ${report.cost:.6f} at the prices paid"
    )
    if report.on_demand_cost is not None:
        saved = f" (saved {report.savings:.0%})" if report.savings is not None else ""
        typer.echo(f"${report.on_demand_cost:.6f} on-demand for the same instance-seconds{saved}")
    if report.unpriced_types:
        typer.echo(
            f"no on-demand price for {', '.join(report.unpriced_types)}: counted at the price paid",
            err=True,
        )


@app.command()
def interrupt(
    instance_id: str, delay: float = typer.Option(2.0, help="seconds from notice to kill")
) -> None:
    """Simulate a spot interruption of a local instance (notice now, killed after DELAY)."""
    admin.interrupt(instance_id, delay)
    typer.echo(f"interruption notice sent to {instance_id}; it is killed in {delay:g} s")


@app.command("instance-types")
def instance_types(
    cpu: float = typer.Option(1, "--cpu", help="logical CPUs per worker"),
    memory: float = typer.Option(2, "--memory", help="GB of memory per worker"),
    gpus: float = typer.Option(0, "--gpus", help="GPUs per worker"),
    gpu_memory: float = typer.Option(0, "--gpu-memory", help="GB of GPU memory per worker"),
    max_eviction_rate: float = typer.Option(
        80, "--max-eviction-rate", help="highest spot interruption % accepted; 0: on-demand"
    ),
    flags: list[str] = typer.Option(  # noqa: B008
        [], "--flags", help="e.g. nvidia, avx512, arm64 (repeat or comma-separate)"
    ),
    workers: int = typer.Option(1, "--workers", help="workers to place (bin-packing)"),
    region: str = typer.Option("", "--region", help="default: AWS_DEFAULT_REGION or us-east-1"),
    limit: int = typer.Option(15, "--limit", help="how many types to show"),
) -> None:
    """EC2 instance types that fit, cheapest per worker first, with prices and spot risk.

    Live prices (Pricing API, spot price history, Spot Instance Advisor), cached 4 h;
    MEADOWRUN_AWS_PRICE_FIXTURE=<dir> uses a price fixture instead."""
    from botocore.exceptions import BotoCoreError, ClientError

    from meadowrun_core.aws.clients import resolve_region
    from meadowrun_core.aws.instance_selection import choose_instance_types
    from meadowrun_core.aws.instance_types import load_offers
    from meadowrun_core.aws.pricing import DiskCache, default_price_source
    from meadowrun_core.exceptions import MeadowrunError
    from meadowrun_core.resources import Resources

    region = resolve_region(region)
    try:
        resources = Resources(
            logical_cpu=cpu,
            memory_gb=memory,
            gpus=gpus,
            gpu_memory=gpu_memory or None,
            max_eviction_rate=max_eviction_rate,
            flags=tuple(f for flag in flags for f in flag.split(",") if f.strip()),
        )
        offers, prices = load_offers(region, default_price_source(), cache=DiskCache())
        choices = choose_instance_types(offers, resources, workers, region)
    except (MeadowrunError, ValueError, BotoCoreError, ClientError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(
        f"{'TYPE':16} {'VCPU':>5} {'GB':>7} {'GPUS':>4} {'ON-DEMAND':>10} {'SPOT':>9} "
        f"{'INTERRUPT':>9} {'MARKET':9} {'WORKERS':>7} {'$/H/WORKER':>10}"
    )
    shown: set[str] = set()
    for c in choices:
        if c.offer.name in shown or len(shown) >= limit:
            continue
        shown.add(c.offer.name)
        o = c.offer
        spot = "-" if o.spot_price is None else f"{o.spot_price:.4f}"
        typer.echo(
            f"{o.name:16} {o.logical_cpu:>5g} {o.memory_gb:>7g} {o.gpus:>4} "
            f"{o.on_demand_price or 0:>10.4f} {spot:>9} "
            f"{prices.bucket_label(o.interruption_bucket):>9} {c.market:9} "
            f"{c.workers_per_instance:>7} {c.price_per_worker:>10.4f}"
        )


secret_app = typer.Typer(help="Named secrets (git SSH keys, registry credentials).")
app.add_typer(secret_app, name="secret")


def _secret_store(cloud: str, region: str) -> Any:
    """The secret store of ``cloud``: a private file locally, Secrets Manager on AWS."""
    _check_cloud(cloud)
    if cloud == "aws":
        from meadowrun_core.aws.clients import resolve_region
        from meadowrun_core.aws.secret_store import SecretsManagerStore

        return SecretsManagerStore(resolve_region(region or None))
    from meadowrun_core.local.secrets import LocalSecretStore

    return LocalSecretStore(meadowrun_home())


@secret_app.command("set")
def secret_set(
    name: str,
    file: str = typer.Option("", help="read the value from this file (else from stdin)"),
    cloud: str = typer.Option("local", help=_CLOUD_HELP),
    region: str = typer.Option("", help=_REGION_HELP),
) -> None:
    """Store a secret under NAME in a cloud's secret store (the value is read from --file or
    standard input, never from the command line)."""
    import sys
    from pathlib import Path

    value = Path(file).read_text() if file else sys.stdin.read()
    store = _secret_store(cloud, region)
    _aws(lambda: store.put(name, value)) if cloud == "aws" else store.put(name, value)
    typer.echo(f"secret {name!r} stored ({cloud})")


@secret_app.command("delete")
def secret_delete(
    name: str,
    cloud: str = typer.Option("local", help=_CLOUD_HELP),
    region: str = typer.Option("", help=_REGION_HELP),
) -> None:
    """Remove the secret NAME."""
    store = _secret_store(cloud, region)
    found = _aws(lambda: store.delete(name)) if cloud == "aws" else store.delete(name)
    typer.echo(f"secret {name!r} {'deleted' if found else 'was not there'}")


@secret_app.command("list")
def secret_list(
    cloud: str = typer.Option("local", help=_CLOUD_HELP),
    region: str = typer.Option("", help=_REGION_HELP),
) -> None:
    """Names of the stored secrets (never their values)."""
    store = _secret_store(cloud, region)
    for name in _aws(store.names) if cloud == "aws" else store.names():
        typer.echo(name)


if __name__ == "__main__":
    app()
