"""The connect flow's rules (connect/flow.py) against recording fakes of the
store, cipher, Invoiced client, policy and events: what /connect stores and
where it sends the browser, and what /callback consumes, claims, exchanges,
stores, revokes, labels, publishes and shows."""

from __future__ import annotations

import dataclasses
import logging
from types import SimpleNamespace

import pytest

from invoiced_connect.cloud import events as connection_events
from invoiced_connect.cloud.secrets import SecretError
from invoiced_connect.connect import flow as flow_module
from invoiced_connect.connect import messages
from invoiced_connect.connect.flow import (
    CLEAR_COOKIE,
    CLEAR_RESULT_COOKIE,
    COOKIE_NAME,
    RESULT_COOKIE_NAME,
    ConnectFlow,
    FlowOutcome,
    FlowReport,
    ReplacedGrant,
    RequestRefused,
    _single,
    decode_outcome,
    outcome_cookie,
    parse_cookies,
    parse_query,
)
from invoiced_connect.connect.links import LinkClaims, sign_link_token
from invoiced_connect.connect.pages import HttpResult, OutcomePage
from invoiced_connect.connect.pkce import fingerprint, s256_challenge
from invoiced_connect.core.metrics import (
    CONNECT_FAILED,
    CONNECT_STARTED,
    CONNECTED,
    RECONNECTED,
    REPLACED_GRANT_REVOKE_FAILED,
    REPLACED_GRANT_REVOKED,
)
from invoiced_connect.core.models import Company, Connection, ConnectionStatus, TokenSet
from invoiced_connect.core.settings import SettingsError, load_settings
from invoiced_connect.invoiced.client import (
    ApiError,
    ClientAuthError,
    InvalidGrantError,
    InvalidTokenResponseError,
    TransientError,
)
from invoiced_connect.storage.crypto import SealedTokens
from invoiced_connect.storage.store import CompanyMismatch, LinkAlreadyUsed, Saved, StateRejected

NOW = 1_800_000_000.75  # a fractional clock: the flow works in whole seconds
KEY = "k" * 43
CID = "acme-42"
LINK_ID = "0123456789abcdef0123"
RETURN_TO = "https://app.example.com/done?tab=x"
ENV = {
    "TABLE_NAME": "tokens",
    "KMS_KEY_ID": "kms-key",
    "PUBLIC_BASE_URL": "https://connect.example.com",
    "INVOICED_CLIENT_ID": "client-1",
    "INVOICED_BASE_URL": "https://sandbox.invoiced.com",
    "INVOICED_SCOPE": "read",
    "RETURN_URL_ALLOWLIST": "https://app.example.com/",
}
REDIRECT_URI = "https://connect.example.com/callback"
#: ENV names no app: the pages say "the application".
APP = messages.GENERIC_APP
DENIED_MESSAGE = messages.declined(APP).text
LINK_USED_MESSAGE = messages.link_used(APP).text


def texts(message: messages.Message) -> tuple[str, str]:
    return message.title, message.text
ISSUER = "https://sandbox.invoiced.com"


# ------------------------------------------------------------------ fakes
def flow_records(caplog) -> list[logging.LogRecord]:
    """The flow's own log records (other tests may leave other loggers talking)."""
    return [record for record in caplog.records if record.name == flow_module.__name__]


class FakeStore:
    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.states: dict[str, object] = {}
        self.used_links: set[str] = set()
        self.claimed: set[str] = set()
        self.version = 1
        self.replaced: SealedTokens | None = None
        self.previous: Connection | None = None
        self.save_error: Exception | None = None
        self.name_saved = True

    def is_link_used(self, link_hash):
        self.calls.append(("is_link_used", link_hash))
        return link_hash in self.used_links

    def put_state(self, state):
        self.calls.append(("put_state", state))
        self.states[state.state_hash] = state

    def consume_state(self, state_hash, binding_hash, now):
        self.calls.append(("consume_state", state_hash, binding_hash, now))
        state = self.states.pop(state_hash, None)
        if state is None or state.binding_hash != binding_hash or state.expires_at <= now:
            raise StateRejected()
        return state

    def claim_link(self, link_hash, *, connection_id, expires_at, now):
        self.calls.append(("claim_link", link_hash, connection_id, expires_at, now))
        if link_hash in self.used_links:
            raise LinkAlreadyUsed()
        self.used_links.add(link_hash)

    def release_link(self, link_hash):
        self.calls.append(("release_link", link_hash))
        self.used_links.discard(link_hash)

    def save_replacing(self, **kwargs):
        self.calls.append(("save_replacing", kwargs))
        if self.save_error is not None:
            raise self.save_error
        tokens = kwargs["tokens"]
        connection = Connection(
            connection_id=kwargs["connection_id"], tenant_id=tokens.tenant_id, company_name=kwargs["company_name"],
            scopes=tokens.scopes, issuer=kwargs["issuer"], status=ConnectionStatus.ACTIVE,
            expires_at=tokens.expires_at, version=self.version, created_at=kwargs["now"], updated_at=kwargs["now"],
            refresh_at=kwargs["refresh_at"], active_until=kwargs["active_until"],
        )
        previous = self.previous
        if previous is None and self.version > 1:  # a row saved before: the same company, healthy
            previous = dataclasses.replace(connection, version=self.version - 1)
        return Saved(connection, self.replaced, previous)

    def set_company_name(self, connection_id, name, *, version):
        self.calls.append(("set_company_name", connection_id, name, version))
        return self.name_saved

    def names(self) -> list[str]:
        return [call[0] for call in self.calls]


class FakeCipher:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def encrypt(self, connection_id, access_token, refresh_token):
        self.calls.append(("encrypt", connection_id, access_token, refresh_token))
        return SealedTokens(access=f"A:{access_token}".encode(), refresh=f"R:{refresh_token}".encode())

    def decrypt_access(self, connection_id, sealed):
        self.calls.append(("decrypt_access", connection_id, sealed))
        return sealed.access.decode().removeprefix("A:")


TOKENS = TokenSet(access_token="new-access", refresh_token="new-refresh", expires_at=1_800_003_600,
                  tenant_id="167", scopes=("read",), lifetime=3500)


class FakeClient:
    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.exchange_error: Exception | None = None
        self.company: Company | Exception = Company(id="167", name="Acme Inc")
        self.revoke_error: Exception | None = None

    def authorize_url(self, **kwargs):
        self.calls.append(("authorize_url", kwargs))
        return "https://sandbox.invoiced.com/oauth/authorize?x=1"

    def exchange_code(self, **kwargs):
        self.calls.append(("exchange_code", kwargs))
        if self.exchange_error is not None:
            raise self.exchange_error
        return TOKENS

    def current_company(self, access_token, *, timeout=None):
        self.calls.append(("current_company", access_token, timeout))
        if isinstance(self.company, Exception):
            raise self.company
        return self.company

    def revoke(self, token, *, timeout=None):
        self.calls.append(("revoke", token, timeout))
        if self.revoke_error is not None:
            raise self.revoke_error


