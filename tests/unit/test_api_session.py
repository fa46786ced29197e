"""`InvoicedApi` (invoiced_connect.sdk.api's ApiSession, with the process's reader by default) against a fake transport: no network.

The fake (tests/support/api_transport.py) is a requests transport adapter
mounted on a real ``requests.Session``, so requests itself prepares every
request (params, headers, JSON) exactly as it would for the network; the
adapter records what would have been sent and answers from a script. Sleeps
are recorded through the injected ``sleep``.
"""

from __future__ import annotations

import email.utils
import json
import logging
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

import pytest
import requests

from invoiced_connect import InvoicedApi
from invoiced_connect.invoiced.client import ApiError, InvoicedError, TransientError, UnknownOutcomeError
from invoiced_connect.sdk.api import (
    ApiAuthError,
    ApiConnectionError,
    ApiEnvironmentError,
    ApiNotFoundError,
    ApiRateLimitError,
    ApiRequestError,
    ApiResponseError,
    ApiServerError,
    ApiStatusError,
    ApiUnknownOutcomeError,
    ApiUrlError,
    TokenSource,
)
from invoiced_connect.sdk.tokens import AccessToken
from tests.support.api_transport import (
    API,
    CID,
    NEW_TOKEN,
    SERVER_ERROR,
    TOKEN,
    TOO_MANY,
    UNAUTHORIZED,
    Answer,
    FakeTokens,
    FakeTransport,
    Sent,
    assert_no_token,
    error,
    make,
    ok,
    scripted,
)
from tests.support.runtime import use_parts


def assert_clean_error(exc: BaseException) -> None:
    """The error, its repr, its attributes and its chain hold no token and no request."""
    assert_no_token(str(exc), repr(exc), repr(vars(exc)))
    assert exc.__cause__ is None
    assert exc.__context__ is None or not isinstance(exc.__context__, requests.RequestException)
    for value in vars(exc).values():
        assert not isinstance(value, (requests.Response, requests.PreparedRequest, requests.Request))


# ================================================================== headers and URLs
def test_every_request_carries_the_bearer_token_json_accept_a_timeout_and_no_redirects():
    h = make(scripted(ok({"id": 167, "name": "Acme"})), timeout=4.0)
    assert h.api.get("/companies/current") == {"id": 167, "name": "Acme"}
    (sent,) = h.transport.sent
    assert sent.headers["Authorization"] == f"Bearer {TOKEN}"
    assert sent.headers["Accept"] == "application/json"
    assert sent.url == f"{API}/companies/current"
    assert sent.timeout == (3.05, 4.0)
    assert h.tokens.gets == [CID]


def test_redirects_are_not_followed_so_the_token_cannot_be_carried_elsewhere():
    h = make(scripted((302, b"", {"Location": "https://evil.test/steal"})))
    with pytest.raises(ApiRequestError) as info:
        h.api.get("/invoices")
    assert info.value.status == 302
    assert [s.url for s in h.transport.sent] == [f"{API}/invoices"]


def test_session_defaults_cannot_replace_the_bearer_token():
    h = make(scripted(ok()))
    h.api._session.auth = ("someone", "else")
    h.api._session.headers["Authorization"] = "Basic c29tZW9uZTplbHNl"
    h.api.get("invoices")
    assert h.transport.sent[0].headers["Authorization"] == f"Bearer {TOKEN}"


@pytest.mark.parametrize(("api_url", "path", "expected"), [
    (API, "/invoices", f"{API}/invoices"),
    (API, "invoices", f"{API}/invoices"),
    (API + "/", "/invoices/5", f"{API}/invoices/5"),
    (API, f"{API}/invoices?page=2", f"{API}/invoices?page=2"),
    (API, "https://API.invoiced.test:443/invoices", "https://api.invoiced.test:443/invoices"),
    ("http://127.0.0.1:9001", "http://127.0.0.1:9001/invoices", "http://127.0.0.1:9001/invoices"),
])
def test_relative_paths_and_same_origin_urls_are_accepted(api_url, path, expected):
    h = make(scripted(ok([])), api_url=api_url)
    h.api.request("GET", path)
    assert h.transport.sent[0].url == expected


