"""`InvoicedApi` (invoiced_connect.sdk.api's ApiSession, with the process's reader by default) against the local Invoiced over real loopback HTTP.

Tokens come from a real consent + code exchange with ``InvoicedClient``; the
token source is a fake that hands them out and records ``token_rejected``.
Every request the session sends goes through a recording ``requests.Session``
so the tests can check what went over the wire. No AWS here: this module
starts its own ``LocalInvoiced`` and does not use the session-wide ``stack``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from invoiced_connect import InvoicedApi
from invoiced_connect.connect import pkce
from invoiced_connect.core.models import TokenSet
from invoiced_connect.invoiced.client import InvoicedClient
from invoiced_connect.sdk.api import (
    ApiAuthError,
    ApiRateLimitError,
    ApiRequestError,
    ApiServerError,
    ApiUrlError,
)
from invoiced_connect.sdk.tokens import ConnectionRevoked
from local.invoiced import LocalInvoiced
from local.invoiced.models import INVOICES_PER_COMPANY
from tests.support.runtime import use_parts

CLIENT_ID = "Lp4Xc8Vn2Rb6Tm1Qw9Zs3Hd7"
CLIENT_SECRET = "Ky2Fh7Wq4Nc9Dv1Bx6Mt3Js8Pr5Gz0La"
REDIRECT_URI = "http://127.0.0.1:8771/callback"
CID = "acme-42"
ACME, GLOBEX = 167, 168
ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def inv() -> Iterator[LocalInvoiced]:
    with LocalInvoiced(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, redirect_uris=[REDIRECT_URI]) as running:
        yield running


@pytest.fixture(autouse=True)
def _clean_faults(inv: LocalInvoiced) -> Iterator[None]:
    inv.faults.reset()
    yield
    inv.faults.reset()


@pytest.fixture(scope="module")
def client(inv: LocalInvoiced) -> InvoicedClient:
    return InvoicedClient(base_url=inv.base_url, api_url=inv.api_url, client_id=CLIENT_ID,
                          client_secret=lambda force: CLIENT_SECRET, timeout=5.0)


def connect(client: InvoicedClient, inv: LocalInvoiced, company_id: int | None = None) -> TokenSet:
    """A fresh token pair: the user approves on the consent page, then the code is exchanged."""
    verifier, state = pkce.new_verifier(), pkce.random_token()
    url = client.authorize_url(redirect_uri=REDIRECT_URI, scope="read_write", state=state,
                               code_challenge=pkce.s256_challenge(verifier))
    query = parse_qs(urlsplit(inv.consent(url, company_id=company_id)).query)
    assert query["state"] == [state]
    return client.exchange_code(code=query["code"][0], redirect_uri=REDIRECT_URI, code_verifier=verifier)


@dataclass
class Tokens:
    """A TokenSource handing out given tokens and recording every 401 report."""

    token: str
    fresh: str | None = None
    rejected: list[tuple[str, str]] = field(default_factory=list)

    def get_token(self, connection_id: str) -> str:
        return self.token  # a plain token: these tests pin api_url

    def token_rejected(self, connection_id: str, access_token: str) -> str:
        self.rejected.append((connection_id, access_token))
        if self.fresh is not None:
            self.token = self.fresh
        return self.token


class RecordingSession(requests.Session):
    """A real session that records (method, url, Authorization, status) of everything it sends."""

    def __init__(self) -> None:
        super().__init__()
        self.trust_env = False
        self.log: list[tuple[str, str, str | None, int | None]] = []

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        entry = [request.method or "", request.url or "", request.headers.get("Authorization"), None]
        try:
            response = super().send(request, **kwargs)
        finally:
            self.log.append(tuple(entry))  # type: ignore[arg-type]
        self.log[-1] = (*self.log[-1][:3], response.status_code)
        return response

    @property
    def statuses(self) -> list[int | None]:
        return [entry[3] for entry in self.log]

    @property
    def bearers(self) -> list[str | None]:
        return [entry[2] for entry in self.log]


@dataclass
class Harness:
    api: InvoicedApi
    session: RecordingSession
    tokens: Tokens
    sleeps: list[float]


def make(inv: LocalInvoiced, tokens: Tokens, *, sleep: Callable[[float], None] | None = None,
         api_url: str | None = None, **kwargs: Any) -> Harness:
    session = RecordingSession()
    sleeps: list[float] = []

    def record(seconds: float) -> None:
        sleeps.append(seconds)
        if sleep is not None:
            sleep(seconds)

    api = InvoicedApi(CID, tokens=tokens, api_url=api_url or inv.api_url, session=session, timeout=5.0,
                      sleep=record, rng=lambda: 0.5, **kwargs)
    return Harness(api, session, tokens, sleeps)


@pytest.fixture
def acme(client: InvoicedClient, inv: LocalInvoiced) -> TokenSet:
    return connect(client, inv, ACME)


def assert_absent(secret: str, *texts: object) -> None:
    for text in texts:
        assert secret not in str(text), "a token leaked"


# ================================================================== bearer and basics
def test_the_session_sends_the_bearer_token_and_reads_the_company(inv: LocalInvoiced, acme: TokenSet) -> None:
    h = make(inv, Tokens(acme.access_token))
    company = h.api.get("/companies/current")
    assert company["id"] == ACME and company["name"] == "Acme Corporation"
    assert h.session.bearers == [f"Bearer {acme.access_token}"]
    assert h.session.statuses == [200]


def test_without_the_bearer_header_the_local_invoiced_says_401(inv: LocalInvoiced) -> None:
    """Guards the test above: the header really is what gets us in."""
    response = requests.get(f"{inv.api_url}/companies/current", timeout=5)
    assert response.status_code == 401


# ================================================================== pagination
@pytest.mark.parametrize(("per_page", "pages"), [(30, 9), (100, 3), (7, 36)])
def test_iterating_invoices_yields_every_invoice_exactly_once(
        inv: LocalInvoiced, acme: TokenSet, per_page: int, pages: int) -> None:
    assert INVOICES_PER_COMPANY > 100  # more than one full page even at Invoiced's largest size
    h = make(inv, Tokens(acme.access_token))
    invoices = list(h.api.list_invoices(per_page=per_page))
    ids = [invoice["id"] for invoice in invoices]
    assert len(ids) == len(set(ids)) == INVOICES_PER_COMPANY
    assert ids == sorted(ids) and ids[0] == ACME * 100_000 + 1
    assert all(invoice["object"] == "invoice" for invoice in invoices)
    assert len(h.session.log) == pages
    # The first page was asked with the given size; the rest came from the Link header.
    total = requests.get(f"{inv.api_url}/invoices", params={"per_page": 1},
                         headers={"Authorization": f"Bearer {acme.access_token}"}, timeout=5)
    assert int(total.headers["X-Total-Count"]) == len(ids)
    assert all(parse_qs(urlsplit(url).query)["per_page"] == [str(per_page)] for _, url, _, _ in h.session.log)


def test_max_pages_stops_early(inv: LocalInvoiced, acme: TokenSet) -> None:
    h = make(inv, Tokens(acme.access_token))
    assert len(list(h.api.list_invoices(per_page=40, max_pages=2))) == 80
    assert len(h.session.log) == 2


def test_each_company_sees_its_own_invoices(client: InvoicedClient, inv: LocalInvoiced) -> None:
    globex = connect(client, inv, GLOBEX)
    h = make(inv, Tokens(globex.access_token))
    ids = {invoice["id"] for invoice in h.api.iterate("/invoices", per_page=100)}
    assert len(ids) == INVOICES_PER_COMPANY and all(i // 100_000 == GLOBEX for i in ids)


def test_a_bad_page_size_is_a_typed_4xx_with_invoiceds_error(inv: LocalInvoiced, acme: TokenSet) -> None:
    h = make(inv, Tokens(acme.access_token))
    with pytest.raises(ApiRequestError) as info:
        h.api.get("/invoices", {"per_page": "ten"})
    assert (info.value.status, info.value.error_type, info.value.param) == (400, "invalid_request", "per_page")
    assert "per_page" in info.value.error_message
    assert len(h.session.log) == 1 and h.sleeps == []


# ================================================================== 401 and rotation
def test_a_token_revoked_by_rotation_is_replaced_once_and_the_call_succeeds(
        client: InvoicedClient, inv: LocalInvoiced, acme: TokenSet) -> None:
    rotated = client.refresh(acme.refresh_token)  # someone else refreshed: the old pair is dead at once
    assert not inv.is_access_token_valid(acme.access_token)
    h = make(inv, Tokens(acme.access_token, fresh=rotated.access_token))

    company = h.api.get("/companies/current")

    assert company["id"] == ACME
    assert h.tokens.rejected == [(CID, acme.access_token)]
    assert h.session.bearers == [f"Bearer {acme.access_token}", f"Bearer {rotated.access_token}"]
    assert h.session.statuses == [401, 200]
    assert h.sleeps == []


def test_a_second_401_raises_api_auth_error(client: InvoicedClient, inv: LocalInvoiced, acme: TokenSet) -> None:
    client.revoke(acme.access_token)
    h = make(inv, Tokens(acme.access_token))  # the source has nothing better to offer
    with pytest.raises(ApiAuthError) as info:
        h.api.get("/companies/current")
    assert info.value.status == 401
    assert info.value.error_message == "The resource owner or authorization server denied the request."
    assert h.tokens.rejected == [(CID, acme.access_token)]
    assert h.session.statuses == [401, 401]
    assert_absent(acme.access_token, info.value, repr(info.value), vars(info.value))


def test_rotation_in_the_middle_of_pagination_is_survived(
        client: InvoicedClient, inv: LocalInvoiced, acme: TokenSet) -> None:
    tokens = Tokens(acme.access_token)
    h = make(inv, tokens)
    pages = h.api.list_invoices(per_page=100)
    first = [next(pages) for _ in range(100)]
    rotated = client.refresh(acme.refresh_token)
    tokens.fresh = rotated.access_token
    rest = list(pages)
    assert len({i["id"] for i in first + rest}) == INVOICES_PER_COMPANY
    assert h.session.statuses == [200, 401, 200, 200]
    assert tokens.rejected == [(CID, acme.access_token)]


# ================================================================== 429 (20 concurrent requests)
class Saturated:
    """Hold all of Invoiced's 20 concurrent slots for ``token`` with slow requests."""

    def __init__(self, inv: LocalInvoiced, token: str, *, hold_seconds: float = 1.0) -> None:
        self.inv, self.token = inv, token
        inv.faults.latency_ms = hold_seconds * 1000
        self.statuses: list[int] = []
        self.threads = [threading.Thread(target=self._hold, daemon=True) for _ in range(20)]

    def _hold(self) -> None:
        response = requests.get(f"{self.inv.api_url}/companies/current", timeout=10,
                                headers={"Authorization": f"Bearer {self.token}"})
        self.statuses.append(response.status_code)

    def __enter__(self) -> Saturated:
        for thread in self.threads:
            thread.start()
        deadline = time.monotonic() + 5
        # The limiter's own count: every slot taken before the session's request goes out.
        while self.inv._limiter._in_flight.get(self.token, 0) < 20:
            assert time.monotonic() < deadline, "the blockers never filled the 20 slots"
            time.sleep(0.01)
        return self

    def release(self, _seconds: float = 0.0) -> None:
        """Wait for the held requests to finish (used as the session's sleep)."""
        for thread in self.threads:
            thread.join(timeout=10)

    def __exit__(self, *exc: object) -> None:
        self.release()