class FakePolicy:
    active_use_seconds = 7200

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def next_refresh_at(self, **kwargs):
        self.calls.append(kwargs)
        return 1_800_001_234


class FakeEvents:
    def __init__(self) -> None:
        self.published: list[tuple] = []

    def publish(self, kind, connection, **details):
        self.published.append((kind, connection, details) if details else (kind, connection))


class Keys:
    def __init__(self) -> None:
        self.calls: list[bool] = []

    def __call__(self, force):
        self.calls.append(force)
        return [KEY]


class Secret:
    def __init__(self, error: Exception | None = None) -> None:
        self.calls: list[bool] = []
        self.error = error

    def __call__(self, force):
        self.calls.append(force)
        if self.error is not None:
            raise self.error
        return "secret"


def make_flow(*, invoiced_error: Exception | None = None, events=True, env=None):
    store, cipher, client, policy = FakeStore(), FakeCipher(), FakeClient(), FakePolicy()
    bus = FakeEvents() if events else None

    def invoiced():
        if invoiced_error is not None:
            raise invoiced_error
        return client

    flow = ConnectFlow(settings=load_settings(env or ENV), store=store, cipher=cipher, link_keys=Keys(),
                       client_secret=Secret(), invoiced=invoiced, policy=policy, clock=lambda: NOW,
                       events=bus)
    return SimpleNamespace(flow=flow, store=store, cipher=cipher, client=client, policy=policy, events=bus)


def signed_link(return_to: str | None = None, expires_at: int = 1_800_000_900, key: str = KEY) -> str:
    return sign_link_token(LinkClaims(CID, return_to, expires_at, LINK_ID), key)


def cookie_value(set_cookie: str, name: str) -> str:
    first = set_cookie.split(";", 1)[0]
    assert first.startswith(f"{name}=")
    return first.split("=", 1)[1]


def started(t, return_to: str | None = None):
    """Run /connect; return (state, binding) as the browser would carry them back."""
    result = t.flow.start({"link": [signed_link(return_to)]}, "ref-s")
    assert result.status == 302
    state = t.client.calls[-1][1]["state"]
    binding = cookie_value(result.cookies[0], COOKIE_NAME)
    t.store.calls.clear()
    t.client.calls.clear()
    return state, binding


def outcome_of(result: HttpResult) -> OutcomePage:
    """The outcome page a callback redirect carries in its cookie."""
    assert result.status == 303
    assert result.headers["Location"] == REDIRECT_URI
    assert result.cookies[0] == CLEAR_COOKIE
    outcome = decode_outcome(cookie_value(result.cookies[1], RESULT_COOKIE_NAME))
    assert outcome is not None
    assert len(result.cookies) == 2
    return outcome


# ------------------------------------------------------------------ helpers
def test_parse_query_of_nothing_and_of_blank_values():
    assert parse_query("") == {}
    assert parse_query(None) == {}  # type: ignore[arg-type]
    assert parse_query("a=&b=2&a=1") == {"a": ["", "1"], "b": ["2"]}


def test_parse_cookies_skips_parts_without_equals_and_keeps_values_with_equals():
    assert parse_cookies(["flag; a=b=c", " x = y ", "z="]) == {"a": "b=c", "x ": " y", "z": ""}
    assert parse_cookies([]) == {}


def test_single_refuses_repeats_and_overlong_values_with_their_wording():
    with pytest.raises(RequestRefused) as info:
        _single({"code": ["a", "b"]}, "code")
    assert (info.value.status, info.value.title, info.value.message, info.value.reason) == (
        400, *texts(messages.parameter_repeated("code")), "duplicate_param")
    assert str(info.value) == messages.parameter_repeated("code").text
    assert info.value.return_to is None
    assert _single({"code": ["x" * 4096]}, "code") == "x" * 4096
    with pytest.raises(RequestRefused) as info:
        _single({"code": ["x" * 4097]}, "code")
    assert (info.value.status, info.value.title, info.value.message, info.value.reason) == (
        400, *texts(messages.parameter_too_long("code")), "param_too_long")
    assert _single({"code": []}, "code") is None
    assert _single({"code": [""]}, "code") == ""


@pytest.mark.parametrize("value", ["\ud800", "ok\udfff"])
def test_single_refuses_a_value_that_is_not_text(value):
    with pytest.raises(RequestRefused) as info:
        _single({"code": [value]}, "code")
    assert (info.value.status, info.value.title, info.value.message, info.value.reason) == (
        400, *texts(messages.parameter_not_text("code")), "param_not_text")
    assert _single({"code": ["caf\u00e9 \U0001f600"]}, "code") == "caf\u00e9 \U0001f600"


def test_flow_report_first_failure_stands_and_success_clears_the_reason():
    seen: list[str] = []
    report = FlowReport(on_connection_id=seen.append)
    report.identify("c-1")
    assert (report.connection_id, seen) == ("c-1", ["c-1"])
    FlowReport().identify("c-2")  # no callback: nothing to call
    assert not report.failed
    report.fail("denied")
    report.fail("other")
    assert (report.outcome, report.reason, report.failed) == (FlowOutcome.FAILED, "denied", True)
    report.succeed(FlowOutcome.CONNECTED)
    assert (report.outcome, report.reason, report.failed) == (FlowOutcome.CONNECTED, None, False)
    report.fail("late")
    assert (report.outcome, report.reason) == (FlowOutcome.CONNECTED, None)


@pytest.mark.parametrize(("reason", "counted"), [
    ("no_link", "link_invalid"), ("bad_link", "link_invalid"), ("return_to", "return_url_refused"),
    ("link_used", "link_used"), ("duplicate_param", "bad_request"), ("param_too_long", "bad_request"), ("param_not_text", "bad_request"),
    ("no_state", "bad_request"), ("no_code", "bad_request"), ("no_cookie", "state_rejected"),
    ("state_rejected", "state_rejected"), ("issuer", "state_rejected"), ("code_invalid", "code_rejected"),
    ("something_new", "bad_request"),
])
def test_a_refusal_is_counted_under_its_fixed_reason(reason, counted):
    report = FlowReport()
    report.refused(RequestRefused(400, "t", "m", reason))
    assert (report.outcome, report.reason) == (FlowOutcome.FAILED, counted)


