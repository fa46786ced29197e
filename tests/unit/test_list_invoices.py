"""The example consumer (invoiced_connect.entry.list_invoices and functions/list_invoices): no network.

API sessions come from the fake transport of tests/support/api_transport.py;
the token SDK is the real ``invoiced_connect.sdk.tokens`` with its default
reader replaced.
"""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Any

import pytest

from invoiced_connect.entry import list_invoices as list_invoices_module
from invoiced_connect.sdk import tokens as token_sdk
from invoiced_connect.sdk.tokens import ConnectionNotFound, ConnectionRevoked, NeedsReauthorization, TokenUnavailable
from tests.support.api_transport import (
    API,
    CID,
    SERVER_ERROR,
    TOKEN,
    UNAUTHORIZED,
    FakeTokens,
    assert_no_token,
    error,
    make,
    scripted,
)
from tests.support.runtime import use_parts

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def default_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    """The process runtime's reader is a fake (never AWS)."""
    use_parts(monkeypatch, reader=FakeTokens())


@pytest.fixture(autouse=True)
def metrics_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    """The handler emits metrics: give it the namespace template.yaml's Globals give every function."""
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "InvoicedConnect")


def load_handler():
    from local.lambda_runtime import import_handler

    _, handler = import_handler(ROOT / "functions" / "list_invoices" / "app.py", "handler", "ListInvoicesFunction")
    return handler


def context():
    from local.lambda_runtime import LambdaContext

    return LambdaContext(function_name="list-invoices", memory_limit_in_mb=128,
                         invoked_function_arn="arn:aws:lambda:us-east-1:123456789012:function:list-invoices",
                         aws_request_id="req-1")


@pytest.mark.parametrize(("event", "says"), [
    ({}, "connection id"),
    ({"connection_id": ""}, "connection id"),
    ({"connection_id": "bad id"}, "connection id"),
    ({"connection_id": 42}, "connection id"),
    ({"connection_id": "acme-42", "max_pages": 0}, "max_pages"),
    ({"connection_id": "acme-42", "max_pages": "3"}, "max_pages"),
    ({"connection_id": "acme-42", "max_pages": True}, "max_pages"),
    ({"connection_id": "acme-42", "max_pages": 1.5}, "max_pages"),
    ({"connection_id": "acme-42", "status": "lost"}, "status"),
    ({"connection_id": "acme-42", "status": 3}, "status"),
    ([], "JSON object"),
])
def test_handler_answers_bad_input_with_bad_request(event, says, monkeypatch):
    def no_api(*args, **kwargs):
        raise AssertionError("no API session for bad input")

    monkeypatch.setattr(list_invoices_module, "InvoicedApi", no_api)
    result = load_handler()(event, context())
    assert result["error"] == "bad_request"
    assert says in result["message"]


def test_handler_happy_path_returns_invoice_summaries_and_logs_only_the_connection_id(
        monkeypatch, default_reader, capfd):
    seen: dict[str, Any] = {}
    invoices = [
        {"id": 1, "number": "INV-1", "customer": 7, "status": "past_due", "currency": "usd", "total": 10.0,
         "balance": 10.0, "due_date": 1700000000, "items": [{"id": 5}], "url": "https://x.test/i/secret"},
        {"id": 2, "number": "INV-2", "customer": 8, "status": "paid", "currency": "usd", "total": 5.0,
         "balance": 0.0, "due_date": None},
    ]

    class FakeApi:
        def __init__(self, connection_id: str, *, tokens: Any = None, api_url: Any = None) -> None:
            seen["connection_id"] = connection_id

        def __enter__(self):
            return self

        def __exit__(self, *exc: object) -> None:
            seen["closed"] = True

        def list_invoices(self, **kwargs: Any):
            seen["kwargs"] = kwargs
            return iter(invoices)

    monkeypatch.setattr(list_invoices_module, "InvoicedApi", FakeApi)
    result = load_handler()({"connection_id": "acme-42", "status": "past_due", "max_pages": 2}, context())
    assert result == {
        "connection_id": "acme-42",
        "count": 1,
        "invoices": [{"id": 1, "number": "INV-1", "customer": 7, "status": "past_due", "currency": "usd",
                      "total": 10.0, "balance": 10.0, "due_date": 1700000000}],
    }
    assert seen == {"connection_id": "acme-42", "kwargs": {"status": "past_due", "max_pages": 2}, "closed": True}
    lines = [json.loads(line) for line in capfd.readouterr().out.splitlines() if line.startswith("{")]
    (done,) = [line for line in lines if line.get("message") == "list invoices finished"]
    assert done["connection_id"] == "acme-42" and done["outcome"] == "ok" and done["count"] == 1


