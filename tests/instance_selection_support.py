"""Shared constants, client and fixtures of the EC2 instance-selection tests
(tests/test_aws_instance_selection.py, tests/test_aws_price_sources.py,
tests/test_aws_price_cache.py, tests/test_aws_instance_types_cli.py).

The fixtures ``moto_endpoint`` (a moto server of the module's own, overriding tests/conftest.py's),
``ec2`` (a client of it), ``prices`` (the fixture's) and ``offers`` (the fixture's types as
moto's EC2 describes them, priced) are module-scoped; a test module imports the ones it uses.
One copy here rather than one per test module.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from meadowrun_core.aws.instance_types import Ec2Offer, fetch_instance_types, price_offers
from meadowrun_core.aws.pricing import FixturePriceSource, PriceData

FIXTURE = Path(__file__).parent / "fixtures" / "aws"
REGION = "us-east-1"


def aws_client(service: str, endpoint: str | None = None, region: str = REGION) -> Any:
    return boto3.client(
        service,
        region_name=region,
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture(scope="module", name="moto_endpoint")
def moto_server_endpoint() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="module", name="ec2")
def moto_ec2(moto_endpoint: str) -> Any:
    return aws_client("ec2", moto_endpoint)


@pytest.fixture(scope="module", name="prices")
def fixture_prices() -> PriceData:
    return FixturePriceSource(FIXTURE).prices(REGION)


@pytest.fixture(scope="module", name="offers")
def moto_offers(ec2: Any, prices: PriceData) -> list[Ec2Offer]:
    """The fixture's types as moto's EC2 describes them, priced from the fixture."""
    return price_offers(fetch_instance_types(ec2, prices.on_demand), prices)