def test_metric_names():
    assert FlowOutcome.STARTED.metric_name == CONNECT_STARTED
    assert FlowOutcome.CONNECTED.metric_name == CONNECTED
    assert FlowOutcome.RECONNECTED.metric_name == RECONNECTED
    assert FlowOutcome.FAILED.metric_name == CONNECT_FAILED
    assert ReplacedGrant.REVOKED.metric_name == REPLACED_GRANT_REVOKED
    assert ReplacedGrant.REVOKE_FAILED.metric_name == REPLACED_GRANT_REVOKE_FAILED
    assert (ReplacedGrant.REVOKED, ReplacedGrant.REVOKE_FAILED) == ("revoked", "revoke_failed")
    assert [o.value for o in FlowOutcome] == ["started", "connected", "reconnected", "failed"]


# The outcome cookie's own rules: tests/unit/test_outcome_cookie.py.


# ------------------------------------------------------------------ /connect
def test_start_stores_the_flow_and_redirects_to_invoiced_with_pkce(caplog):
    t = make_flow()
    seen: list[str] = []
    report = FlowReport(on_connection_id=seen.append)
    token = signed_link(RETURN_TO)
    caplog.clear()  # only what this call logs (a test before may have left the package logging at INFO)
    with caplog.at_level(logging.INFO, logger=flow_module.__name__):
        result = t.flow.start({"link": [token]}, "ref-1", report)

    assert result.status == 302
    assert result.headers["Location"] == "https://sandbox.invoiced.com/oauth/authorize?x=1"
    assert result.body == ""
    [(_, authorize)] = t.client.calls
    assert set(authorize) == {"redirect_uri", "scope", "state", "code_challenge"}
    assert authorize["redirect_uri"] == REDIRECT_URI
    assert authorize["scope"] == "read"
    [cookie] = result.cookies
    binding = cookie_value(cookie, COOKIE_NAME)
    assert cookie == f"__Host-invoiced-connect={binding}; Max-Age=600; Path=/; Secure; HttpOnly; SameSite=Lax"
    assert len(binding) == 43 and len(authorize["state"]) == 43 and binding != authorize["state"]

    assert t.store.names() == ["is_link_used", "put_state"]
    assert t.store.calls[0] == ("is_link_used", fingerprint(LINK_ID))
    state = t.store.calls[1][1]
    assert state.state_hash == fingerprint(authorize["state"])
    assert state.binding_hash == fingerprint(binding)
    assert s256_challenge(state.code_verifier) == authorize["code_challenge"]
    assert len(state.code_verifier) == 43
    assert (state.connection_id, state.issuer, state.redirect_uri, state.scope, state.return_to) == (
        CID, ISSUER, REDIRECT_URI, "read", RETURN_TO)
    assert state.expires_at == 1_800_000_600
    assert (state.link_hash, state.link_expires_at) == (fingerprint(LINK_ID), 1_800_000_900)
    assert (report.outcome, report.reason, report.connection_id, seen) == (FlowOutcome.STARTED, None, CID, [CID])
    assert t.flow.link_keys.calls == [False]
    assert [(r.getMessage(), r.connection_id) for r in flow_records(caplog)] == [("connect started", CID)]


def test_two_starts_use_fresh_state_binding_and_verifier():
    t = make_flow()
    t.flow.start({"link": [signed_link()]}, "r")
    t.flow.start({"link": [signed_link()]}, "r")
    first, second = (call[1] for call in t.store.calls if call[0] == "put_state")
    assert first.state_hash != second.state_hash
    assert first.binding_hash != second.binding_hash
    assert first.code_verifier != second.code_verifier
    assert first.return_to is None


def refused_page(result: HttpResult, status: int, title: str, message: str, reference: str) -> None:
    assert result.status == status
    assert f"<title>{title} - Connect to Invoiced</title>" in result.body.replace("&#x27;", "'")
    body = result.body.replace("&#x27;", "'")
    assert f"<h1>{title}</h1><p>{message}</p>" in body
    assert f"Reference: <code>{reference}</code>" in body
    assert "Location" not in result.headers


@pytest.mark.parametrize(("query", "message", "reason"), [
    ({}, messages.link_missing(APP), "link_invalid"),
    ({"link": [""]}, messages.link_missing(APP), "link_invalid"),
    ({"link": ["v1.bad"]}, messages.link_invalid(APP), "link_invalid"),
], ids=["none", "empty", "malformed"])
def test_start_without_a_usable_link_is_refused(query, message, reason, caplog):
    t = make_flow()
    report = FlowReport()
    caplog.clear()  # only what this call logs (a test before may have left the package logging at INFO)
    with caplog.at_level(logging.INFO, logger=flow_module.__name__):
        result = t.flow.start(query, "ref-2", report)
    refused_page(result, 403, *texts(message), "ref-2")
    assert result.cookies == ()
    assert t.store.calls == []
    assert (report.outcome, report.reason, report.connection_id) == (FlowOutcome.FAILED, reason, None)
    [record] = flow_records(caplog)
    assert (record.getMessage(), record.reason, record.reference, record.levelno) == (
        "connect refused", "bad_link" if query.get("link", [""])[0] else "no_link", "ref-2", logging.INFO)


def test_start_refuses_a_foreign_signature_and_an_expired_link(caplog):
    t = make_flow()
    report = FlowReport()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=flow_module.__name__):
        result = t.flow.start({"link": [signed_link(key="f" * 43)]}, "ref", report)
    refused_page(result, 403, *texts(messages.link_invalid(APP)), "ref")
    assert t.flow.link_keys.calls == [False, True]
    assert report.reason == "link_invalid" and report.connection_id is None
    assert [r.reason for r in flow_records(caplog)] == ["bad_signature"]
    caplog.clear()
    report = FlowReport()
    with caplog.at_level(logging.INFO, logger=flow_module.__name__):
        result = t.flow.start({"link": [signed_link(expires_at=1_800_000_000)]}, "ref", report)
    refused_page(result, 403, *texts(messages.link_expired(APP)), "ref")
    assert report.reason == "link_invalid" and report.connection_id is None
    assert [r.reason for r in flow_records(caplog)] == ["link_expired"]
    assert t.store.calls == []


def test_a_bad_signature_re_reads_the_keys_again_exactly_a_minute_later():
    t = make_flow()
    clock = [NOW]
    t.flow.clock = lambda: clock[0]
    foreign = sign_link_token(LinkClaims(CID, None, 1_800_009_000, LINK_ID), "f" * 43)
    t.flow.start({"link": [foreign]}, "r")
    clock[0] = NOW + 59.5
    t.flow.start({"link": [foreign]}, "r")
    assert t.flow.link_keys.calls == [False, True, False]
    clock[0] = NOW + 60
    t.flow.start({"link": [foreign]}, "r")
    assert t.flow.link_keys.calls == [False, True, False, False, True]


def test_start_refuses_a_repeated_link_parameter():
    t = make_flow()
    report = FlowReport()
    result = t.flow.start({"link": [signed_link(), signed_link()]}, "ref", report)
    refused_page(result, 400, *texts(messages.parameter_repeated("link")), "ref")
    assert report.reason == "bad_request"