@pytest.mark.parametrize(("error_class", "kind"), [
    (ConnectionNotFound, "not_found"),
    (NeedsReauthorization, "needs_reauth"),
    (ConnectionRevoked, "revoked"),
    (TokenUnavailable, "unavailable"),
])
def test_handler_maps_the_token_sdks_errors(error_class, kind, monkeypatch, capfd):
    class Failing(FakeTokens):
        def get_token(self, connection_id: str) -> str:
            raise error_class(connection_id, f"detail with {TOKEN}")

    use_parts(monkeypatch, reader=Failing(), settings=types.SimpleNamespace(configured_api_url=API))
    result = load_handler()({"connection_id": "acme-42"}, context())
    assert result["error"] == kind
    assert result["message"] and TOKEN not in result["message"]
    assert_no_token(capfd.readouterr())


def test_a_revoked_error_that_is_also_a_needs_reauthorization_still_says_revoked():
    class RevokedNeedingReauth(ConnectionRevoked, NeedsReauthorization):
        pass

    kind = list_invoices_module._error_kind(RevokedNeedingReauth(CID, "gone"))
    assert kind is not None and kind[0] == "revoked"


@pytest.mark.parametrize(("answers", "kind"), [
    ((UNAUTHORIZED, UNAUTHORIZED), "unauthorized"),
    ((SERVER_ERROR,) * 3, "unavailable"),
    ((error(403, "invalid_request", "no"),), "api_error"),
])
def test_handle_list_invoices_maps_api_errors(answers, kind, monkeypatch):
    h = make(scripted(*answers))
    monkeypatch.setattr(list_invoices_module, "InvoicedApi", lambda cid, **kw: h.api)
    result = list_invoices_module.handle_list_invoices({"connection_id": CID})
    assert result["error"] == kind
    assert_no_token(result)


def test_handle_list_invoices_lets_unexpected_errors_raise(monkeypatch):
    h = make(scripted(RuntimeError("boom")))
    monkeypatch.setattr(list_invoices_module, "InvoicedApi", lambda cid, **kw: h.api)
    with pytest.raises(RuntimeError):
        list_invoices_module.handle_list_invoices({"connection_id": CID})


def test_sample_event_is_a_valid_request():
    event = json.loads((ROOT / "events" / "list_invoices.json").read_text())
    assert list_invoices_module._parse_list_event(event) == (
        event["connection_id"], event.get("status"), event.get("max_pages"))


def test_the_real_token_sdk_exposes_the_errors_the_handler_maps():
    mapped = [error_class for error_class, _, _ in list_invoices_module._TOKEN_ERRORS]
    assert {cls.__name__ for cls in mapped} == {
        "ConnectionNotFound", "ConnectionRevoked", "NeedsReauthorization", "TokenUnavailable"}
    for error_class in mapped:
        assert issubclass(error_class, Exception)
        assert getattr(token_sdk, error_class.__name__) is error_class
    # The real reader has the TokenSource methods.
    assert callable(token_sdk.TokenReader.get_access_token) and callable(token_sdk.TokenReader.token_rejected)
