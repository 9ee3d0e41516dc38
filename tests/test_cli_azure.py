"""``meadowrun ... --cloud azure`` through typer's CliRunner against the Azure twin and
Azurite: install, instances, jobs, costs, instance-types, clean, uninstall, and a clear
message with a non-zero exit for missing settings and for a vault named in another group
where it is not."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from meadowrun_core.azure.account import default_credential, open_data_plane
from meadowrun_core.cli import app
from meadowrun_core.resources import Resources
from meadowrun_core.seams.instance_provider import InstanceType
from tests.azure_admin_cloud import AdminCloud

ONE = Resources(logical_cpu=1, memory_gb=1)
SIZE = InstanceType("Standard_D2s_v5", 2, 8, 0.02)


def _run(*args: str) -> Any:
    result = CliRunner().invoke(app, [*args, "--cloud", "azure"])
    assert result.exit_code == 0, (args, result.output)
    return result


def test_the_azure_admin_commands(azure_admin: AdminCloud) -> None:
    out = _run("install").stdout
    assert "created storage account" in out and "created managed identity" in out
    assert "created" not in _run("install").stdout  # idempotent

    assert json.loads(_run("instances", "--json").stdout) == []
    table = open_data_plane(default_credential(), create=False).table
    assert table.allocate_on_new_instance("a", SIZE, ["j-1", "j-2"], ONE, "c", "train", 9, 9)
    table.register_instance("a", "10.0.0.4", 7)
    assert table.deallocate("j-1", "succeeded")
    (instance,) = json.loads(_run("instances", "--json").stdout)
    assert instance["instance_id"] == "a" and instance["state"] == "alive"
    jobs = json.loads(_run("jobs", "--history", "3", "--json").stdout)
    assert [j["job_id"] for j in jobs] == ["j-2", "j-1"]
    assert jobs[1]["on_demand_cost"] is not None  # at the Retail Prices API's regular price

    costs = json.loads(_run("costs", "--json").stdout)
    assert costs["cloud"] == "azure" and costs["region"] == "eastus" and costs["jobs"] == 1
    assert costs["on_demand_cost"] is not None and costs["running_vms"] == 1
    assert "$/h now" in _run("costs").stdout

    sizes = _run("instance-types", "--cpu", "2", "--memory", "4", "--limit", "3").stdout
    lines = sizes.splitlines()
    assert lines[0].split()[:2] == ["SIZE", "VCPU"] and len(lines) == 4
    assert all(line.split()[0].startswith("Standard_") for line in lines[1:])
    assert "%" in lines[1]  # the eviction band

    assert json.loads(_run("cache", "info", "--json").stdout)["entries"] == 0  # Blob

    azure_admin.create_vm("meadowrun-orphan", "orphan")  # no agent: clean deletes it... later
    assert "nothing to clean" in _run("clean").stdout  # within the launch grace: kept
    out = _run("uninstall").stdout
    assert "deleted VM meadowrun-orphan" in out and "deleted resource group" in out
    assert "nothing to remove" in _run("uninstall").stdout


@pytest.mark.parametrize(
    ("unset", "expected"),
    [
        ("AZURE_SUBSCRIPTION_ID", "needs a subscription"),
        ("MEADOWRUN_AZURE_LOCATION", "needs a location"),
        ("MEADOWRUN_AZURE_RESOURCE_GROUP", "needs a resource group"),
        ("MEADOWRUN_AZURE_VAULT_URL", "needs meadowrun's Key Vault"),
    ],
)
def test_missing_settings_are_a_clear_error(
    azure_admin: AdminCloud, monkeypatch: pytest.MonkeyPatch, unset: str, expected: str
) -> None:
    monkeypatch.delenv(unset)
    monkeypatch.delenv("MEADOWRUN_AZURE_KEY_VAULT", raising=False)
    for command in ("install", "instances", "uninstall"):
        result = CliRunner().invoke(app, [command, "--cloud", "azure"])
        assert result.exit_code == 1, result.output
        assert expected in result.stderr and "Traceback" not in result.output
    assert azure_admin.puts() == 0  # nothing was created


def test_a_missing_vault_in_another_group_is_a_clear_error(
    azure_admin: AdminCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``meadowrun install`` with a vault named in a group where it is not: the message,
    naming the setting and the fix, on stderr, exit 1, and nothing created."""
    monkeypatch.setenv("MEADOWRUN_AZURE_KEY_VAULT_RESOURCE_GROUP", "central-security")
    result = CliRunner().invoke(app, ["install", "--cloud", "azure"])
    assert result.exit_code == 1, result.output
    assert "not in resource group central-security" in result.stderr
    assert "unset MEADOWRUN_AZURE_KEY_VAULT_RESOURCE_GROUP" in " ".join(result.stderr.split())
    assert "Traceback" not in result.output
    assert azure_admin.puts() == 0