def test_start_refuses_a_return_url_no_longer_allowed():
    t = make_flow(env={**ENV, "RETURN_URL_ALLOWLIST": "https://other.example.com/"})
    report = FlowReport()
    result = t.flow.start({"link": [signed_link(RETURN_TO)]}, "ref", report)
    refused_page(result, 403, *texts(messages.return_address_refused(APP)), "ref")
    assert "Back to" not in result.body  # the refused address is not offered
    assert (report.reason, report.connection_id) == ("return_url_refused", CID)
    assert t.store.calls == []


def test_start_refuses_a_used_link_before_storing_anything():
    t = make_flow()
    t.store.used_links.add(fingerprint(LINK_ID))
    report = FlowReport()
    result = t.flow.start({"link": [signed_link()]}, "ref", report)
    refused_page(result, 403, "Link already used", LINK_USED_MESSAGE, "ref")
    assert t.store.names() == ["is_link_used"]
    assert report.reason == "link_used"


@pytest.mark.parametrize("error", [SettingsError("no client id"), SecretError("no secret")])
def test_start_unconfigured_is_a_503_before_any_read_or_write(error, caplog):
    t = make_flow(invoiced_error=error)
    report = FlowReport()
    caplog.clear()  # only what this call logs (a test before may have left the package logging at INFO)
    with caplog.at_level(logging.INFO, logger=flow_module.__name__):
        result = t.flow.start({"link": [signed_link()]}, "ref-9", report)
    refused_page(result, 503, *texts(messages.not_configured()), "ref-9")
    assert t.store.calls == [] and t.flow.link_keys.calls == []
    assert (report.outcome, report.reason) == (FlowOutcome.FAILED, "not_configured")
    [record] = flow_records(caplog)
    assert (record.getMessage(), record.error, record.reference, record.levelno) == (
        "connect not configured", str(error), "ref-9", logging.ERROR)


def test_start_without_a_report_still_answers():
    t = make_flow()
    assert t.flow.start({"link": [signed_link()]}, "r").status == 302
    assert t.flow.start({}, "r").status == 403


# ------------------------------------------------------------------ /callback: outcome page
def test_callback_without_query_shows_the_outcome_cookie_once():
    t = make_flow()
    cookie = outcome_cookie(OutcomePage(200, "Connected", "", "r", company="Acme <b>", connected=True))
    result = t.flow.callback({}, {RESULT_COOKIE_NAME: cookie_value(cookie, RESULT_COOKIE_NAME)}, "ref")
    assert result.status == 200
    assert "<h1>Connected to Acme &lt;b&gt;</h1>" in result.body
    assert result.cookies == (CLEAR_RESULT_COOKIE,)
    assert t.store.calls == [] and t.client.calls == []


def test_callback_without_query_or_outcome_says_nothing_to_show():
    t = make_flow()
    report = FlowReport()
    result = t.flow.callback({}, {}, "ref-0", report)
    refused_page(result, 400, *texts(messages.nothing_to_show(APP)), "ref-0")
    assert result.cookies == ()
    assert report.outcome is None
    assert t.flow.callback({}, {RESULT_COOKIE_NAME: "garbage"}, "ref-0").status == 400


# ------------------------------------------------------------------ /callback: connected
def test_callback_connects_stores_first_then_labels_and_publishes(caplog):
    t = make_flow()
    state, binding = started(t)
    seen: list[str] = []
    report = FlowReport(on_connection_id=seen.append)
    caplog.clear()  # only what this call logs (a test before may have left the package logging at INFO)
    with caplog.at_level(logging.INFO, logger=flow_module.__name__):
        result = t.flow.callback({"state": [state], "code": ["the-code"]}, {COOKIE_NAME: binding}, "ref-c", report)

    assert outcome_of(result) == OutcomePage(200, "Connected", "", "ref-c", company="Acme Inc", connected=True)
    assert t.flow.client_secret.calls == [False]
    link_hash = fingerprint(LINK_ID)
    assert t.store.calls[:2] == [
        ("consume_state", fingerprint(state), fingerprint(binding), 1_800_000_000),
        ("claim_link", link_hash, CID, 1_800_000_900, 1_800_000_000),
    ]
    assert t.store.names() == ["consume_state", "claim_link", "save_replacing", "set_company_name"]
    assert t.client.calls[0][0] == "exchange_code"
    exchange = t.client.calls[0][1]
    assert set(exchange) == {"code", "redirect_uri", "code_verifier"}
    assert (exchange["code"], exchange["redirect_uri"]) == ("the-code", REDIRECT_URI)
    assert len(exchange["code_verifier"]) == 43
    assert t.cipher.calls == [("encrypt", CID, "new-access", "new-refresh")]
    saved = t.store.calls[2][1]
    assert saved == dict(connection_id=CID, tokens=TOKENS,
                         ciphertext=SealedTokens(access=b"A:new-access", refresh=b"R:new-refresh"),
                         company_name=None, issuer=ISSUER, api_url="https://api.sandbox.invoiced.com",
                         now=1_800_000_000, refresh_at=1_800_001_234, active_until=1_800_007_200,
                         allow_company_change=False)
    assert t.policy.calls == [dict(expires_at=1_800_003_600, now=1_800_000_000, active_until=1_800_007_200,
                                   lifetime=3500)]
    assert t.client.calls[1:] == [("current_company", "new-access", 3.0)]
    assert t.store.calls[3] == ("set_company_name", CID, "Acme Inc", 1)
    [(kind, published)] = t.events.published
    assert kind == connection_events.CONNECTION_CREATED
    assert (published.connection_id, published.company_name, published.version) == (CID, "Acme Inc", 1)
    assert (report.outcome, report.reason, report.connection_id, seen) == (FlowOutcome.CONNECTED, None, CID, [CID])
    assert report.replaced_grant is None
    messages = [(r.getMessage(), getattr(r, "connection_id", None)) for r in flow_records(caplog)]
    assert ("connection saved", CID) in messages
    saved_record = next(r for r in flow_records(caplog) if r.getMessage() == "connection saved")
    assert (saved_record.tenant_id, saved_record.version) == ("167", 1)


def test_callback_returns_to_the_application_with_the_connection_id():
    t = make_flow()
    state, binding = started(t, RETURN_TO)
    report = FlowReport()
    result = t.flow.callback({"state": [state], "code": ["c"]}, {COOKIE_NAME: binding}, "ref", report)
    assert result.status == 303
    assert result.headers["Location"] == "https://app.example.com/done?tab=x&connection_id=acme-42&status=connected"
    assert result.cookies == (CLEAR_COOKIE,)
    assert report.outcome is FlowOutcome.CONNECTED


