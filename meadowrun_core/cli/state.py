"""``meadowrun instances``, ``jobs`` and ``costs``: what a cloud runs and what it cost, as
tables or (``--json``) as JSON with stable keys."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import typer

from meadowrun_core.cli._common import (
    _CLOUD_HELP,
    _JSON_HELP,
    _REGION_HELP,
    _aws,
    _aws_table,
    _check_cloud,
    _echo_json,
    _echo_table,
    _guarded,
    _local,
    _table,
    _ts,
    app,
)
from meadowrun_core.job_cost import cost_of_history_row
from meadowrun_core.local import admin

if TYPE_CHECKING:
    from meadowrun_core.aws.costs import CostReport
    from meadowrun_core.seams.allocation_table import AllocationRecord, InstanceRecord


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
    from meadowrun_core.seams.allocation_table import INSTANCE_DEAD_AFTER_SECONDS

    if r.interruption_at:
        return "interrupting"
    if r.address is None:
        return "launching"
    return "alive" if r.last_heartbeat >= time.time() - INSTANCE_DEAD_AFTER_SECONDS else "stale"


def _untracked(known: set[str]) -> list[str]:
    """Agents of this home that the table does not list (its state was deleted or damaged)."""
    return [
        f"{instance_id}: agent pid {pid} runs but is not in the state table; "
        "`meadowrun clean` stops it"
        for pid, instance_id in sorted(admin.home_agents().items())
        if instance_id not in known
    ]


def _table_for(cloud: str, region: str) -> Any:
    if cloud == "azure":
        from meadowrun_core.cli import azure_admin

        return azure_admin.table(region)
    return _aws(lambda: _aws_table(region)) if cloud == "aws" else _table()


def _read(cloud: str, action: Any) -> Any:
    return _guarded(cloud, action)


def instance_row(r: InstanceRecord, state: str, now: float) -> dict[str, Any]:
    """One instance as ``meadowrun instances --json`` prints it."""
    return {
        "instance_id": r.instance_id,
        "instance_type": r.instance_type,
        "state": state,
        "address": r.address,
        "cpu_total": r.cpu_total,
        "cpu_free": r.cpu_free,
        "memory_gb_total": r.memory_total,
        "memory_gb_free": r.memory_free,
        "gpus_total": r.gpus_total,
        "gpus_free": r.gpus_free,
        "running_jobs": r.running_jobs,
        "spot": r.is_spot,
        "price_per_hour": r.price_per_hour,
        "created": r.created,
        "age_seconds": round(now - r.created, 3),
    }


@app.command()
def instances(
    cloud: str = typer.Option("local", help=_CLOUD_HELP),
    region: str = typer.Option("", help=_REGION_HELP),
    as_json: bool = typer.Option(False, "--json", help=_JSON_HELP),
) -> None:
    """Instances of a cloud with their free capacity, running jobs and state (alive,
    launching, interrupting; dead or stale when their agent stopped)."""
    _check_cloud(cloud)
    if cloud in ("aws", "azure"):
        table = _table_for(cloud, region)
        records = _read(cloud, table.list_instances)
        state = _aws_state
    else:
        records = _local(lambda: _table().list_instances())
        state = _local_state
        for warning in _untracked({r.instance_id for r in records}):
            typer.echo(warning, err=True)
    now = time.time()
    rows = [instance_row(r, state(r), now) for r in records]
    if as_json:
        _echo_json(rows)
        return
    if not rows:
        typer.echo("no instances")
        return
    _echo_table(
        ["INSTANCE", "TYPE", "STATE", "FREE CPU", "FREE GB", "JOBS", "AGE", "ADDRESS"],
        [
            [
                r["instance_id"],
                r["instance_type"],
                r["state"],
                f"{r['cpu_free']:g}/{r['cpu_total']:g}",
                f"{r['memory_gb_free']:g}/{r['memory_gb_total']:g}",
                r["running_jobs"],
                f"{r['age_seconds']:.0f}s",
                r["address"],
            ]
            for r in rows
        ],
    )


def running_job_row(a: AllocationRecord) -> dict[str, Any]:
    """A running job (an allocation) as ``meadowrun jobs --json`` prints it."""
    return {
        "job_id": a.job_id,
        "status": "running",
        "instance_id": a.instance_id,
        "description": a.description,
        "cpu": a.cpu,
        "memory_gb": a.memory_gb,
        "worker_pid": a.worker_pid,
        "started": a.created,
        "ended": None,
        "duration_seconds": None,
        "instance_seconds": None,
        "cost": None,
        "on_demand_cost": None,
    }


def finished_job_row(row: Any, on_demand: Mapping[str, float] | None = None) -> dict[str, Any]:
    """A finished job (a history row, SQLite or DynamoDB) as ``meadowrun jobs --json``
    prints it; ``status`` is how it ended. Its cost (USD) is ``JobHandle.cost()``'s: the
    seconds it held its instance times its CPU share, at the price paid; ``on_demand_cost``
    at ``on_demand`` prices by type (None: the price paid, as on the local cloud)."""
    started, ended = float(row["started"]), float(row["ended"])
    cost = cost_of_history_row(row, (on_demand or {}).get(str(row["instance_type"])))
    return {
        "job_id": str(row["job_id"]),
        "status": str(row["outcome"]),
        "instance_id": str(row["instance_id"]),
        "description": str(row["description"]),
        "cpu": float(row["cpu"]),
        "memory_gb": float(row["memory_gb"]),
        "worker_pid": None,
        "started": started,
        "ended": ended,
        "duration_seconds": round(ended - started, 3),
        "instance_seconds": round(cost.instance_seconds, 3),
        "cost": cost.cost,
        "on_demand_cost": cost.on_demand_cost,
    }


@app.command()
def jobs(
    history: int = typer.Option(0, help="also show this many finished jobs, newest first"),
    cloud: str = typer.Option("local", help=_CLOUD_HELP),
    region: str = typer.Option("", help=_REGION_HELP),
    as_json: bool = typer.Option(False, "--json", help=_JSON_HELP),
) -> None:
    """Running jobs, and with --history N the last N finished ones with how they ended and
    what they cost (USD: their share, by CPU, of their instance's price for the time they held
    it; --json adds instance_seconds and on_demand_cost).

    `meadowrun logs JOB_ID` shows a job's output."""
    _check_cloud(cloud)
    table = _table_for(cloud, region)
    running = [running_job_row(a) for a in _read(cloud, table.list_allocations)]
    running.sort(key=lambda r: r["started"])
    finished = []
    if history > 0:
        rows = _read(cloud, lambda: table.job_history(history))
        prices = None
        if cloud == "aws" and rows:
            from meadowrun_core.aws.clients import resolve_region

            price_data = _on_demand_prices(resolve_region(region))
            prices = None if price_data is None else price_data.on_demand
        elif cloud == "azure" and rows:
            from meadowrun_core.cli import azure_admin

            prices = azure_admin.regular_prices(region)
        finished = [finished_job_row(r, prices) for r in rows]
    if as_json:
        _echo_json(running + finished)
        return
    columns = [
        "JOB",
        "STATUS",
        "INSTANCE",
        "CPU",
        "GB",
        "STARTED",
        "DURATION",
        "COST",
        "DESCRIPTION",
    ]
    if running:
        now = time.time()
        _echo_table(columns, [_job_cells(r, now) for r in running])
    else:
        typer.echo("no running jobs")
    if history > 0:
        typer.echo("")
        if finished:
            _echo_table(columns, [_job_cells(r, 0) for r in finished], title="finished")
        else:
            typer.echo("no finished jobs")