def test_429_backs_off_with_the_injected_sleep_and_then_succeeds(inv: LocalInvoiced, acme: TokenSet) -> None:
    with Saturated(inv, acme.access_token) as blockers:
        h = make(inv, Tokens(acme.access_token), sleep=blockers.release)
        company = h.api.get("/companies/current")
    assert company["id"] == ACME
    assert blockers.statuses == [200] * 20
    assert h.session.statuses == [429, 200]
    assert h.sleeps == [0.25]  # rng 0.5 x the first step (0.5 s): full jitter, no Retry-After from Invoiced


def test_429_with_no_retries_left_raises_a_rate_limit_error(inv: LocalInvoiced, acme: TokenSet) -> None:
    with Saturated(inv, acme.access_token):
        h = make(inv, Tokens(acme.access_token), max_rate_limit_retries=0)
        with pytest.raises(ApiRateLimitError) as info:
            h.api.get("/companies/current")
    assert info.value.error_type == "rate_limit_error"
    assert info.value.error_message.startswith("Too many concurrent requests!")
    assert h.session.statuses == [429] and h.sleeps == []


# ================================================================== 5xx
def test_5xx_is_retried_for_get(inv: LocalInvoiced, acme: TokenSet) -> None:
    inv.faults.api_server_error_next = 2
    h = make(inv, Tokens(acme.access_token))
    assert h.api.get("/companies/current")["id"] == ACME
    assert h.session.statuses == [500, 500, 200]
    assert h.sleeps == [0.25, 0.5]


