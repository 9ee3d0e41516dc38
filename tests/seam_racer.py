"""A racing client for the allocation-table conformance test, light to import in a child."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3

from meadowrun_core.aws.dynamodb_allocation_table import DynamoDbAllocationTable
from meadowrun_core.azure.table_allocation_table import AzureTableAllocationTable
from meadowrun_core.local.allocation_table import SqliteAllocationTable
from meadowrun_core.resources import Resources


def race(args: tuple[str, str, int]) -> int:
    """Allocate as many one-CPU jobs as possible, one at a time; return how many we got."""
    kind, location, worker = args
    if kind == "sqlite":
        table: Any = SqliteAllocationTable(Path(location))
    elif kind == "azure":  # Azurite's development account
        from azurite import development_account

        table_url, name = location.split("|")
        table = AzureTableAllocationTable(development_account(table_url).table_service(), name)
    else:
        endpoint, name = location.split("|")
        client = boto3.client(
            "dynamodb",
            region_name="us-east-1",
            endpoint_url=endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        table = DynamoDbAllocationTable(client, name)
    one = Resources(logical_cpu=1, memory_gb=1)
    return sum(
        len(table.allocate_on_existing([f"w{worker}-{attempt}"], one, "c1", "d"))
        for attempt in range(6)
    )
