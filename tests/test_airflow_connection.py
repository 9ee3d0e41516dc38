"""The ``meadowrun`` connection and the operator's host and resources arguments, read by the
real hook and operator (in a fresh process, as an Airflow worker would, with the connections
in ``AIRFLOW_CONN_*`` variables): typed form fields, older JSON extras, the default
connection and its fallback, and the errors a wrong setting gets when the DAG is parsed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

_CHECK = textwrap.dedent(
    """
    import json
    import meadowrun_core as mr
    from meadowrun_airflow import MeadowrunOperator
    from meadowrun_airflow.hooks import MeadowrunHook, host_from_extra, host_from_value
    from meadowrun_airflow.arguments import to_meadowrun_resources
    from meadowrun_airflow.provider import get_provider_info

    out = {}

    def error(f):
        try:
            f()
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return None

    out["form"] = repr(MeadowrunHook("meadowrun_form").get_host())
    out["old_json"] = repr(MeadowrunHook("meadowrun_old").get_host())
    out["host_field"] = repr(MeadowrunHook("meadowrun_host_field").get_host())
    out["default_missing"] = repr(MeadowrunHook().get_host())
    out["named_missing"] = error(lambda: MeadowrunHook("meadowrun_nowhere").get_host())
    out["misplaced"] = error(lambda: host_from_extra({"host": "local", "region_name": "x"}))
    out["unknown"] = error(lambda: host_from_extra({"host": "local", "max_cpus": 2}))
    out["bad_number"] = error(lambda: host_from_extra({"max_cpu": "lots"}))
    out["bad_kind"] = error(lambda: host_from_extra({"host": "gcp"}))
    out["kind_string"] = repr(host_from_value("ec2"))
    out["json_string"] = repr(host_from_value('{"host": "local", "max_cpu": 2}'))
    out["resources"] = [
        repr(to_meadowrun_resources(r))
        for r in (
            {"logical_cpu": "2", "memory_gb": "1.5", "flags": "fast"},
            '{"logical_cpu": 3, "memory_gb": 4}',
            {"cpus": 2, "ram": 4096},
        )
    ]
    out["bad_resources"] = error(lambda: to_meadowrun_resources({"logical_cpu": "many"}))
    out["parse_bad_host"] = error(
        lambda: MeadowrunOperator(task_id="t", command="true", host="nowhere"))
    out["parse_bad_resources"] = error(
        lambda: MeadowrunOperator(task_id="t", command="true", resources={"cpu": 2}))
    templated = MeadowrunOperator(
        task_id="t", command="true", host="{{ params.host }}",
        resources={"logical_cpu": "{{ params.cpu }}"})
    out["templated_kept"] = [templated.host, templated.meadowrun_resources]
    out["template_fields"] = list(MeadowrunOperator.template_fields)
    out["conn_id_default"] = MeadowrunOperator(task_id="u", command="true").meadowrun_conn_id
    out["links"] = [link.name for link in MeadowrunOperator.operator_extra_links]
    out["info"] = get_provider_info()
    print(json.dumps(out))
    """
)


def _run_check(tmp_path: Path) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "MEADOWRUN_"))}
    connections = {
        # as the connection form saves it: typed fields, unused ones empty
        "form": {
            "host": "local",
            "max_cpu": "6",
            "max_memory_gb": 12,
            "meadowrun_home": "/srv/mr",
            "region_name": "",
            "use_private_ip": None,
        },
        "old": {"host": "ec2", "region_name": "us-east-2", "security_group_ids": "sg-1, sg-2"},
    }
    for name, extra in connections.items():
        env[f"AIRFLOW_CONN_MEADOWRUN_{name.upper()}"] = json.dumps(
            {"conn_type": "meadowrun", "extra": extra}
        )
    env["AIRFLOW_CONN_MEADOWRUN_HOST_FIELD"] = json.dumps(
        {"conn_type": "meadowrun", "host": "azure", "extra": {"location": "westeurope"}}
    )
    env.update(AIRFLOW_HOME=str(tmp_path), AIRFLOW__CORE__LOAD_EXAMPLES="False")
    out = subprocess.run(
        [sys.executable, "-c", _CHECK],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def test_connection_fields_and_operator_arguments(tmp_path: Path) -> None:
    result = _run_check(tmp_path)
    # typed form fields (numbers as the form's strings), older JSON, the standard Host field
    assert result["form"] == (
        "AllocLocalInstance(idle_timeout=None, max_cpu=6.0, max_memory_gb=12.0, home='/srv/mr', "
        "custom_resources=None)"
    )
    assert result["old_json"].startswith("AllocEC2Instance(region_name='us-east-2'")
    assert "security_group_ids=('sg-1', 'sg-2')" in result["old_json"]
    assert result["host_field"].startswith("AllocAzureVM(location='westeurope', ")
    # meadowrun_default missing: the default host; another missing connection: an error
    assert result["default_missing"] == "None"
    assert result["named_missing"].startswith("AirflowNotFoundException")
    assert "meadowrun_nowhere" in result["named_missing"]
    assert "['region_name'] do not apply to host 'local'" in result["misplaced"]
    assert "unknown field(s) ['max_cpus']" in result["unknown"]
    assert "max_cpu must be a number, got 'lots'" in result["bad_number"]
    assert "host must be one of ['azure', 'ec2', 'local'], got 'gcp'" in result["bad_kind"]
    assert result["kind_string"].startswith("AllocEC2Instance(region_name=None")
    assert "max_cpu=2.0" in result["json_string"]
    # resources: a dict of mr.Resources fields (strings, as templates render them), its JSON,
    # Airflow's executor form
    plain, from_json, airflow_form = result["resources"]
    assert "logical_cpu=2.0, memory_gb=1.5" in plain and "flags=('fast',)" in plain
    assert "logical_cpu=3.0, memory_gb=4.0" in from_json
    assert "logical_cpu=2.0, memory_gb=4.0" in airflow_form
    assert "logical_cpu must be a number" in result["bad_resources"]
    # wrong arguments fail when the DAG is parsed; templated ones are kept for rendering
    assert "host must be one of" in result["parse_bad_host"]
    assert result["parse_bad_resources"].startswith("TypeError")
    assert result["templated_kept"] == ["{{ params.host }}", {"logical_cpu": "{{ params.cpu }}"}]
    assert {"host", "meadowrun_resources"} <= set(result["template_fields"])
    assert result["conn_id_default"] == "meadowrun_default"
    assert result["links"] == ["Meadowrun job log"]
    # the provider's documentation is this project's, not the original Meadowrun's
    info = result["info"]
    docs = (Path(__file__).parent.parent / "docs" / "airflow.md").resolve().as_uri()
    assert info["integrations"][0]["external-doc-url"] == docs
    assert info["documentation-url"] == docs
    assert "meadowdata" not in json.dumps(info)