def test_5xx_beyond_the_retries_raises_a_server_error(inv: LocalInvoiced, acme: TokenSet) -> None:
    inv.faults.api_server_error_next = 3
    h = make(inv, Tokens(acme.access_token), max_transient_retries=2)
    with pytest.raises(ApiServerError) as info:
        h.api.get("/companies/current")
    assert info.value.error_type == "api_error"
    assert h.session.statuses == [500, 500, 500]
    assert inv.faults.api_server_error_next == 0


def test_5xx_is_not_retried_for_post(inv: LocalInvoiced, acme: TokenSet) -> None:
    inv.faults.api_server_error_next = 2
    h = make(inv, Tokens(acme.access_token))
    with pytest.raises(ApiServerError):
        h.api.request("POST", "/invoices", json={"customer": ACME * 1000 + 1})
    assert h.session.statuses == [500] and h.sleeps == []
    assert inv.faults.api_server_error_next == 1  # exactly one POST reached Invoiced


# ================================================================== Link to another origin
class _Recorder(BaseHTTPRequestHandler):
    """A loopback server: ``/invoices`` answers one page whose next link is ``server.next_url``."""

    def do_GET(self) -> None:
        self.server.requests.append((self.path, self.headers.get("Authorization")))  # type: ignore[attr-defined]
        body = json.dumps([{"id": 1, "object": "invoice"}]).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if self.server.next_url:  # type: ignore[attr-defined]
            self.send_header("Link", f'<{self.server.next_url}>; rel="next"')  # type: ignore[attr-defined]
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def two_servers() -> Iterator[tuple[ThreadingHTTPServer, ThreadingHTTPServer]]:
    servers = []
    for _ in range(2):
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
        server.requests, server.next_url = [], None  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
    yield servers[0], servers[1]
    for server in servers:
        server.shutdown()
        server.server_close()


