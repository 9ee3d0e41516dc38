"""``meadowrun install --cloud azure`` deploys the manager as a Function App (the Azure twin's
Microsoft.Web part, Azurite for the package): a Linux Consumption plan and a Python app with
the installed identity, the manager's app settings and its package run from a SAS URL; the
twin's Functions host runs the deployed timer, which deletes an orphan VM; a second install
deploys nothing; a package that no longer answers is deployed again; uninstall removes it."""

from __future__ import annotations

import hashlib
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from meadowrun_core.azure import function_deploy, installed
from meadowrun_core.azure.account import default_credential, open_data_plane
from meadowrun_core.azure.install import install
from meadowrun_core.azure.manager_package import FUNCTIONS_PYTHON, SCHEDULE, app_settings
from meadowrun_core.azure.uninstall import uninstall
from meadowrun_core.resources import Resources
from meadowrun_core.seams.instance_provider import InstanceType
from tests import azurite
from tests.azure_admin_cloud import AdminCloud
from tests.waiting import wait_until

ONE = Resources(logical_cpu=1, memory_gb=1)
SMALL = InstanceType("Standard_D2s_v5", 2, 8, 0.096)


def test_install_deploys_the_manager_and_uninstall_removes_it(
    azure_admin: AdminCloud, tmp_path: Path
) -> None:
    cloud, target = azure_admin, azure_admin.target
    web = cloud.twin.arm.web
    name = function_deploy.site_name(target)
    lines = install(target)
    assert f"created function app plan {function_deploy.PLAN_NAME} (Linux Consumption)" in lines
    assert f"created function app {name}" in lines

    plan = web.plans[function_deploy.plan_path(target).lower()]
    assert installed.is_ours(plan) and plan["properties"]["reserved"] is True
    assert (plan["sku"]["name"], plan["sku"]["tier"]) == ("Y1", "Dynamic")
    app = web.app(target.resource_group, name)
    resource = app.resource
    assert installed.is_ours(resource) and resource["kind"] == "functionapp,linux"
    assert resource["properties"]["serverFarmId"] == plan["id"]
    assert resource["properties"]["siteConfig"]["linuxFxVersion"] == f"Python|{FUNCTIONS_PYTHON}"
    assert resource["properties"]["httpsOnly"] is True
    identity = cloud.twin.arm.resources.resources[installed.identity_path(target).lower()]
    assert list(resource["identity"]["userAssignedIdentities"]) == [identity["id"]]

    settings = app.settings
    assert settings["FUNCTIONS_WORKER_RUNTIME"] == "python"
    assert settings["FUNCTIONS_EXTENSION_VERSION"] == "~4"
    assert settings["AZURE_CLIENT_ID"] == identity["properties"]["clientId"]
    assert app_settings(target).items() <= settings.items()
    assert f"AccountName={azurite.ACCOUNT_NAME};" in settings["AzureWebJobsStorage"]
    url = urlsplit(settings["WEBSITE_RUN_FROM_PACKAGE"])
    assert set(parse_qs(url.query)["sp"]) == {"r"}  # read only
    blob_name = url.path.rsplit("/", 1)[1]
    container = cloud.storage.blob_service().get_container_client(function_deploy.PACKAGE_CONTAINER)
    package = container.download_blob(blob_name).readall()
    assert blob_name == f"manager-{hashlib.sha256(package).hexdigest()}.zip"
    assert web.syncs == 1  # triggers synced after the deployment

    # The deployed timer, run by the twin's Functions host from the package URL, deletes an
    # orphan VM (created long ago, never registered) and keeps a live one.
    plane = open_data_plane(default_credential(), create=False)
    cloud.create_vm("meadowrun-orphan", "orphan")
    (orphan,) = [vm for vm in cloud.twin.arm.vms() if vm.name == "meadowrun-orphan"]
    orphan.resource["properties"]["timeCreated"] = "2020-01-01T00:00:00Z"
    assert plane.table.allocate_on_new_instance("live", SMALL, ["j-1"], ONE, "c", "l", 9, 9)
    plane.table.register_instance("live", "10.0.0.21", 8)
    cloud.create_vm("meadowrun-live", "live")
    ran = web.run_timer(
        target.resource_group,
        name,
        tmp_path / "functions-host",
        cloud.twin.base_url,
        str(cloud.twin.certificate.cert_path),
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert f"schedule: {SCHEDULE}" in ran.stdout
    assert "deleted VM meadowrun-orphan (meadowrun orphan)" in ran.stdout, ran.stdout
    wait_until(lambda: cloud.vm_names() == ["meadowrun-live"], 10, "only the live VM left")

    # No change: nothing is written, nothing deployed (a setting of the user's is no change).
    user_setting = {"APPLICATIONINSIGHTS_CONNECTION_STRING": "InstrumentationKey=00000000"}
    web.app(target.resource_group, name).settings.update(user_setting)
    writes, deployments = cloud.puts(), web.settings_writes
    again = install(target)
    assert f"found function app {name}" in again
    assert (cloud.puts(), web.settings_writes, web.syncs) == (writes, deployments, 1)
    assert not any("deployed" in line for line in again), again

    # A package URL that no longer answers (as after the account key was rotated) is
    # signed anew; a package blob that went is uploaded again.
    bad = url._replace(query=url.query.replace("sig=", "sig=0")).geturl()
    web.app(target.resource_group, name).settings["WEBSITE_RUN_FROM_PACKAGE"] = bad
    container.delete_blob(blob_name)
    redeployed = install(target)
    assert f"updated function app {name}'s settings" in redeployed
    assert web.syncs == 2 and container.get_blob_client(blob_name).exists()
    fixed = web.app(target.resource_group, name).settings["WEBSITE_RUN_FROM_PACKAGE"]
    assert urlsplit(fixed).path == url.path and fixed != bad
    assert user_setting.items() <= web.app(target.resource_group, name).settings.items()

    removed = uninstall(target)
    assert removed.index(f"deleted function app {name}") < removed.index(
        f"deleted managed identity {installed.IDENTITY_NAME}"
    )  # the app goes before the identity it carries
    assert f"deleted function app plan {function_deploy.PLAN_NAME}" in removed
    assert f"deleted container {function_deploy.PACKAGE_CONTAINER}" in removed
    assert web.apps == {} and web.plans == {}
    assert uninstall(target) == []