def test_reconnect_revokes_the_replaced_grant_and_publishes_reconnected(caplog):
    t = make_flow()
    t.store.version = 2
    t.store.replaced = SealedTokens(access=b"A:old-access", refresh=b"R:old-refresh")
    state, binding = started(t)
    report = FlowReport()
    caplog.clear()  # only what this call logs (a test before may have left the package logging at INFO)
    with caplog.at_level(logging.INFO, logger=flow_module.__name__):
        result = t.flow.callback({"state": [state], "code": ["c"]}, {COOKIE_NAME: binding}, "ref", report)
    assert outcome_of(result).connected is True
    assert t.cipher.calls[1] == ("decrypt_access", CID, t.store.replaced)
    assert t.client.calls[1] == ("revoke", "old-access", 3.0)
    assert t.client.calls[2] == ("current_company", "new-access", 3.0)
    assert (report.outcome, report.replaced_grant) == (FlowOutcome.RECONNECTED, ReplacedGrant.REVOKED)
    assert t.store.calls[-1] == ("set_company_name", CID, "Acme Inc", 2)
    assert t.events.published[0][0] == connection_events.CONNECTION_RECONNECTED
    revoked = next(r for r in flow_records(caplog) if "revoked" in r.getMessage())
    assert (revoked.getMessage(), revoked.connection_id) == ("the replaced grant was revoked at Invoiced", CID)


@pytest.mark.parametrize("case", ["pre_split", "revoke_fails"])
def test_a_failed_revoke_is_logged_and_the_reconnect_stands(case, caplog):
    t = make_flow()
    t.store.version = 3
    if case == "pre_split":
        t.store.replaced = SealedTokens(pair=b"old-pair")
    else:
        t.store.replaced = SealedTokens(access=b"A:old", refresh=b"R:old")
        t.client.revoke_error = TransientError("timeout", reason="timed_out")
    state, binding = started(t)
    report = FlowReport()
    caplog.clear()  # only what this call logs (a test before may have left the package logging at INFO)
    with caplog.at_level(logging.INFO, logger=flow_module.__name__):
        result = t.flow.callback({"state": [state], "code": ["c"]}, {COOKIE_NAME: binding}, "ref", report)
    assert outcome_of(result).connected is True
    assert (report.outcome, report.replaced_grant) == (FlowOutcome.RECONNECTED, ReplacedGrant.REVOKE_FAILED)
    revokes = [c for c in t.client.calls if c[0] == "revoke"]
    [warning] = [r for r in flow_records(caplog) if r.levelno == logging.WARNING]
    assert warning.getMessage() == ("the replaced grant could not be revoked at Invoiced; it stays valid there "
                                    "until it expires")
    assert warning.connection_id == CID
    if case == "pre_split":
        assert revokes == [] and t.cipher.calls == [("encrypt", CID, "new-access", "new-refresh")]
        assert (warning.error_type, warning.reason) == ("ValueError", None)
    else:
        assert revokes == [("revoke", "old", 3.0)]
        assert (warning.error_type, warning.reason) == ("TransientError", "timed_out")


def test_a_revoke_error_with_an_empty_reason_logs_none(caplog):
    t = make_flow()
    t.store.version = 2
    t.store.replaced = SealedTokens(access=b"A:old", refresh=b"R:old")
    t.client.revoke_error = RuntimeError("boom")
    state, binding = started(t)
    caplog.clear()  # only what this call logs (a test before may have left the package logging at INFO)
    with caplog.at_level(logging.INFO, logger=flow_module.__name__):
        t.flow.callback({"state": [state], "code": ["c"]}, {COOKIE_NAME: binding}, "ref")
    [warning] = [r for r in flow_records(caplog) if r.levelno == logging.WARNING]
    assert (warning.error_type, warning.reason) == ("RuntimeError", None)


@pytest.mark.parametrize(("company", "name_saved", "shown", "stored"), [
    (ApiError("down", reason="api_down"), True, None, False),
    (Company(id="1", name=""), True, None, False),
    (Company(id="1", name="Acme Inc"), False, "Acme Inc", True),
])
def test_the_company_label_is_best_effort(company, name_saved, shown, stored, caplog):
    t = make_flow()
    t.client.company = company
    t.store.name_saved = name_saved
    state, binding = started(t)
    report = FlowReport()
    caplog.clear()  # only what this call logs (a test before may have left the package logging at INFO)
    with caplog.at_level(logging.INFO, logger=flow_module.__name__):
        result = t.flow.callback({"state": [state], "code": ["c"]}, {COOKIE_NAME: binding}, "ref", report)
    assert outcome_of(result) == OutcomePage(200, "Connected", "", "ref", company=shown, connected=True)
    assert ("set_company_name" in t.store.names()) is stored
    assert t.events.published[0][1].company_name == shown
    assert report.outcome is FlowOutcome.CONNECTED
    if isinstance(company, Exception):
        [warning] = [r for r in flow_records(caplog) if r.levelno == logging.WARNING]
        assert (warning.getMessage(), warning.reason, warning.connection_id) == ("company lookup failed", "api_down", CID)


def test_callback_without_events_publisher_still_connects():
    t = make_flow(events=False)
    state, binding = started(t)
    result = t.flow.callback({"state": [state], "code": ["c"]}, {COOKIE_NAME: binding}, "ref")
    assert outcome_of(result).connected is True


def test_a_failed_save_is_reported_and_raised():
    t = make_flow()
    t.store.save_error = RuntimeError("dynamo down")
    state, binding = started(t)
    report = FlowReport()
    with pytest.raises(RuntimeError, match="dynamo down"):
        t.flow.callback({"state": [state], "code": ["c"]}, {COOKIE_NAME: binding}, "ref", report)
    assert (report.outcome, report.reason) == (FlowOutcome.FAILED, "store_failed")
    assert "release_link" not in t.store.names()
    assert [c[0] for c in t.client.calls] == ["exchange_code"]


# ------------------------------------------------------------------ /callback: refused
def callback_refused(t, query, cookies, status, title, message, reason, **checks):
    report = FlowReport()
    result = t.flow.callback(query, cookies, "ref-r", report)
    outcome = outcome_of(result)
    assert outcome == OutcomePage(status, title, message, "ref-r")
    assert (report.outcome, report.reason) == (FlowOutcome.FAILED, reason)
    return report


def test_callback_without_state_is_refused_before_anything(caplog):
    t = make_flow()
    caplog.clear()  # only what this call logs (a test before may have left the package logging at INFO)
    with caplog.at_level(logging.INFO, logger=flow_module.__name__):
        callback_refused(t, {"code": ["c"]}, {COOKIE_NAME: "b"}, 400, *texts(messages.no_state()), "bad_request")
        callback_refused(t, {"state": [""], "code": ["c"]}, {COOKIE_NAME: "b"}, 400, *texts(messages.no_state()),
                         "bad_request")
    assert t.store.calls == [] and t.flow.client_secret.calls == []
    assert [(r.getMessage(), r.reason, r.reference) for r in flow_records(caplog)] == [
        ("callback refused", "no_state", "ref-r")] * 2


