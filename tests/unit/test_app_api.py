"""The app API's request handling without AWS: any JSON in, a contract-shaped answer out."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from invoiced_connect.app_api import service as app_api
from invoiced_connect.core.models import Attention, Connection, ConnectionStatus
from invoiced_connect.sdk.tokens import AccessToken, ConnectionNotFound
from invoiced_connect.storage.store import AttentionEntry
from local.contracts import validator_for

KEY = "k" * 40
LINK_SETTINGS = SimpleNamespace(return_url_allowlist=("https://app.example.test/back",),
                                connect_url="https://connect.example.test/connect")
NAMES = ("connection_id", "return_to", "ttl_seconds", "allow_company_change", "min_validity_seconds", "rejected_version", "action",
         "limit", "next_token", "api_version", "surprise")
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**60), 2**60) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
VALUES = (st.sampled_from(["acme-7", "get", "list_attention", "https://app.example.test/back/x"]) | st.integers(-5, 4000)
          | JSON)
REQUESTS = st.dictionaries(st.sampled_from(NAMES), VALUES, max_size=5) | JSON


def row(**changes: Any) -> Connection:
    values = dict(connection_id="acme-7", tenant_id="167", company_name="Acme", scopes=("read_write",),
                  issuer="https://sandbox.invoiced.com", status=ConnectionStatus.ACTIVE, expires_at=2_000_000_000,
                  version=3, created_at=1, updated_at=2)
    return Connection(**{**values, **changes})


class FakeStateStore:
    def get_connection_state(self, connection_id: str) -> Connection | None:
        return row(connection_id=connection_id) if connection_id == "acme-7" else None

    def attention(self, kind: Attention, *, limit: int, start: dict[str, Any] | None = None):
        entries = [AttentionEntry(f"{kind.value}-{n}", kind, "why", "active", 10) for n in range(3)]
        offset = int(start["pk"]["S"].rsplit("-", 1)[1]) + 1 if start else 0
        page = entries[offset:offset + limit]
        more = offset + limit < len(entries)
        return page, ({"pk": {"S": page[-1].connection_id}} if more and page else None)


class FakeReader:
    def get_token(self, connection_id: str, *, min_validity_seconds: int) -> AccessToken:
        if connection_id != "acme-7":
            raise ConnectionNotFound(connection_id, "no such connection")
        return AccessToken(connection_id, "token", 2_000_000_000, "https://api.sandbox.invoiced.com", "167", 3)

    def replace_rejected(self, connection_id: str, version: int) -> AccessToken:
        return self.get_token(connection_id, min_validity_seconds=0)


def vendor() -> app_api.TokenVendor:
    tokens = app_api.TokenVendor(store=None, cipher=None, refresher=lambda: None)
    tokens.reader = FakeReader()  # type: ignore[assignment]
    return tokens


def answer_of(contract: str, call) -> dict[str, Any]:
    answer = app_api.answer(call)
    validator_for("error" if "error" in answer else contract).validate(answer)
    return answer


@settings(max_examples=300, deadline=None)
@given(REQUESTS)
def test_any_links_request_gets_a_link_or_a_typed_error(request):
    answer = answer_of("links.answer", lambda: app_api.create_link(request, settings=LINK_SETTINGS,
                                                                   signing_key=lambda: KEY, now=1_000_000))
    assert "error" in answer or answer["url"].startswith(LINK_SETTINGS.connect_url)


@pytest.mark.parametrize("allowed", [False, True])
def test_a_link_may_allow_a_company_change_and_says_so_in_its_claims(allowed):
    from invoiced_connect.connect.links import verify_link_token

    answer = answer_of("links.answer", lambda: app_api.create_link(
        {"connection_id": "acme-7", "allow_company_change": allowed}, settings=LINK_SETTINGS,
        signing_key=lambda: KEY, now=1_000_000))
    token = answer["url"].split("link=", 1)[1]
    assert verify_link_token(token, [KEY], now=1_000_000).allow_company_change is allowed


@pytest.mark.parametrize("value", [1, "true", None, [True]])
def test_an_allow_company_change_that_is_not_a_boolean_is_a_bad_request(value):
    answer = answer_of("links.answer", lambda: app_api.create_link(
        {"connection_id": "acme-7", "allow_company_change": value}, settings=LINK_SETTINGS,
        signing_key=lambda: KEY, now=1_000_000))
    assert (answer["error"], answer["message"]) == ("bad_request", "allow_company_change must be true or false")


@settings(max_examples=300, deadline=None)
@given(REQUESTS)
def test_any_tokens_request_gets_a_token_or_a_typed_error(request):
    answer_of("tokens.answer", lambda: vendor().get_token(request))


@settings(max_examples=300, deadline=None)
@given(REQUESTS)
def test_any_state_request_gets_a_state_or_a_typed_error(request):
    answer_of("connection-state.answer", lambda: app_api.connection_state(request, store=FakeStateStore()))


def test_the_attention_listing_walks_every_kind_page_by_page():
    seen, token, pages = [], None, 0
    while True:
        request = {"action": "list_attention", "limit": 2, **({"next_token": token} if token else {})}
        answer = answer_of("connection-state.answer", lambda r=request: app_api.connection_state(
            r, store=FakeStateStore()))
        seen += [entry["connection_id"] for entry in answer["connections"]]
        pages += 1
        token = answer["next_token"]
        if token is None:
            break
    assert seen == [f"{kind.value}-{n}" for kind in app_api.ATTENTION_ORDER for n in range(3)]
    assert pages == 5


def test_an_unexpected_failure_is_an_internal_error_without_its_message():
    def broken() -> dict[str, Any]:
        raise RuntimeError("secret detail")

    answer = answer_of("tokens.answer", broken)
    assert answer["error"] == "internal_error" and "secret" not in answer["message"]


def test_the_state_view_names_why_a_connection_needs_attention():
    view = app_api.connection_view(row(attention=Attention.FAILING, last_error="http_503", failure_count=3,
                                       next_attempt_at=123))
    assert (view["attention"], view["reason"], view["retry_at"]) == ("failing", "http_503", 123)
    assert view["api_url"] == "https://api.sandbox.invoiced.com"  # from the issuer
    closed = app_api.connection_view(row(status=ConnectionStatus.NEEDS_REAUTH, status_reason="invalid_grant",
                                         attention=Attention.NEEDS_REAUTH))
    assert closed["reason"] == "invalid_grant"