def test_a_link_header_to_another_origin_is_refused_and_never_gets_the_token(two_servers) -> None:
    api_server, other = two_servers
    api_url = f"http://127.0.0.1:{api_server.server_port}"
    api_server.next_url = f"http://127.0.0.1:{other.server_port}/invoices?page=2"  # same host, other port
    secret = "CANARY-token-for-the-link-test"
    h = make(None, Tokens(secret), api_url=api_url)  # type: ignore[arg-type]
    items = h.api.iterate("/invoices")
    assert next(items)["id"] == 1
    with pytest.raises(ApiUrlError) as info:
        next(items)
    assert api_server.requests == [("/invoices?per_page=100", f"Bearer {secret}")]
    assert other.requests == []
    assert_absent(secret, info.value, repr(info.value))


# ================================================================== nothing leaks
def test_no_token_in_any_log_record_or_error_across_failures(
        client: InvoicedClient, inv: LocalInvoiced, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    old = connect(client, inv)
    new = client.refresh(old.refresh_token)
    inv.faults.api_server_error_next = 1
    h = make(inv, Tokens(old.access_token, fresh=new.access_token))
    assert len(list(h.api.list_invoices(per_page=100))) == INVOICES_PER_COMPANY  # a 401 and a 500 on the way
    errors: list[BaseException] = []
    client.revoke(new.access_token)
    for call in (lambda: h.api.get("/companies/current"), lambda: h.api.get("/nope")):
        try:
            call()
        except Exception as exc:
            errors.append(exc)
    assert [type(e) for e in errors] == [ApiAuthError, ApiAuthError]
    assert h.session.statuses[:3] == [401, 500, 200]
    records = [f"{r.getMessage()} {vars(r)!r}" for r in caplog.records]
    assert any("retry" in r for r in records) and any("fresh one" in r for r in records)
    for secret in (old.access_token, new.access_token, old.refresh_token, new.refresh_token):
        assert_absent(secret, *records, *errors, *(repr(e) for e in errors), *(vars(e) for e in errors), repr(h.api))


# ================================================================== the example consumer, end to end
@pytest.fixture
def default_reader(monkeypatch: pytest.MonkeyPatch, inv: LocalInvoiced) -> types.SimpleNamespace:
    """The process runtime's reader serving ``.current``; settings point at ``inv``."""
    reader = types.SimpleNamespace(current=None)

    class Current:  # whatever the test has put in reader.current
        def __getattr__(self, name: str) -> Any:
            return getattr(reader.current, name)

    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "InvoicedConnect")  # as template.yaml's Globals set it
    use_parts(monkeypatch, reader=Current(), settings=types.SimpleNamespace(configured_api_url=inv.api_url))
    return reader


