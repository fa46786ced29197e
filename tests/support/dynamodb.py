"""An in-process DynamoDB (moto) with the TokensTable of template.yaml, and a
TokenStore on it: for unit tests of storage/store.py.

A test module's tests share one moto and one client (each costs tens of
milliseconds to make, and ``make mutate`` runs these tests for every mutant of
the store); each test gets the table new and empty."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

import local.template as template_module
from local.moto_fidelity import make_dynamodb_item_operations_atomic

TEMPLATE = Path(__file__).resolve().parents[2] / "template.yaml"
TABLE_NAME = "tokens-test"


@cache
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
def moto_dynamodb(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A DynamoDB client on moto (no network, fake credentials), with no table."""
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    make_dynamodb_item_operations_atomic()
    with mock_aws():
        yield boto3.client("dynamodb", region_name="us-east-1")


def fresh_tokens_table(client: Any) -> Any:
    """The tokens table, new and empty, on ``client`` (the old one deleted)."""
    if TABLE_NAME in client.list_tables()["TableNames"]:
        client.delete_table(TableName=TABLE_NAME)
    create_tokens_table(client)
    return client


@pytest.fixture(scope="module", name="moto_client")
def moto_client_fixture() -> Iterator[Any]:
    """``moto_client``: one moto DynamoDB client for a test module's tests
    (import this to use it; pass it to :func:`fresh_tokens_table` per test)."""
    with pytest.MonkeyPatch.context() as monkeypatch, moto_dynamodb(monkeypatch) as client:
        yield client


def token_store_on(client: Any) -> Any:
    """A TokenStore on the moto table (one client for every call)."""
    from invoiced_connect.storage.store import TokenStore

    return TokenStore(TABLE_NAME, client_factory=lambda: client)


@pytest.fixture(name="db")
def db_fixture(moto_client: Any) -> Any:
    """``db``: the module's moto client, with the tokens table new and empty for this test."""
    return fresh_tokens_table(moto_client)


@pytest.fixture(name="store")
def store_fixture(db: Any) -> Any:
    """``store``: a TokenStore on ``db``."""
    return token_store_on(db)
