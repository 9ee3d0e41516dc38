"""``meadowrun install``, ``uninstall``, ``clean``, ``interrupt``, ``instance-types`` and
``secret``: setting clouds up, tearing them down, and what they offer."""

from __future__ import annotations

from typing import Any

import typer

from meadowrun_core.cli._common import (
    _CLOUD_HELP,
    _REGION_HELP,
    _aws,
    _check_cloud,
    _echo_lines,
    _guarded,
    _local,
    app,
    cheapest_per_type,
)
from meadowrun_core.config import meadowrun_home
from meadowrun_core.local import admin


@app.command()
def install(
    cloud: str = typer.Option("local", help=_CLOUD_HELP),
    region: str = typer.Option("", help=_REGION_HELP),
) -> None:
    """Create what a cloud needs (local: the state directory and its key; aws: the table,
    bucket, secrets, security group, instance role and the scheduled manager; azure: the
    resource group, storage account, Key Vault and its secrets, VNet and the VMs' identity)."""
    _check_cloud(cloud)
    if cloud == "azure":
        from meadowrun_core.cli import azure_admin

        _echo_lines(azure_admin.install(region), "nothing to do")
        return
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
    if cloud == "azure":
        from meadowrun_core.cli import azure_admin

        _echo_lines(azure_admin.uninstall(region), "nothing to remove")
        return
    if cloud == "aws":
        from meadowrun_core.aws import uninstall as aws_uninstall

        _echo_lines(_aws(lambda: aws_uninstall.uninstall(region or None)), "nothing to remove")
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
    """Terminate every instance this cloud launched and delete its task queues (azure: the
    VMs with no live agent and the queues no running job uses)."""
    _check_cloud(cloud)
    if cloud == "azure":
        from meadowrun_core.cli import azure_admin

        _echo_lines(azure_admin.clean(region), "nothing to clean")
        return
    if cloud == "aws":
        from meadowrun_core.aws import uninstall as aws_uninstall

        _echo_lines(_aws(lambda: aws_uninstall.clean(region or None)), "nothing to clean")
        return
    report = _local(admin.clean)
    typer.echo(
        f"terminated {report.instances_terminated} instance(s), "
        f"deleted {report.queues_deleted} queue(s), removed {report.instance_dirs_removed} "
        f"instance folder(s) and {report.objects_removed} unused object(s)"
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
    region: str = typer.Option("", "--region", help=_REGION_HELP),
    limit: int = typer.Option(15, "--limit", help="how many types to show"),
    cloud: str = typer.Option("aws", help="aws or azure"),
) -> None:
    """Instance types (EC2) or VM sizes (Azure) that fit, cheapest per worker first, with
    prices and spot risk.

    AWS: live prices (Pricing API, spot price history, Spot Instance Advisor), cached 4 h;
    MEADOWRUN_AWS_PRICE_FIXTURE=<dir> uses a price fixture instead. Azure: the Retail Prices
    API and Spot eviction bands, cached 4 h."""
    if cloud == "azure":
        from meadowrun_core.cli import azure_admin
        from meadowrun_core.resources import Resources

        resources = azure_admin.run(
            lambda: Resources(
                logical_cpu=cpu,
                memory_gb=memory,
                gpus=gpus,
                gpu_memory=gpu_memory or None,
                max_eviction_rate=max_eviction_rate,
                flags=tuple(f for flag in flags for f in flag.split(",") if f.strip()),
            )
        )
        azure_admin.instance_types(region, resources, workers, limit)
        return
    if cloud != "aws":
        raise typer.BadParameter("--cloud must be aws or azure")
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
    for c in cheapest_per_type(choices, limit):
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
    """The secret store of ``cloud``: a private file locally, Secrets Manager on AWS, Key
    Vault on Azure."""
    _check_cloud(cloud)
    if cloud == "azure":
        from meadowrun_core.azure import settings
        from meadowrun_core.azure.account import default_credential
        from meadowrun_core.azure.key_vault_secret_store import KeyVaultSecretStore
        from meadowrun_core.cli import azure_admin

        url = azure_admin.run(settings.vault_url)
        return KeyVaultSecretStore(url, default_credential())
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
    _guarded(cloud, lambda: store.put(name, value))
    typer.echo(f"secret {name!r} stored ({cloud})")


@secret_app.command("delete")
def secret_delete(
    name: str,
    cloud: str = typer.Option("local", help=_CLOUD_HELP),
    region: str = typer.Option("", help=_REGION_HELP),
) -> None:
    """Remove the secret NAME."""
    store = _secret_store(cloud, region)
    found = _guarded(cloud, lambda: store.delete(name))
    typer.echo(f"secret {name!r} {'deleted' if found else 'was not there'}")


@secret_app.command("list")
def secret_list(
    cloud: str = typer.Option("local", help=_CLOUD_HELP),
    region: str = typer.Option("", help=_REGION_HELP),
) -> None:
    """Names of the stored secrets (never their values)."""
    store = _secret_store(cloud, region)
    for name in _guarded(cloud, store.names):
        typer.echo(name)