@pytest.mark.parametrize("url", [
    "https://evil.test/invoices",
    "http://api.invoiced.test/invoices",            # same host, other scheme
    "https://api.invoiced.test:8443/invoices",       # same host, other port
    "https://api.invoiced.test.evil.test/invoices",
    "https://api.invoiced.test@evil.test/invoices",
    "https://evil.test\\@api.invoiced.test/invoices",
    "https://user:pw@api.invoiced.test/invoices",    # credentials in the URL
    "//evil.test/invoices",
    "ftp://api.invoiced.test/invoices",
    "HTTPS://EVIL.TEST/invoices",
])
def test_urls_outside_the_api_origin_are_refused_before_any_token_is_read(url):
    h = make(scripted())
    with pytest.raises(ApiUrlError) as info:
        h.api.request("GET", url)
    assert h.transport.sent == []
    assert h.tokens.gets == []
    assert_clean_error(info.value)


def test_a_relative_path_cannot_climb_to_another_host():
    h = make(scripted(ok()))
    h.api.request("GET", "evil.test/x")  # no scheme, no "//": a path under the API
    assert h.transport.sent[0].url == f"{API}/evil.test/x"


def test_params_and_json_are_sent():
    h = make(scripted(ok({"id": 1})))
    h.api.request("PUT", "/invoices/1", params={"expand": "customer"}, json={"notes": "hi"})
    (sent,) = h.transport.sent
    assert sent.method == "PUT" and sent.query == {"expand": ["customer"]}
    assert json.loads(sent.body) == {"notes": "hi"}


def test_get_refuses_a_success_without_json():
    h = make(scripted((200, b"<html>maintenance</html>", {"Content-Type": "text/html"})))
    with pytest.raises(ApiResponseError):
        h.api.get("/companies/current")


def test_get_of_an_empty_success_is_none():
    h = make(scripted((204, None, {})))
    assert h.api.get("/invoices/1") is None


