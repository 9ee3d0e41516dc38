"""The DynamoDB allocation table's shape: one hash key ``pk`` for every record and a sparse
index on ``kind`` (only instance and history items carry it), created on first use."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from meadowrun_core.aws import names

# A sparse index on ``kind``: instance and history items carry it, so listing them is a Query
# over those items instead of a Scan of the whole table (leases, job keys, history).
BY_KIND = "by_kind"


def create_table(dynamodb: Any, table_name: str) -> bool:
    """Create the table (on-demand billing) if it does not exist; whether this call did.

    One DescribeTable answers on a set-up account (every new client); an empty account
    pays one request more, once."""
    try:
        status = dynamodb.describe_table(TableName=table_name)["Table"]["TableStatus"]
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "ResourceNotFoundException":
            raise
    else:
        if status != "ACTIVE":
            dynamodb.get_waiter("table_exists").wait(TableName=table_name)
        return False
    try:
        dynamodb.create_table(
            TableName=table_name,
            AttributeDefinitions=[
                {"AttributeName": "pk", "AttributeType": "S"},
                {"AttributeName": "kind", "AttributeType": "S"},
            ],
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            GlobalSecondaryIndexes=[
                {
                    "IndexName": BY_KIND,
                    "KeySchema": [
                        {"AttributeName": "kind", "KeyType": "HASH"},
                        {"AttributeName": "pk", "KeyType": "RANGE"},
                    ],
                    "Projection": {"ProjectionType": "ALL"},
                }
            ],
            BillingMode="PAY_PER_REQUEST",
            Tags=names.TAGS,
        )
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "ResourceInUseException":
            raise
        created = False  # another client created it a moment ago
    else:
        created = True
    dynamodb.get_waiter("table_exists").wait(TableName=table_name)
    return created