def _job_cells(r: dict[str, Any], now: float) -> list[Any]:
    ended = r["ended"] if r["ended"] is not None else now
    return [
        r["job_id"],
        r["status"],
        r["instance_id"],
        f"{r['cpu']:g}",
        f"{r['memory_gb']:g}",
        _ts(r["started"]),
        f"{ended - r['started']:.2f}s",
        "-" if r["cost"] is None else f"${r['cost']:.6f}",
        r["description"],
    ]


def cost_report_json(cloud: str, region: str | None, report: CostReport) -> dict[str, Any]:
    """A cost report as ``meadowrun costs --json`` prints it (USD; ``on_demand_cost`` and
    ``savings`` are null where no on-demand price is known)."""
    return {
        "cloud": cloud,
        "region": region,
        "jobs": report.jobs,
        "job_seconds": report.job_seconds,
        "instance_seconds": report.instance_seconds,
        "cost": report.cost,
        "on_demand_cost": report.on_demand_cost,
        "savings": report.savings,
        "unpriced_types": list(report.unpriced_types),
    }


@app.command()
def costs(
    history: int = typer.Option(10000, help="how many finished jobs to count"),
    cloud: str = typer.Option("local", help=_CLOUD_HELP),
    region: str = typer.Option("", help=_REGION_HELP),
    as_json: bool = typer.Option(False, "--json", help=_JSON_HELP),
) -> None:
    """What finished jobs cost: each job pays its share (by CPU) of its instance's price.

    On aws, also what the same instance-seconds would have cost on-demand (live prices,
    cached 4 h; MEADOWRUN_AWS_PRICE_FIXTURE=<dir> uses a price fixture); on azure at regular
    prices (the Retail Prices API), and what the running VMs cost per hour now. The local
    cloud is free: its prices model general-purpose cloud instances."""
    from meadowrun_core.aws.costs import costs_of_rows, job_costs

    _check_cloud(cloud)
    resolved: str | None = None
    running: list[list[Any]] = []
    if cloud == "azure":
        from meadowrun_core.cli import azure_admin

        resolved = azure_admin.target(region).location
        table = azure_admin.table(region)
        regular = azure_admin.regular_prices(region)
        history_rows = _read(cloud, lambda: table.job_history(history))
        report = costs_of_rows(history_rows, regular)
        running = azure_admin.running_cost_rows(_read(cloud, table.list_instances), regular)
    elif cloud == "aws":
        from meadowrun_core.aws.clients import resolve_region

        resolved = resolve_region(region)
        prices = _on_demand_prices(resolved)
        report = _aws(lambda: job_costs(_aws_table(resolved), prices, limit=history))
    else:
        report = _local(lambda: job_costs(_table(), limit=history))
    data = cost_report_json(cloud, resolved, report)
    if running:
        data["running_vms"] = running[0][1]
    if as_json:
        _echo_json(data)
        return
    paid = "at the prices paid" if cloud != "local" else "at local list prices"
    rows: list[list[Any]] = [
        ["jobs", report.jobs],
        ["job-seconds", f"{report.job_seconds:.1f}"],
        ["instance-seconds", f"{report.instance_seconds:.1f}"],
        [f"cost ({paid})", f"${report.cost:.6f}"],
    ]
    if report.on_demand_cost is not None:
        rows.append(["on-demand cost of the same", f"${report.on_demand_cost:.6f}"])
    if report.savings is not None:
        rows.append(["saved", f"{report.savings:.0%}"])
    rows += running
    _echo_table(["", ""], rows, title=f"costs, {cloud}" + (f" {resolved}" if resolved else ""))
    if report.unpriced_types:
        typer.echo(
            f"no on-demand price for {', '.join(report.unpriced_types)}: counted at the price paid",
            err=True,
        )


def _on_demand_prices(region: str) -> Any:
    from meadowrun_core.aws.pricing import default_price_source

    try:
        return default_price_source().prices(region)
    except Exception as exc:  # the comparison is optional; the bill is not
        typer.echo(f"no on-demand prices for {region} ({exc}): not compared", err=True)
        return None
