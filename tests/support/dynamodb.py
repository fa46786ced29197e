"""An in-process DynamoDB (moto) with the TokensTable of template.yaml, and a
TokenStore on it: for unit tests of storage/store.py."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

import local.template as template_module
from local.moto_fidelity import make_dynamodb_item_operations_atomic

TEMPLATE = Path(__file__).resolve().parents[2] / "template.yaml"
TABLE_NAME = "tokens-test"


def tokens_table_properties() -> dict[str, Any]:
    return template_module.load_template(TEMPLATE)["Resources"]["TokensTable"]["Properties"]


def create_tokens_table(client: Any, name: str = TABLE_NAME) -> None:
    """The table's key schema and indexes as template.yaml declares them."""
    props = tokens_table_properties()
    client.create_table(
        TableName=name,
        BillingMode="PAY_PER_REQUEST",
        KeySchema=props["KeySchema"],
        AttributeDefinitions=props["AttributeDefinitions"],
        GlobalSecondaryIndexes=[
            {"IndexName": i["IndexName"], "KeySchema": i["KeySchema"], "Projection": i["Projection"]}
            for i in props["GlobalSecondaryIndexes"]
        ],
    )


@contextmanager
def moto_tokens_table(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A DynamoDB client on moto (no network) with the tokens table created."""
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    make_dynamodb_item_operations_atomic()
    with mock_aws():
        client = boto3.client("dynamodb", region_name="us-east-1")
        create_tokens_table(client)
        yield client


@pytest.fixture
def dynamodb(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """:func:`moto_tokens_table` as a fixture."""
    with moto_tokens_table(monkeypatch) as client:
        yield client


def token_store_on(client: Any) -> Any:
    """A TokenStore on the moto table (one client for every call)."""
    from invoiced_connect.storage.store import TokenStore

    return TokenStore(TABLE_NAME, client_factory=lambda: client)