def test_callback_with_repeated_parameters_is_refused():
    t = make_flow()
    for name in ("state", "code", "error", "error_description"):
        query = {"state": ["s"], "code": ["c"], name: ["a", "b"]}
        callback_refused(t, query, {COOKIE_NAME: "b"}, 400, *texts(messages.parameter_repeated(name)), "bad_request")
    assert t.store.calls == []


def test_callback_without_the_cookie_is_refused_and_keeps_the_state(caplog):
    t = make_flow()
    state, _ = started(t)
    caplog.clear()  # only what this call logs (a test before may have left the package logging at INFO)
    with caplog.at_level(logging.INFO, logger=flow_module.__name__):
        for cookies in ({}, {COOKIE_NAME: ""}):
            callback_refused(t, {"state": [state], "code": ["c"]}, cookies, 400, *texts(messages.session_not_found()),
                             "state_rejected")
    assert t.store.calls == []
    assert [(r.getMessage(), r.reason, r.reference) for r in flow_records(caplog)] == [
        ("callback refused", "no_cookie", "ref-r")] * 2


def test_callback_with_a_rejected_state_is_refused():
    t = make_flow()
    state, binding = started(t)
    report = callback_refused(
        t, {"state": [state], "code": ["c"]}, {COOKIE_NAME: binding + "x"}, 400, *texts(messages.sign_in_expired()),
        "state_rejected")
    assert report.connection_id is None
    assert t.store.names() == ["consume_state"]
    assert t.client.calls == []


def test_a_state_is_consumed_once():
    t = make_flow()
    state, binding = started(t)
    t.flow.callback({"state": [state], "code": ["c"]}, {COOKIE_NAME: binding}, "ref")
    again = outcome_of(t.flow.callback({"state": [state], "code": ["c"]}, {COOKIE_NAME: binding}, "ref"))
    assert again.title == messages.sign_in_expired().title
    assert [c[0] for c in t.client.calls].count("exchange_code") == 1


def test_callback_from_another_issuer_is_refused_after_consuming():
    t = make_flow()
    state, binding = started(t)
    t.flow.settings = load_settings({**ENV, "INVOICED_BASE_URL": "https://invoiced.com"})
    report = callback_refused(t, {"state": [state], "code": ["c"]}, {COOKIE_NAME: binding}, 400,
                              *texts(messages.other_environment()), "state_rejected")
    assert report.connection_id == CID
    assert t.store.names() == ["consume_state"]


def test_callback_without_code_or_error_is_refused(caplog):
    t = make_flow()
    state, binding = started(t)
    caplog.clear()  # only what this call logs (a test before may have left the package logging at INFO)
    with caplog.at_level(logging.INFO, logger=flow_module.__name__):
        callback_refused(t, {"state": [state]}, {COOKIE_NAME: binding}, 400, *texts(messages.no_code()), "bad_request")
    assert [(r.getMessage(), r.reason) for r in flow_records(caplog)] == [("callback refused", "no_code")]
    assert t.flow.client_secret.calls == []
    assert t.store.names() == ["consume_state"]


@pytest.mark.parametrize("error", [SettingsError("x"), SecretError("y")])
def test_an_unreadable_client_secret_fails_before_spending_the_state(error, caplog):
    t = make_flow()
    state, binding = started(t)
    t.flow.client_secret = Secret(error)
    caplog.clear()  # only what this call logs (a test before may have left the package logging at INFO)
    with caplog.at_level(logging.INFO, logger=flow_module.__name__):
        callback_refused(t, {"state": [state], "code": ["c"]}, {COOKIE_NAME: binding}, 503,
                         *texts(messages.not_configured()), "not_configured")
    assert t.store.calls == []
    [record] = flow_records(caplog)
    assert (record.getMessage(), record.error, record.reference, record.levelno) == (
        "callback not configured", str(error), "ref-r", logging.ERROR)


def test_an_unconfigured_client_fails_before_spending_the_state():
    t = make_flow()
    state, binding = started(t)
    t.flow.invoiced = lambda: (_ for _ in ()).throw(SettingsError("no id"))
    callback_refused(t, {"state": [state], "code": ["c"]}, {COOKIE_NAME: binding}, 503,
                     *texts(messages.not_configured()), "not_configured")
    assert t.store.calls == []


def test_a_used_link_is_refused_at_claim_without_exchanging():
    t = make_flow()
    state, binding = started(t)
    t.store.used_links.add(fingerprint(LINK_ID))
    callback_refused(t, {"state": [state], "code": ["c"]}, {COOKIE_NAME: binding}, 400, "Link already used",
                     LINK_USED_MESSAGE, "link_used")
    assert t.client.calls == []
    assert "release_link" not in t.store.names()


# ------------------------------------------------------------------ /callback: denied
@pytest.mark.parametrize(("query", "reason", "logged"), [
    ({"error_description": ["The resource owner denied the request."]}, "denied", "denied"),
    ({"error": ["access_denied"]}, "denied", "access_denied"),
    ({"error": ["access_denied"], "code": ["c"]}, "denied", "access_denied"),
])
def test_a_denial_says_nothing_was_connected(query, reason, logged, caplog):
    t = make_flow()
    state, binding = started(t)
    report = FlowReport()
    caplog.clear()  # only what this call logs (a test before may have left the package logging at INFO)
    with caplog.at_level(logging.INFO, logger=flow_module.__name__):
        result = t.flow.callback({"state": [state], **query}, {COOKIE_NAME: binding}, "ref", report)
    assert outcome_of(result) == OutcomePage(200, "Not connected", DENIED_MESSAGE, "ref")
    assert (report.outcome, report.reason, report.connection_id) == (FlowOutcome.FAILED, reason, CID)
    assert t.store.names() == ["consume_state"] and t.client.calls == []
    [record] = flow_records(caplog)
    assert (record.getMessage(), record.connection_id, record.error) == ("authorization not granted", CID, logged)


@pytest.mark.parametrize(("query", "message", "logged"), [
    ({"error": ["invalid_request"], "error_description": ["Missing scope"]},
     messages.authorize_error("Missing scope"), "invalid_request"),
    ({"error": ["invalid_scope"]}, messages.authorize_error("invalid_scope"), "invalid_scope"),
    ({"error": ["weird<x>"]}, messages.authorize_error("weird<x>"), "other"),
], ids=["described", "named", "unknown"])
def test_an_authorize_error_is_shown_with_invoiced_wording(query, message, logged, caplog):
    t = make_flow()
    state, binding = started(t)
    report = FlowReport()
    caplog.clear()  # only what this call logs (a test before may have left the package logging at INFO)
    with caplog.at_level(logging.INFO, logger=flow_module.__name__):
        result = t.flow.callback({"state": [state], **query}, {COOKIE_NAME: binding}, "ref", report)
    assert outcome_of(result) == OutcomePage(400, *texts(message), "ref")
    assert (report.outcome, report.reason) == (FlowOutcome.FAILED, "authorize_error")
    assert flow_records(caplog)[0].error == logged