def run_handler(event: dict[str, Any]) -> dict[str, Any]:
    from local.lambda_runtime import LambdaContext, import_handler

    _, handler = import_handler(ROOT / "functions" / "list_invoices" / "app.py", "handler", "ListInvoicesFunction")
    context = LambdaContext(function_name="list-invoices", memory_limit_in_mb=256, aws_request_id="req-live",
                            invoked_function_arn="arn:aws:lambda:us-east-1:123456789012:function:list-invoices")
    return handler(event, context)


def test_the_example_consumer_lists_a_connections_invoices(
        inv: LocalInvoiced, acme: TokenSet, default_reader: types.SimpleNamespace,
        capfd: pytest.CaptureFixture[str]) -> None:
    default_reader.current = Tokens(acme.access_token)
    result = run_handler({"connection_id": CID})
    assert result["connection_id"] == CID
    assert result["count"] == len(result["invoices"]) == INVOICES_PER_COMPANY
    assert set(result["invoices"][0]) == {"id", "number", "customer", "status", "currency", "total", "balance",
                                          "due_date"}
    assert result["invoices"][0]["number"] == "INV-00001"

    past_due = run_handler({"connection_id": CID, "status": "past_due", "max_pages": 1})
    every_past_due = {i["id"] for i in result["invoices"] if i["status"] == "past_due"}
    ids = [i["id"] for i in past_due["invoices"]]
    assert 0 < past_due["count"] == len(ids) <= 100  # one page at most
    assert set(ids) <= every_past_due and all(i["status"] == "past_due" for i in past_due["invoices"])
    out = capfd.readouterr().out
    assert f'"connection_id":"{CID}"' in out.replace(" ", "")
    assert_absent(acme.access_token, out)


def test_the_example_consumer_maps_a_token_sdk_error(default_reader: types.SimpleNamespace) -> None:
    class Revoked:
        def get_token(self, connection_id: str) -> str:
            raise ConnectionRevoked(connection_id, "the connection was disconnected")

        def token_rejected(self, connection_id: str, access_token: str) -> str:
            raise AssertionError("not reached")

    default_reader.current = Revoked()
    assert run_handler({"connection_id": CID})["error"] == "revoked"
    assert run_handler({"connection_id": "no spaces allowed"})["error"] == "bad_request"