# ================================================================== pagination
def paged_server(total: int, *, link_base: str = API, relative: bool = False) -> Callable[[Sent], Answer]:
    """A list of ``total`` invoices served like Invoiced: bare array + Link header."""
    def route(sent: Sent) -> Answer:
        assert sent.path == "/invoices"
        page = int(sent.query.get("page", ["1"])[0])
        per_page = int(sent.query["per_page"][0])
        items = [{"id": n, "object": "invoice"} for n in range(1, total + 1)]
        last = max(1, -(-total // per_page))
        base = "" if relative else link_base
        kept = [(k, v[0]) for k, v in sorted(sent.query.items()) if k not in ("page", "per_page")]

        def link(n: int, rel: str) -> str:
            return f'<{base}/invoices?{urlencode([*kept, ("per_page", per_page), ("page", n)])}>; rel="{rel}"'

        links = [link(page, "self"), link(1, "first")]
        if page < last:
            links.append(link(page + 1, "next"))
        links.append(link(last, "last"))
        start = (page - 1) * per_page
        return (200, items[start:start + per_page], {"Link": ", ".join(links), "X-Total-Count": str(total)})
    return route


def test_iterate_follows_next_links_and_yields_every_item_exactly_once():
    h = make(paged_server(250))
    ids = [item["id"] for item in h.api.iterate("/invoices", {"sort": "id ASC"}, per_page=30)]
    assert ids == list(range(1, 251))
    assert len(h.transport.sent) == 9
    assert h.transport.sent[0].query == {"sort": ["id ASC"], "per_page": ["30"]}
    assert all(s.query["per_page"] == ["30"] and s.query["sort"] == ["id ASC"] for s in h.transport.sent)
    assert all(s.token == TOKEN for s in h.transport.sent)


def test_iterate_resolves_relative_next_links():
    h = make(paged_server(5, relative=True))
    assert [item["id"] for item in h.api.iterate("/invoices", per_page=2)] == [1, 2, 3, 4, 5]


def test_iterate_stops_after_max_pages():
    h = make(paged_server(250))
    assert len(list(h.api.iterate("/invoices", per_page=10, max_pages=3))) == 30
    assert len(h.transport.sent) == 3


def test_iterate_stops_on_the_last_page_without_a_next_link():
    h = make(scripted(ok([{"id": 1}], Link=f'<{API}/invoices?page=1>; rel="self"')))
    assert list(h.api.iterate("/invoices")) == [{"id": 1}]


@pytest.mark.parametrize("next_url", [
    "https://evil.test/invoices?page=2",
    "http://api.invoiced.test/invoices?page=2",
    "https://api.invoiced.test:444/invoices?page=2",
    "//evil.test/invoices?page=2",
])
def test_a_next_link_to_another_origin_is_refused_and_never_gets_the_token(next_url):
    h = make(scripted(ok([{"id": 1}], Link=f'<{next_url}>; rel="next"')))
    items = h.api.iterate("/invoices")
    assert next(items) == {"id": 1}
    with pytest.raises(ApiUrlError) as info:
        next(items)
    assert [urlsplit(s.url).netloc for s in h.transport.sent] == ["api.invoiced.test"]
    assert_clean_error(info.value)


def test_a_next_link_that_repeats_a_page_is_an_error_not_a_loop():
    h = make(lambda sent: ok([{"id": 1}], Link=f'<{API}/invoices?per_page=100>; rel="next"'))
    with pytest.raises(ApiResponseError) as info:
        list(h.api.iterate("/invoices"))
    assert info.value.reason == "pagination_loop"
    assert len(h.transport.sent) == 1


def test_iterate_refuses_a_body_that_is_not_a_list_of_objects():
    h = make(scripted(ok({"not": "a list"})))
    with pytest.raises(ApiResponseError):
        list(h.api.iterate("/invoices"))
    h = make(scripted(ok([1, 2])))
    with pytest.raises(ApiResponseError):
        list(h.api.iterate("/invoices"))


@pytest.mark.parametrize(("per_page", "max_pages"), [(0, None), (101, None), (True, None), (10, 0), (10, "2")])
def test_iterate_validates_its_arguments(per_page, max_pages):
    h = make(scripted())
    with pytest.raises(ValueError):
        list(h.api.iterate("/invoices", per_page=per_page, max_pages=max_pages))


def test_list_invoices_sends_filters_and_top_level_parameters():
    h = make(scripted(ok([])))
    list(h.api.list_invoices(status="past_due", customer=123, sort="date DESC", updated_after=1700000000,
                             metadata={"po": "7"}, number=None, per_page=50))
    assert h.transport.sent[0].path == "/invoices"
    assert h.transport.sent[0].query == {
        "filter[status]": ["past_due"], "filter[customer]": ["123"], "sort": ["date DESC"],
        "updated_after": ["1700000000"], "metadata[po]": ["7"], "per_page": ["50"],
    }


# ================================================================== 401
def test_a_401_asks_the_token_source_once_and_retries_with_the_new_token():
    h = make(scripted(UNAUTHORIZED, ok({"id": 167})))
    assert h.api.get("/companies/current") == {"id": 167}
    assert h.tokens.rejected == [(CID, TOKEN)]
    assert [s.token for s in h.transport.sent] == [TOKEN, NEW_TOKEN]
    assert h.sleeps == []


def test_a_second_401_raises_api_auth_error_without_a_third_attempt():
    h = make(scripted(UNAUTHORIZED, UNAUTHORIZED))
    with pytest.raises(ApiAuthError) as info:
        h.api.get("/companies/current")
    assert h.tokens.rejected == [(CID, TOKEN)]
    assert len(h.transport.sent) == 2
    assert info.value.status == 401 and info.value.error_type == "invalid_request"
    assert_clean_error(info.value)


def test_a_401_on_post_is_retried_too_because_nothing_was_processed():
    h = make(scripted(UNAUTHORIZED, (201, {"id": 9}, {})))
    assert h.api.request("POST", "/invoices", json={"customer": 1}).status_code == 201
    assert [s.token for s in h.transport.sent] == [TOKEN, NEW_TOKEN]


def test_errors_from_the_token_source_propagate_unchanged():
    class NeedsReauthorization(Exception):
        pass

    original = NeedsReauthorization("reconnect")
    h = make(scripted(UNAUTHORIZED), tokens=FakeTokens(on_rejected=original))
    with pytest.raises(NeedsReauthorization) as info:
        h.api.get("/invoices")
    assert info.value is original
    assert len(h.transport.sent) == 1


def test_each_page_gets_its_own_401_recovery():
    answers = iter([UNAUTHORIZED, ok([{"id": 1}], Link=f'<{API}/invoices?page=2>; rel="next"'),
                    UNAUTHORIZED, ok([{"id": 2}])])
    tokens = FakeTokens()
    h = make(lambda sent: next(answers), tokens=tokens)
    assert [i["id"] for i in h.api.iterate("/invoices")] == [1, 2]
    assert len(tokens.rejected) == 2


# ================================================================== 429
def test_429_backs_off_exponentially_with_full_jitter_then_succeeds():
    h = make(scripted(TOO_MANY, TOO_MANY, TOO_MANY, ok()), rng=lambda: 0.5)
    h.api.get("/invoices")
    assert h.sleeps == [0.25, 0.5, 1.0]  # 0.5 * min(8, 0.5 * 2**n)
    assert len(h.transport.sent) == 4


def test_429_backoff_is_capped_and_jittered_by_the_rng():
    draws = iter([0.0, 0.999, 1.0, 1.0, 1.0, 1.0, 1.0])
    h = make(scripted(*[TOO_MANY] * 7, ok()), rng=lambda: next(draws), max_rate_limit_retries=7)
    h.api.get("/invoices")
    assert h.sleeps[:2] == [0.0, pytest.approx(0.999)]
    assert h.sleeps[2:] == [2.0, 4.0, 8.0, 8.0, 8.0]


def test_429_after_the_last_retry_raises_a_rate_limit_error():
    h = make(scripted(*[TOO_MANY] * 3), max_rate_limit_retries=2)
    with pytest.raises(ApiRateLimitError) as info:
        h.api.get("/invoices")
    assert len(h.transport.sent) == 3 and len(h.sleeps) == 2
    assert info.value.status == 429 and info.value.error_type == "rate_limit_error"
    assert "Too many concurrent requests" in info.value.error_message
    assert isinstance(info.value, TransientError) and info.value.retryable
    assert_clean_error(info.value)


def test_429_is_retried_for_post_since_the_request_was_not_processed():
    h = make(scripted(TOO_MANY, (201, {"id": 9}, {})))
    assert h.api.request("POST", "/invoices", json={}).status_code == 201
    assert len(h.sleeps) == 1


@pytest.mark.parametrize(("header", "expected"), [("3", 3.0), ("0", 0.0), ("3600", 60.0)])
def test_a_retry_after_in_seconds_is_honoured(header, expected):
    h = make(scripted(error(429, "rate_limit_error", "slow down", **{"Retry-After": header}), ok()))
    h.api.get("/invoices")
    assert h.sleeps == [expected]


def test_a_retry_after_http_date_is_honoured():
    when = email.utils.formatdate(time.time() + 5, usegmt=True)
    h = make(scripted(error(429, "rate_limit_error", "slow down", **{"Retry-After": when}), ok()))
    h.api.get("/invoices")
    assert 3.0 <= h.sleeps[0] <= 6.0


def test_an_unreadable_retry_after_falls_back_to_backoff():
    h = make(scripted(error(429, "rate_limit_error", "slow down", **{"Retry-After": "soon"}), ok()))
    h.api.get("/invoices")
    assert h.sleeps == [0.25]


# ================================================================== 5xx and network failures
@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT", "DELETE"])
def test_5xx_is_retried_for_idempotent_methods(method):
    h = make(scripted(SERVER_ERROR, (503, b"<html>busy</html>", {}), ok()))
    assert h.api.request(method, "/invoices/1").status_code == 200
    assert len(h.transport.sent) == 3
    assert h.sleeps == [0.25, 0.5]


@pytest.mark.parametrize("method", ["POST", "PATCH"])
def test_5xx_is_never_retried_for_post_or_patch(method):
    h = make(scripted(SERVER_ERROR))
    with pytest.raises(ApiServerError) as info:
        h.api.request(method, "/invoices", json={"customer": 1})
    assert len(h.transport.sent) == 1 and h.sleeps == []
    assert info.value.status == 500 and info.value.error_type == "api_error"


def test_5xx_after_the_last_retry_raises_a_server_error():
    h = make(scripted(SERVER_ERROR, SERVER_ERROR, SERVER_ERROR), max_transient_retries=2)
    with pytest.raises(ApiServerError) as info:
        h.api.get("/invoices")
    assert len(h.transport.sent) == 3
    assert isinstance(info.value, TransientError)
    assert_clean_error(info.value)


def test_network_failures_are_retried_for_get():
    h = make(scripted(requests.ConnectionError("reset"), requests.ReadTimeout("slow"), ok()))
    assert h.api.get("/invoices") == {"ok": True}
    assert len(h.transport.sent) == 3 and len(h.sleeps) == 2


def test_network_failures_for_get_end_in_a_connection_error():
    h = make(scripted(*[requests.ConnectionError(f"reset {TOKEN}")] * 3))
    with pytest.raises(ApiConnectionError) as info:
        h.api.get("/invoices")
    assert len(h.transport.sent) == 3
    assert_clean_error(info.value)


def test_a_post_whose_answer_was_lost_is_not_retried_and_says_the_outcome_is_unknown():
    h = make(scripted(requests.ReadTimeout("slow")))
    with pytest.raises(ApiUnknownOutcomeError) as info:
        h.api.request("POST", "/invoices", json={"customer": 1})
    assert len(h.transport.sent) == 1 and h.sleeps == []
    assert isinstance(info.value, UnknownOutcomeError)
    assert_clean_error(info.value)


def test_a_post_that_never_connected_is_not_retried_and_is_a_connection_error():
    h = make(scripted(requests.ConnectTimeout("no route")))
    with pytest.raises(ApiConnectionError):
        h.api.request("POST", "/invoices", json={})
    assert len(h.transport.sent) == 1


# ================================================================== other 4xx
def test_a_4xx_raises_a_typed_error_with_invoiceds_type_message_and_param():
    h = make(scripted(error(400, "invalid_request", "per_page must be a positive integer", "per_page")))
    with pytest.raises(ApiRequestError) as info:
        h.api.get("/invoices", {"per_page": "x"})
    exc = info.value
    assert (exc.status, exc.error_type, exc.error_message, exc.param) == (
        400, "invalid_request", "per_page must be a positive integer", "per_page")
    assert "400" in str(exc) and "per_page must be a positive integer" in str(exc)
    assert "Authorization" not in repr(vars(exc)) and "Bearer" not in str(exc)
    assert len(h.transport.sent) == 1 and h.sleeps == []
    assert_clean_error(exc)


def test_a_404_is_a_not_found_error():
    h = make(scripted(error(404, "invalid_request", "Invoice was not found", "id")))
    with pytest.raises(ApiNotFoundError) as info:
        h.api.get("/invoices/404")
    assert info.value.status == 404 and isinstance(info.value, ApiRequestError)


def test_a_provider_message_that_echoes_the_token_is_redacted():
    h = make(scripted(error(403, "invalid_request", f"token {TOKEN} may not do this", TOKEN)))
    with pytest.raises(ApiRequestError) as info:
        h.api.get("/invoices")
    assert info.value.error_message == "token [redacted] may not do this"
    assert_clean_error(info.value)


def test_error_classes_reuse_the_invoiced_hierarchy():
    for cls in (ApiAuthError, ApiRequestError, ApiNotFoundError, ApiRateLimitError, ApiServerError,
                ApiConnectionError, ApiUnknownOutcomeError, ApiUrlError, ApiResponseError):
        assert issubclass(cls, ApiError) and issubclass(cls, InvoicedError)
    for cls in (ApiRateLimitError, ApiServerError, ApiConnectionError, ApiUnknownOutcomeError):
        assert issubclass(cls, TransientError) and cls.retryable
    for cls in (ApiAuthError, ApiRequestError, ApiUrlError, ApiResponseError):
        assert not issubclass(cls, TransientError) and not cls.retryable
    assert issubclass(ApiRateLimitError, ApiStatusError) and issubclass(ApiAuthError, ApiStatusError)


# ================================================================== no token anywhere
def test_the_token_is_not_kept_on_the_session_nor_in_its_repr():
    h = make(scripted(UNAUTHORIZED, ok()))
    h.api.get("/invoices")
    own_state = {k: v for k, v in vars(h.api).items() if k != "_tokens"}  # the fake source holds tokens
    assert_no_token(repr(h.api), repr(own_state), repr(dict(h.api._session.headers)))
    assert CID in repr(h.api)


def test_no_log_record_carries_the_token(caplog):
    caplog.set_level(logging.DEBUG)
    h = make(scripted(UNAUTHORIZED, TOO_MANY, SERVER_ERROR, requests.ConnectionError(TOKEN), ok()))
    h.api.get("/invoices")
    assert len(caplog.records) >= 4  # the 401, the 429, the 500 and the reset were all logged
    for record in caplog.records:
        assert_no_token(record.getMessage(), repr(vars(record)))
    assert any(getattr(r, "connection_id", None) == CID for r in caplog.records)


# ================================================================== construction
def test_defaults_come_from_the_token_sdk_and_the_settings_lazily(monkeypatch):
    fake_tokens = FakeTokens()
    use_parts(monkeypatch, reader=fake_tokens, settings=types.SimpleNamespace(configured_api_url=API + "/"))
    api = InvoicedApi(CID)
    assert api.api_url == API  # INVOICED_API_URL, when set, pins the API
    assert api._tokens is fake_tokens
    assert isinstance(fake_tokens, TokenSource)


# ================================================================== the connection's own environment
SANDBOX_API = "https://api.sandbox.invoiced.com"
PRODUCTION_API = "https://api.invoiced.com"


@dataclass
class EnvironmentTokens:
    """A TokenSource whose tokens say which API they belong to, as the SDK's do."""

    api_url: str | None
    gets: int = 0

    def get_token(self, connection_id: str) -> AccessToken:
        self.gets += 1
        return AccessToken(connection_id, TOKEN, 2_000_000_000, self.api_url, "167", 3)

    def token_rejected(self, connection_id: str, access_token: str) -> AccessToken:
        raise AssertionError("not in these tests")


def sandbox_session(route: Callable[[Sent], Answer], *, api_url: str | None = None,
                    tokens: EnvironmentTokens | None = None) -> tuple[InvoicedApi, FakeTransport]:
    transport = FakeTransport(route)
    session = requests.Session()
    session.trust_env = False
    session.mount("https://", transport)
    api = InvoicedApi(CID, tokens=tokens or EnvironmentTokens(SANDBOX_API), api_url=api_url, session=session,
                      sleep=lambda _: None)
    return api, transport


def test_with_nothing_configured_a_sandbox_connection_reaches_the_sandbox_api():
    api, transport = sandbox_session(scripted(ok({"id": 167})))
    assert api.get("/companies/current") == {"id": 167}
    assert [sent.url for sent in transport.sent] == [f"{SANDBOX_API}/companies/current"]
    assert api.api_url == SANDBOX_API


def test_a_configured_api_url_of_the_other_environment_is_refused_naming_both_and_nothing_is_sent():
    api, transport = sandbox_session(scripted(ok({})), api_url=PRODUCTION_API)
    with pytest.raises(ApiEnvironmentError) as caught:
        api.get("/companies/current")
    assert transport.sent == []
    assert PRODUCTION_API in str(caught.value) and SANDBOX_API in str(caught.value)
    assert (caught.value.configured, caught.value.connection_api_url) == (PRODUCTION_API, SANDBOX_API)


def test_a_configured_api_url_that_agrees_is_used():
    api, transport = sandbox_session(scripted(ok({})), api_url=SANDBOX_API + "/")
    api.get("/companies/current")
    assert [sent.url for sent in transport.sent] == [f"{SANDBOX_API}/companies/current"]


def test_a_connection_whose_api_is_unknown_needs_an_api_url():
    api, transport = sandbox_session(scripted(ok({})), tokens=EnvironmentTokens(None))
    with pytest.raises(ApiUrlError):
        api.get("/companies/current")
    assert transport.sent == []


def test_the_default_reader_without_invoiced_api_url_follows_the_connection(monkeypatch):
    tokens = EnvironmentTokens(SANDBOX_API)
    use_parts(monkeypatch, reader=tokens, settings=types.SimpleNamespace(configured_api_url=None))
    api = InvoicedApi(CID)
    assert api.api_url is None
    transport = FakeTransport(scripted(ok({})))
    api._session.mount("https://", transport)
    api.get("/companies/current")
    assert [sent.url for sent in transport.sent] == [f"{SANDBOX_API}/companies/current"]


@pytest.mark.parametrize("connection_id", ["", "-leading-dash", "has space", "x" * 129, None])
def test_an_invalid_connection_id_is_refused(connection_id):
    with pytest.raises(ValueError):
        InvoicedApi(connection_id, tokens=FakeTokens(), api_url=API)


@pytest.mark.parametrize("api_url", ["api.invoiced.test", "ftp://api.invoiced.test", "https://u:p@api.invoiced.test"])
def test_an_unusable_api_url_is_refused(api_url):
    with pytest.raises(ValueError):
        InvoicedApi(CID, tokens=FakeTokens(), api_url=api_url)