def test_an_empty_error_is_an_authorize_error_that_reports_nothing():
    t = make_flow()
    state, binding = started(t)
    report = FlowReport()
    result = t.flow.callback({"state": [state], "error": [""]}, {COOKIE_NAME: binding}, "ref", report)
    assert outcome_of(result) == OutcomePage(
        400, "Not connected",
        "Invoiced could not complete the sign-in and reported: . Start again from your connect link.", "ref")
    assert (report.outcome, report.reason) == (FlowOutcome.FAILED, "authorize_error")


@pytest.mark.parametrize("error", ["server_error", "temporarily_unavailable"])
def test_an_outage_reported_on_the_way_back_is_the_outage_page(error):
    t = make_flow()
    state, binding = started(t)
    report = FlowReport()
    result = t.flow.callback({"state": [state], "error": [error], "error_description": ["Down"]},
                             {COOKIE_NAME: binding}, "ref", report)
    assert outcome_of(result) == OutcomePage(503, *texts(messages.invoiced_unavailable()), "ref")
    assert (report.outcome, report.reason) == (FlowOutcome.FAILED, "authorize_error")
    assert {"server_error", "temporarily_unavailable"} == flow_module.OUTAGE_AUTHORIZE_ERRORS


def test_invoiced_wording_is_clipped_so_the_next_step_always_shows():
    limit = messages.MAX_REPORTED_IN_TEXT
    assert limit == 100
    exact = "\u65e5" * limit
    assert messages.authorize_error(exact).text == (
        f"Invoiced could not complete the sign-in and reported: {exact}. Start again from your connect link.")
    clipped = messages.authorize_error("\u65e5" * (limit + 1)).text
    assert clipped == ("Invoiced could not complete the sign-in and reported: " + "\u65e5" * (limit - 1)
                       + "\u2026. Start again from your connect link.")
    t = make_flow()
    state, binding = started(t)
    long = "\U0001f600" * 4000
    result = t.flow.callback({"state": [state], "error": ["invalid_request"], "error_description": [long[:4000]]},
                             {COOKIE_NAME: binding}, "ref")
    assert outcome_of(result).message.endswith("Start again from your connect link.")


@pytest.mark.parametrize("error", sorted(flow_module.KNOWN_AUTHORIZE_ERRORS))
def test_each_known_authorize_error_is_logged_by_name(error, caplog):
    t = make_flow()
    state, binding = started(t)
    caplog.clear()  # only what this call logs (a test before may have left the package logging at INFO)
    with caplog.at_level(logging.INFO, logger=flow_module.__name__):
        t.flow.callback({"state": [state], "error": [error]}, {COOKIE_NAME: binding}, "ref")
    assert flow_records(caplog)[0].error == error


@pytest.mark.parametrize(("query", "status"), [
    ({"error": ["access_denied"]}, "denied"),
    ({"error_description": ["no"]}, "denied"),
    ({"error": ["server_error"]}, "error"),
])
def test_a_denial_returns_to_the_application_when_it_asked(query, status):
    t = make_flow()
    state, binding = started(t, RETURN_TO)
    result = t.flow.callback({"state": [state], **query}, {COOKIE_NAME: binding}, "ref")
    assert result.status == 303
    assert result.headers["Location"] == f"https://app.example.com/done?tab=x&connection_id=acme-42&status={status}"
    assert result.cookies == (CLEAR_COOKIE,)


def test_an_error_description_with_a_code_is_not_a_denial():
    t = make_flow()
    state, binding = started(t)
    report = FlowReport()
    result = t.flow.callback({"state": [state], "code": ["c"], "error_description": ["hm"]},
                             {COOKIE_NAME: binding}, "ref", report)
    assert outcome_of(result).connected is True
    assert report.outcome is FlowOutcome.CONNECTED


# ------------------------------------------------------------------ /callback: exchange failures
@pytest.mark.parametrize(("kind", "message", "reason"), [
    ("token_response", messages.invoiced_answer_unusable(), "exchange_failed"),
    ("client_auth", messages.credentials_refused(APP), "client_auth_failed"),
    ("transient", messages.invoiced_unavailable(), "exchange_failed"),
], ids=["token_response", "client_auth", "transient"])
def test_an_exchange_failure_releases_the_link_and_shows_a_502(kind, message, reason, caplog):
    errors = {"token_response": InvalidTokenResponseError("bad", status=200, reason="no_token"),
              "client_auth": ClientAuthError("no", status=401, reason="invalid_client"),
              "transient": TransientError("slow", status=None, reason="timeout")}
    t = make_flow()
    state, binding = started(t)
    t.client.exchange_error = errors[kind]
    report = FlowReport()
    caplog.clear()  # only what this call logs (a test before may have left the package logging at INFO)
    with caplog.at_level(logging.INFO, logger=flow_module.__name__):
        result = t.flow.callback({"state": [state], "code": ["c"]}, {COOKIE_NAME: binding}, "ref-x", report)
    assert outcome_of(result) == OutcomePage(502, *texts(message), "ref-x")
    assert (report.outcome, report.reason) == (FlowOutcome.FAILED, reason)
    assert t.store.names() == ["consume_state", "claim_link", "release_link"]
    assert t.store.calls[-1] == ("release_link", fingerprint(LINK_ID))
    assert fingerprint(LINK_ID) not in t.store.used_links
    assert t.cipher.calls == [] and t.events.published == []
    [record] = [r for r in flow_records(caplog) if r.levelno == logging.ERROR]
    exc = errors[kind]
    assert (record.getMessage(), record.reason, record.status, record.reference) == (
        "code exchange failed", exc.reason, exc.status, "ref-x")


def test_an_invalid_grant_is_a_refusal_and_the_link_stays_usable():
    t = make_flow()
    state, binding = started(t)
    t.client.exchange_error = InvalidGrantError("expired", status=400, reason="invalid_grant")
    callback_refused(t, {"state": [state], "code": ["c"]}, {COOKIE_NAME: binding}, 400,
                     *texts(messages.authorization_expired()), "code_rejected")
    assert t.store.calls[-1] == ("release_link", fingerprint(LINK_ID))


def test_a_refused_callback_with_return_to_still_shows_the_outcome_page():
    t = make_flow()
    state, binding = started(t, RETURN_TO)
    t.client.exchange_error = InvalidGrantError("expired")
    result = t.flow.callback({"state": [state], "code": ["c"]}, {COOKIE_NAME: binding}, "ref")
    assert outcome_of(result).title == messages.authorization_expired().title


