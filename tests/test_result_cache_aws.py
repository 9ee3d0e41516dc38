"""The result cache on AWS (moto's server over real HTTP): entries are named S3 objects, a
fully cached call or map launches nothing, and ``meadowrun cache --cloud aws`` shows and
empties them. The results were stored by the client's own cache code, as a finished run
would have stored them (running one needs the EC2 twin: tests/test_aws_data_plane.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from typer.testing import CliRunner

import meadowrun_core as mr
from meadowrun_core.aws import names
from meadowrun_core.cli import app
from meadowrun_core.client.payload import (
    pickle_arguments,
    pickle_task_argument,
    prepare_deployment,
    upload_function,
)
from meadowrun_core.client.result_cache import MapCache, ResultCache
from meadowrun_core.client.runtime import ClientRuntime
from meadowrun_core.serialization import dumps_fast
from tests import cache_workloads
from tests.moto_server import point_at_fresh_moto_account

REGION = "us-east-1"
FIXTURE = Path(__file__).parent / "fixtures" / "aws"


@pytest.fixture
def aws(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    """A fresh moto account that every meadowrun client points at."""
    point_at_fresh_moto_account(moto_endpoint, monkeypatch, tmp_path / "home", REGION)
    monkeypatch.setenv("MEADOWRUN_AWS_PRICE_FIXTURE", str(FIXTURE))
    yield moto_endpoint
    ClientRuntime.get().forget_backends()


def _cli(*args: str) -> str:
    result = CliRunner().invoke(app, [*args, "--cloud", "aws"])
    assert result.exit_code == 0, (args, result.output)
    return result.stdout


def test_cached_calls_launch_nothing_on_aws_and_clear_empties_s3(aws: str, tmp_path: Path) -> None:
    host = mr.AllocEC2Instance(REGION)
    backend = ClientRuntime.get().backend(host)
    function = cache_workloads.double_and_record
    code = tmp_path / "code"  # the deployment: a private folder, so nothing else changes it
    code.mkdir()
    (code / "helper.py").write_text("X = 1\n")
    deployment = mr.Deployment.mirror_local(
        include_sys_path=False,
        additional_sys_paths=[str(code)],
        interpreter=mr.PreinstalledInterpreter(names.INSTANCE_PYTHON),
    )
    prepared = prepare_deployment(backend, deployment)
    # what a finished run_function(function, args=(4, "r")) stores: marked to tell it apart
    single = ResultCache.for_call(backend, "function", upload_function(backend, function), prepared)
    single.store([(single.key(pickle_arguments((4, "r"), {})), dumps_fast("from S3"))])
    # and what a finished map over three elements stored, task by task
    mapped = MapCache.open(
        backend,
        upload_function(backend, function),
        prepared,
        [pickle_task_argument(x, i) for i, x in enumerate([1, 2, 3])],
    )
    mapped.store([(0, dumps_fast("one")), (1, dumps_fast("two")), (2, dumps_fast("three"))])

    kwargs: dict[str, Any] = {"host": host, "deployment": deployment, "cache": True}
    assert mr.run_function(function, args=(4, "r"), **kwargs) == "from S3"
    assert mr.run_map(function, [1, 2, 3], **kwargs) == ["one", "two", "three"]
    ec2 = boto3.client(
        "ec2",
        region_name=REGION,
        endpoint_url=aws,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    assert ec2.describe_instances()["Reservations"] == []  # nothing was launched
    assert backend.table.list_instances() == []

    listed = {o.name for o in backend.store.list_named("result-cache")}
    assert len(listed) == 4
    info = json.loads(_cli("cache", "info", "--json"))
    assert info["entries"] == 4 and info["bytes"] > 0
    assert "removed 0 cached result(s)" in _cli("cache", "clear", "--older-than", "1d")
    assert "removed 4 cached result(s)" in _cli("cache", "clear")
    assert list(backend.store.list_named("result-cache")) == []
    assert single.lookup([single.key(pickle_arguments((4, "r"), {}))]) == {}
