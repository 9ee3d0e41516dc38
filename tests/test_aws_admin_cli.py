"""The AWS admin commands of the CLI end to end against moto: install, instances, costs, clean
and uninstall, and how the CLI reports an AWS error or missing Azure settings.
"""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from meadowrun_core.aws import names
from meadowrun_core.aws.dynamodb_allocation_table import DynamoDbAllocationTable
from meadowrun_core.cli import app
from tests.aws_admin_support import (
    FIXTURE,
    ONE,
    REGION,
    SMALL,
    aws_client,
    check_installed,
    error_code,
    launch_instance,
)

# the fixtures aws and checkip: pytest finds them in this module
from tests.aws_admin_support import checkip_server as checkip_server
from tests.aws_admin_support import moto_account as moto_account


def test_cli_install_instances_costs_clean_uninstall(
    aws: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEADOWRUN_AWS_PRICE_FIXTURE", str(FIXTURE))
    runner = CliRunner()
    result = runner.invoke(app, ["install", "--cloud", "aws", "--region", REGION])
    assert result.exit_code == 0, result.output
    assert f"created DynamoDB table {names.TABLE_NAME}" in result.output
    check_installed(aws)

    table = DynamoDbAllocationTable(aws_client(aws, "dynamodb"), names.TABLE_NAME)
    assert table.allocate_on_new_instance("mr-cli", SMALL, ["j-1"], ONE, "c", "d", 9, 9)
    table.register_instance("mr-cli", "10.0.0.4", 7)
    result = runner.invoke(app, ["instances", "--cloud", "aws"])
    assert result.exit_code == 0, result.output
    assert "mr-cli" in result.output and "alive" in result.output

    assert table.deallocate("j-1", "succeeded")
    result = runner.invoke(app, ["costs", "--cloud", "aws"])
    assert result.exit_code == 0, result.output
    assert re.search(r"^\s*jobs\s+1\s*$", result.output, re.M), result.output
    assert "on-demand cost of the same" in result.output

    launch_instance(aws, "mr-cli")
    result = runner.invoke(app, ["clean", "--cloud", "aws"])
    assert result.exit_code == 0 and "terminated instance" in result.output, result.output

    result = runner.invoke(app, ["uninstall", "--cloud", "aws"])
    assert result.exit_code == 0, result.output
    assert f"deleted DynamoDB table {names.TABLE_NAME}" in result.output
    dynamodb = aws_client(aws, "dynamodb")
    assert (
        error_code(dynamodb.describe_table, TableName=names.TABLE_NAME)
        == "ResourceNotFoundException"
    )
    result = runner.invoke(app, ["uninstall", "--cloud", "aws"])
    assert result.exit_code == 0 and result.output.strip() == "nothing to remove"


def test_cli_reports_aws_errors_and_missing_azure_settings(
    aws: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["instances", "--cloud", "aws"])  # not installed: no table
    assert result.exit_code == 1 and "error:" in result.output
    monkeypatch.delenv("AZURE_SUBSCRIPTION_ID", raising=False)
    result = runner.invoke(app, ["install", "--cloud", "azure"])
    assert result.exit_code == 1 and "needs a subscription" in result.stderr