def test_callback_without_a_report_still_answers():
    t = make_flow()
    state, binding = started(t)
    assert outcome_of(t.flow.callback({"state": [state], "code": ["c"]}, {COOKIE_NAME: binding}, "r")).connected
    assert outcome_of(t.flow.callback({"code": ["c"]}, {}, "r")).status == 400


def test_query_parsing_from_the_raw_string_reaches_the_flow():
    t = make_flow()
    state, binding = started(t)
    query = parse_query(f"state={state}&code=abc%20d")
    cookies = parse_cookies([f"other=1; {COOKIE_NAME}={binding}"])
    t.flow.callback(query, cookies, "r")
    assert t.client.calls[0][1]["code"] == "abc d"


# ------------------------------------------------------------------ reconnects and companies
def _stored(**changes) -> Connection:
    values = dict(connection_id=CID, tenant_id="167", company_name="Acme Inc", scopes=("read",), issuer=ISSUER,
                  status=ConnectionStatus.ACTIVE, expires_at=1, version=4, created_at=2, updated_at=3)
    values.update(changes)
    return Connection(**values)


def _started_with(t, **claims):
    link = sign_link_token(LinkClaims(CID, claims.pop("return_to", None), 1_800_000_900, LINK_ID, **claims), KEY)
    result = t.flow.start({"link": [link]}, "ref-s")
    state = t.client.calls[-1][1]["state"]
    binding = cookie_value(result.cookies[0], COOKIE_NAME)
    t.store.calls.clear()
    t.client.calls.clear()
    return state, binding


@pytest.mark.parametrize("allowed", [False, True])
def test_the_links_company_change_permission_reaches_the_save(allowed):
    t = make_flow()
    state, binding = _started_with(t, allow_company_change=allowed)
    assert t.store.states[fingerprint(state)].allow_company_change is allowed
    t.flow.callback({"state": [state], "code": ["c"]}, {COOKIE_NAME: binding}, "ref")
    [save] = [call[1] for call in t.store.calls if call[0] == "save_replacing"]
    assert save["allow_company_change"] is allowed


def _mismatch(t, *, stored=None, return_to=None):
    t.store.save_error = CompanyMismatch(stored or _stored(tenant_id="99", company_name="Old Co"), "167")
    state, binding = _started_with(t, return_to=return_to)
    report = FlowReport()
    result = t.flow.callback({"state": [state], "code": ["c"]}, {COOKIE_NAME: binding}, "ref-m", report)
    return result, report


def test_a_reconnect_to_another_company_is_refused_revokes_the_new_grant_and_frees_the_link(caplog):
    t = make_flow()
    caplog.clear()  # only what this call logs
    with caplog.at_level(logging.INFO, logger=flow_module.__name__):
        result, report = _mismatch(t)
    page = outcome_of(result)
    expected = messages.company_mismatch("Old Co", "Acme Inc", "the application")
    assert page == OutcomePage(409, expected.title, expected.text, "ref-m")
    assert (report.outcome, report.reason) == (FlowOutcome.FAILED, "company_mismatch")
    assert t.client.calls[1:] == [("current_company", "new-access", 3.0), ("revoke", "new-access", 3.0)]
    assert ("release_link", fingerprint(LINK_ID)) in t.store.calls
    assert "set_company_name" not in t.store.names()
    [(kind, connection, details)] = t.events.published
    assert (kind, connection.tenant_id, connection.company_name) == (
        connection_events.CONNECTION_RECONNECT_REFUSED, "99", "Old Co")
    assert details == {"reason": "company_mismatch",
                       "extra": {"chosen_tenant_id": "167", "chosen_company_name": "Acme Inc"}}
    [warning] = [r for r in flow_records(caplog) if r.levelno == logging.WARNING]
    assert warning.getMessage() == "reconnect refused: another Invoiced company was chosen"
    assert (warning.connection_id, warning.tenant_id, warning.chosen_tenant_id) == (CID, "99", "167")


def test_a_refused_reconnect_whose_lookups_fail_still_says_what_happened(caplog):
    t = make_flow()
    t.client.company = TransientError("timeout", reason="timed_out")
    t.client.revoke_error = TransientError("timeout", reason="timed_out")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=flow_module.__name__):
        result, report = _mismatch(t, stored=_stored(tenant_id="99", company_name=None))
    assert outcome_of(result).message == messages.company_mismatch(None, None, "the application").text
    assert t.events.published[0][2]["extra"] == {"chosen_tenant_id": "167", "chosen_company_name": None}
    warnings = [r.getMessage() for r in flow_records(caplog) if r.levelno == logging.WARNING]
    assert warnings[0] == ("the refused grant could not be revoked at Invoiced; it stays valid there until it "
                           "expires")


def test_a_refused_reconnect_with_a_return_url_goes_back_with_its_status():
    t = make_flow()
    result, _ = _mismatch(t, return_to=RETURN_TO)
    assert result.status == 303
    assert result.headers["Location"] == f"{RETURN_TO}&connection_id={CID}&status=company_mismatch"
    assert result.cookies == (CLEAR_COOKIE,)


def test_a_reconnect_that_changed_company_carries_the_previous_one():
    t = make_flow()
    t.store.version = 5
    t.store.previous = _stored(tenant_id="99", company_name="Old Co")
    state, binding = _started_with(t, allow_company_change=True)
    t.flow.callback({"state": [state], "code": ["c"]}, {COOKIE_NAME: binding}, "ref")
    [(kind, connection, details)] = t.events.published
    assert (kind, connection.tenant_id, connection.company_name) == (
        connection_events.CONNECTION_RECONNECTED, "167", "Acme Inc")
    assert details == {"extra": {"previous_tenant_id": "99", "previous_company_name": "Old Co"}}


@pytest.mark.parametrize(("previous", "recovered"), [
    (_stored(), None),
    (_stored(status=ConnectionStatus.NEEDS_REAUTH), "needs_reauth"),
    (_stored(failure_count=2), "refresh_failing"),
    (_stored(outcome_unknown_at=5, failure_count=1), "outcome_unknown"),
    (_stored(status=ConnectionStatus.REVOKED, failure_count=2), None),
])
def test_a_reconnect_of_a_connection_in_trouble_publishes_recovered(previous, recovered):
    t = make_flow()
    t.store.version = 5
    t.store.previous = previous
    state, binding = started(t)
    t.flow.callback({"state": [state], "code": ["c"]}, {COOKIE_NAME: binding}, "ref")
    kinds = [(e[0], e[2] if len(e) > 2 else {}) for e in t.events.published]
    expected = [(connection_events.CONNECTION_RECONNECTED, {})]
    if recovered:
        expected.append((connection_events.CONNECTION_RECOVERED, {"reason": recovered}))
    assert kinds == expected
    assert all(e[1].company_name == "Acme Inc" and e[1].version == 5 for e in t.events.published)
