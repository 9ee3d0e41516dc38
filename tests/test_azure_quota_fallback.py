"""A regular-market quota error on Azure skips every size of the failed size's family (they
count against the same ``<family> Cores`` quota), end to end on the Azure twin: the client's
ladder does not ask Azure again for sizes the error already refused."""

from __future__ import annotations

import meadowrun_core as mr
from tests import twin_workloads as work
from tests.azure_cloud import DEPLOYMENT, AzureTwinCloud


def test_a_regular_quota_error_skips_the_whole_size_family(azure: AzureTwinCloud) -> None:
    # Regular ladder for 1 CPU, 1 GB: B2s, D2as_v5, D2s_v5, F4s_v2, D4as_v5, D4s_v5, E4s_v5...
    for family in ("standardBSFamily", "standardDASv5Family", "standardDSv5Family"):
        azure.twin.arm.set_quota(family, 0)
    azure.twin.arm.set_quota("standardFSv2Family", 0)
    answer = mr.run_function(
        work.square,
        args=(5,),
        host=azure.host(),
        resources=mr.Resources(1, 1, max_eviction_rate=0),
        deployment=DEPLOYMENT,
    )
    assert answer == 25
    (vm,) = azure.vms()
    assert (vm.hardware_profile.vm_size, vm.priority) in {
        ("Standard_E4s_v5", None),
        ("Standard_E4s_v5", "Regular"),
    }
    creates = [
        path
        for method, path in azure.twin.server.requests
        if method == "PUT" and "/virtualmachines/" in path.lower()
    ]
    # B2s, D2as_v5, D2s_v5 and F4s_v2 refused; D4as_v5 and D4s_v5 (same families) never asked
    assert len(creates) == 5
