"""The Azure side of the ``meadowrun`` commands (``--cloud azure``): the target from the
settings (``--region`` is the location), errors as a message and exit 1, the data plane's
table, VM sizes with prices and eviction bands, and what the running VMs cost now."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import typer

from meadowrun_core.cli._common import cheapest_per_type

if TYPE_CHECKING:
    from meadowrun_core.azure.settings import AzureTarget
    from meadowrun_core.resources import Resources


def run(action: Callable[[], Any]) -> Any:
    """Run an Azure action; configuration and Azure errors become a message and exit 1."""
    from azure.core.exceptions import AzureError

    from meadowrun_core.exceptions import MeadowrunError

    try:
        return action()
    except (MeadowrunError, AzureError) as exc:
        typer.echo(f"error: {str(exc).splitlines()[0] if str(exc) else exc!r}", err=True)
        raise typer.Exit(1) from exc


def target(region: str) -> AzureTarget:
    """Subscription, location (``--region``) and resource group, or a clear message."""
    from meadowrun_core.azure import settings
    from meadowrun_core.hosts import AllocAzureVM

    resolved: AzureTarget = run(
        lambda: settings.resolve_target(AllocAzureVM(location=region or None))
    )
    return resolved


def table(region: str) -> Any:
    """The allocation table (nothing is created: ``meadowrun install --cloud azure`` does)."""
    from meadowrun_core.azure.account import default_credential, open_data_plane

    target(region)
    return run(lambda: open_data_plane(default_credential(), create=False).table)


def install(region: str) -> list[str]:
    from meadowrun_core.azure import install as azure_install

    where = target(region)
    return list(run(lambda: azure_install.install(where)))


def uninstall(region: str) -> list[str]:
    from meadowrun_core.azure import uninstall as azure_uninstall

    where = target(region)
    return list(run(lambda: azure_uninstall.uninstall(where)))


def clean(region: str) -> list[str]:
    from meadowrun_core.azure import uninstall as azure_uninstall

    where = target(region)
    return list(run(lambda: azure_uninstall.clean(where)))


def _offers(where: AzureTarget) -> list[Any]:
    from azure.mgmt.compute import ComputeManagementClient

    from meadowrun_core.azure import settings
    from meadowrun_core.azure.account import default_credential
    from meadowrun_core.azure.arm import Arm
    from meadowrun_core.azure.eviction_graph import GraphBandSource
    from meadowrun_core.azure.pricing import cache_tag, cache_ttl_seconds, default_price_source
    from meadowrun_core.azure.vm_sizes import load_offers
    from meadowrun_core.config import meadowrun_home
    from meadowrun_core.disk_cache import DiskCache

    credential = default_credential()
    compute = ComputeManagementClient(
        credential,
        where.subscription_id,
        base_url=settings.arm_url(),
        credential_scopes=[settings.ARM_SCOPE],
    )
    home = meadowrun_home() / "azure" / where.location / "cache"
    cache = DiskCache(cache_ttl_seconds(), home)
    tag = cache_tag(settings.arm_url())
    arm = Arm(credential, where.subscription_id)
    bands = GraphBandSource(arm, cache, tag).bands(where.location)
    return load_offers(where.location, compute, default_price_source(), bands, cache, tag)


def instance_types(region: str, resources: Resources, workers: int, limit: int) -> None:
    """VM sizes that fit, cheapest per worker first, with prices and Spot eviction bands."""
    from meadowrun_core.azure.vm_selection import choose_vm_sizes

    where = target(region)
    offers = run(lambda: _offers(where))
    choices = run(lambda: choose_vm_sizes(offers, resources, workers, where.location))
    typer.echo(
        f"{'SIZE':24} {'VCPU':>5} {'GB':>7} {'GPUS':>4} {'REGULAR':>10} {'SPOT':>9} "
        f"{'EVICTION':>8} {'MARKET':8} {'WORKERS':>7} {'$/H/WORKER':>10}"
    )
    for c in cheapest_per_type(choices, limit):
        o = c.offer
        spot = "-" if o.spot_price is None else f"{o.spot_price:.4f}"
        band = f"{o.eviction_band or '20+'}%"
        typer.echo(
            f"{o.name:24} {o.logical_cpu:>5g} {o.memory_gb:>7g} {o.gpus:>4} "
            f"{o.regular_price or 0:>10.4f} {spot:>9} {band:>8} {c.market:8} "
            f"{c.workers_per_instance:>7} {c.price_per_worker:>10.4f}"
        )


def regular_prices(region: str) -> dict[str, float] | None:
    """Regular (pay-as-you-go) $/h by size from the Retail Prices API; None if unreachable."""
    from meadowrun_core.azure.pricing import default_price_source

    where = target(region)
    try:
        return dict(default_price_source().prices(where.location).regular)
    except Exception as exc:  # the comparison is optional; the bill is not
        typer.echo(f"no regular prices for {where.location} ({exc}): not compared", err=True)
        return None


def running_cost_rows(records: list[Any], regular: dict[str, float] | None) -> list[list[Any]]:
    """What the VMs in the table cost per hour now, at the prices they launched at and at
    regular prices."""
    paid = sum(float(r.price_per_hour or 0) for r in records)
    rows: list[list[Any]] = [["running VMs", len(records)], ["$/h now", f"${paid:.4f}"]]
    if regular is not None and records:
        at_regular = sum(
            regular.get(r.instance_type, float(r.price_per_hour or 0)) for r in records
        )
        rows.append(["$/h at regular prices", f"${at_regular:.4f}"])
    return rows
