"""The deferrable trigger carries its job's cloud: a job on EC2 is looked for on EC2 after
the triggerer reloads it (checked in a fresh process, as Airflow's triggerer would)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

_CHECK = textwrap.dedent(
    """
    import importlib, json
    import meadowrun_core as mr
    from meadowrun_airflow.jobs import host_to_json
    from meadowrun_airflow.triggers import MeadowrunJobTrigger
    host = mr.AllocEC2Instance(region_name="eu-west-1", security_group_ids=("sg-1",),
                               ssh_cidr="203.0.113.0/24")
    path, kwargs = MeadowrunJobTrigger("nightly", "/tmp/h", host_to_json(host)).serialize()
    kwargs = json.loads(json.dumps(kwargs))  # what the metadata database stores
    module, _, name = path.rpartition(".")
    again = getattr(importlib.import_module(module), name)(**kwargs)
    local = MeadowrunJobTrigger("nightly", "/tmp/h", host_to_json(None))
    import os
    os.environ["MEADOWRUN_HOST"] = "ec2"  # a worker whose default host is EC2
    default = MeadowrunJobTrigger("nightly", "/tmp/h", host_to_json(None))
    print(json.dumps({"same": again._host == host, "local": repr(local._host),
                      "default": repr(default._host)}))
    """
)


def test_trigger_finds_an_ec2_job_on_ec2(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MEADOWRUN_"))}
    env.update(AIRFLOW_HOME=str(tmp_path), AIRFLOW__CORE__LOAD_EXAMPLES="False")
    out = subprocess.run(
        [sys.executable, "-c", _CHECK], env=env, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["same"] is True
    assert "AllocLocalInstance" in result["local"] and "/tmp/h" in result["local"]
    assert result["default"].startswith("AllocEC2Instance(")
