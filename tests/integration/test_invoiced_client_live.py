"""`InvoicedClient` against the local Invoiced over real loopback HTTP.

Each test drives the product's client (``invoiced_connect.invoiced.client``) against
a started ``LocalInvoiced`` and checks two things: the typed error (or
result) the client reports, and what actually happened on the server (which
tokens are still alive, how many token requests arrived). Together they prove
the client is right about every provider behaviour in
``shared/reference/invoiced-provider.md``: Invoiced's and stock league's error
shapes, strict refresh-token rotation, lost and truncated answers, and the
transient failures in front of the token endpoint.

No AWS here: this module starts its own LocalInvoiced and does not use the
session-wide ``stack`` fixture.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from urllib.parse import parse_qs, urlsplit

import pytest

from invoiced_connect.connect import pkce
from invoiced_connect.core.models import TokenSet
from invoiced_connect.invoiced.client import (
    ApiError,
    ClientAuthError,
    InvalidGrantError,
    InvoicedClient,
    InvoicedError,
    RequestRejectedError,
    TransientError,
    UnknownOutcomeError,
)
from local.invoiced import LocalInvoiced

CLIENT_ID = "Qm3Wz8Hr5Tk1Vb7Nd4Ls9Gx2"
CLIENT_SECRET = "Pf6Ja1Re8Yc3Um5Kw0Tz7Hn2Lq9Vd4Sb"
WRONG_SECRET = "Zz9Yy8Xx7Ww6Vv5Uu4Tt3Ss2Rr1Qq0Pp"
REDIRECT_URI = "http://127.0.0.1:8765/callback"
# Registered too (loopback matches on any port), but not the one used at authorize.
OTHER_REDIRECT_URI = "http://127.0.0.1:8766/callback"
ACME, GLOBEX = 167, 168
FAST_TIMEOUT = 1.0  # the client's timeout in the timeout test (seconds)

assert len(CLIENT_ID) == 24 and CLIENT_ID.isalnum()
assert len(CLIENT_SECRET) == 32 and CLIENT_SECRET.isalnum()
assert len(WRONG_SECRET) == 32 and WRONG_SECRET != CLIENT_SECRET

STYLES = ("invoiced", "league")


# ------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def inv() -> Iterator[LocalInvoiced]:
    with LocalInvoiced(client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
                       redirect_uris=[REDIRECT_URI]) as running:
        yield running


@pytest.fixture(autouse=True)
def _clean_faults(inv: LocalInvoiced) -> Iterator[None]:
    inv.faults.reset()
    yield
    inv.faults.reset()


def make_client(inv: LocalInvoiced, *, secret: Callable[[bool], str] | None = None,
                timeout: float = 5.0, base_url: str | None = None,
                api_url: str | None = None) -> InvoicedClient:
    return InvoicedClient(
        base_url=base_url or inv.base_url,
        api_url=api_url or inv.api_url,
        client_id=CLIENT_ID,
        client_secret=secret or (lambda force: CLIENT_SECRET),
        timeout=timeout,
    )


@pytest.fixture
def client(inv: LocalInvoiced) -> InvoicedClient:
    return make_client(inv)


class SecretSource:
    """A ``client_secret`` callable that records every call's ``force`` flag."""

    def __init__(self, normal: str, forced: str) -> None:
        self.normal, self.forced = normal, forced
        self.calls: list[bool] = []

    def __call__(self, force: bool) -> str:
        self.calls.append(force)
        return self.forced if force else self.normal


# ------------------------------------------------------------------ helpers
def authorize(client: InvoicedClient, inv: LocalInvoiced, *, scope: str = "read_write",
              company_id: int | None = None, redirect_uri: str = REDIRECT_URI) -> tuple[str, str]:
    """Act as the user approving on the consent page; return (code, verifier)."""
    verifier = pkce.new_verifier()
    state = pkce.random_token()
    url = client.authorize_url(redirect_uri=redirect_uri, scope=scope, state=state,
                               code_challenge=pkce.s256_challenge(verifier))
    assert url.startswith(f"{inv.base_url}/oauth/authorize?")
    location = inv.consent(url, company_id=company_id)
    parts = urlsplit(location)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == redirect_uri
    query = parse_qs(parts.query)
    assert query.get("state") == [state]
    assert "error" not in query and "error_description" not in query
    (code,) = query["code"]
    return code, verifier


def connect(client: InvoicedClient, inv: LocalInvoiced, **kwargs: object) -> TokenSet:
    """A fresh, valid token pair from a full authorize + exchange."""
    code, verifier = authorize(client, inv, **kwargs)  # type: ignore[arg-type]
    return client.exchange_code(code=code, redirect_uri=str(kwargs.get("redirect_uri", REDIRECT_URI)),
                                code_verifier=verifier)


def assert_pair_valid(inv: LocalInvoiced, tokens: TokenSet) -> None:
    assert inv.is_access_token_valid(tokens.access_token)
    assert inv.is_refresh_token_valid(tokens.refresh_token)


def assert_pair_dead(inv: LocalInvoiced, tokens: TokenSet) -> None:
    assert not inv.is_access_token_valid(tokens.access_token)
    assert not inv.is_refresh_token_valid(tokens.refresh_token)


def closed_port() -> tuple[socket.socket, int]:
    """A loopback port that is bound but not listening: connecting is refused (RST).

    Keeping the socket bound (the caller closes it) means no other process can
    start listening there while the test runs.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock, sock.getsockname()[1]


# ================================================================== code exchange
@pytest.mark.parametrize(("company_id", "tenant", "scope"), [
    (None, "167", "read_write"),
    (GLOBEX, "168", "read_write"),
    (ACME, "167", "read"),
])
def test_exchange_code_returns_usable_tokens_for_the_picked_company(
        client: InvoicedClient, inv: LocalInvoiced, company_id: int | None, tenant: str, scope: str) -> None:
    code, verifier = authorize(client, inv, scope=scope, company_id=company_id)
    assert code.startswith("def50200")
    before = time.time()
    tokens = client.exchange_code(code=code, redirect_uri=REDIRECT_URI, code_verifier=verifier)
    after = time.time()

    assert isinstance(tokens, TokenSet)
    assert tokens.tenant_id == tenant
    assert tokens.scopes == (scope,)
    assert int(before) + 3600 - 1 <= tokens.expires_at <= int(after) + 3600 + 1
    assert tokens.refresh_token.startswith("def50200")
    assert tokens.access_token.count(".") == 2  # a JWT
    assert_pair_valid(inv, tokens)
    # The token really is for that company on the REST API.
    company = client.current_company(tokens.access_token)
    assert company.id == tenant


@pytest.mark.parametrize("style", STYLES)
def test_exchanging_the_same_code_twice_fails_the_second_time(
        client: InvoicedClient, inv: LocalInvoiced, style: str) -> None:
    inv.faults.set(error_style=style)
    code, verifier = authorize(client, inv)
    first = client.exchange_code(code=code, redirect_uri=REDIRECT_URI, code_verifier=verifier)
    with pytest.raises(InvalidGrantError) as caught:
        client.exchange_code(code=code, redirect_uri=REDIRECT_URI, code_verifier=verifier)
    assert not isinstance(caught.value, TransientError)
    # The failed replay does not disturb the tokens the first exchange got.
    assert_pair_valid(inv, first)


@pytest.mark.parametrize("style", STYLES)
def test_wrong_code_verifier_is_an_invalid_grant(client: InvoicedClient, inv: LocalInvoiced, style: str) -> None:
    inv.faults.set(error_style=style)
    code, verifier = authorize(client, inv)
    other = pkce.new_verifier()
    assert other != verifier
    before = inv.token_request_count()
    with pytest.raises(InvalidGrantError):
        client.exchange_code(code=code, redirect_uri=REDIRECT_URI, code_verifier=other)
    assert inv.token_request_count() == before + 1


@pytest.mark.parametrize("style", STYLES)
def test_wrong_redirect_uri_is_an_invalid_grant(client: InvoicedClient, inv: LocalInvoiced, style: str) -> None:
    """A redirect URI that is registered but differs from the one sent at authorize."""
    inv.faults.set(error_style=style)
    code, verifier = authorize(client, inv)
    with pytest.raises(InvalidGrantError):
        client.exchange_code(code=code, redirect_uri=OTHER_REDIRECT_URI, code_verifier=verifier)


@pytest.mark.parametrize("style", STYLES)
def test_unknown_code_is_an_invalid_grant(client: InvoicedClient, inv: LocalInvoiced, style: str) -> None:
    inv.faults.set(error_style=style)
    with pytest.raises(InvalidGrantError):
        client.exchange_code(code="def50200" + "ab" * 40, redirect_uri=REDIRECT_URI,
                             code_verifier=pkce.new_verifier())


# ================================================================== refresh and rotation
@pytest.mark.parametrize("style", STYLES)
def test_refresh_rotates_and_kills_the_old_pair_at_once(
        client: InvoicedClient, inv: LocalInvoiced, style: str) -> None:
    inv.faults.set(error_style=style)
    old = connect(client, inv, company_id=GLOBEX)

    new = client.refresh(old.refresh_token)

    assert new.refresh_token != old.refresh_token
    assert new.access_token != old.access_token
    assert new.tenant_id == "168"
    assert new.scopes == old.scopes
    assert abs(new.expires_at - (time.time() + 3600)) <= 2
    assert_pair_valid(inv, new)
    assert_pair_dead(inv, old)  # no grace period, for either token
    # The old access token is refused by the REST API immediately.
    with pytest.raises(ApiError) as api:
        client.current_company(old.access_token)
    assert api.value.status == 401

    with pytest.raises(InvalidGrantError) as caught:
        client.refresh(old.refresh_token)
    assert not isinstance(caught.value, TransientError)
    if style == "invoiced":
        assert caught.value.reason == "refresh_token_invalid"
    # A failed refresh with the dead token does not hurt the live pair.
    assert_pair_valid(inv, new)


@pytest.mark.parametrize("style", STYLES)
def test_unknown_refresh_token_is_an_invalid_grant(client: InvoicedClient, inv: LocalInvoiced, style: str) -> None:
    inv.faults.set(error_style=style)
    with pytest.raises(InvalidGrantError):
        client.refresh("def50200" + "cd" * 60)


def test_racing_refreshes_have_exactly_one_winner(inv: LocalInvoiced, client: InvoicedClient) -> None:
    tokens = connect(client, inv)
    clients = [make_client(inv), make_client(inv)]
    barrier = threading.Barrier(len(clients))
    results: list[TokenSet | BaseException] = [RuntimeError("not run")] * len(clients)

    def run(i: int) -> None:
        barrier.wait(timeout=5)
        try:
            results[i] = clients[i].refresh(tokens.refresh_token)
        except BaseException as exc:  # noqa: BLE001 - inspected below
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(clients))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)

    winners = [r for r in results if isinstance(r, TokenSet)]
    losers = [r for r in results if not isinstance(r, TokenSet)]
    assert len(winners) == 1, results
    assert len(losers) == 1 and isinstance(losers[0], InvalidGrantError), results
    assert_pair_valid(inv, winners[0])
    assert_pair_dead(inv, tokens)


# ================================================================== client authentication
@pytest.mark.parametrize("style", STYLES)
def test_wrong_client_secret_is_a_client_auth_error(inv: LocalInvoiced, style: str) -> None:
    tokens = connect(make_client(inv), inv)
    inv.faults.set(error_style=style)
    secret = SecretSource(WRONG_SECRET, WRONG_SECRET)
    client = make_client(inv, secret=secret)
    before = inv.token_request_count()

    with pytest.raises(ClientAuthError) as caught:
        client.refresh(tokens.refresh_token)

    assert not isinstance(caught.value, (TransientError, InvalidGrantError))
    # The secret was re-read once (forced); an unchanged secret is not sent again.
    assert secret.calls == [False, True]
    assert inv.token_request_count() == before + 1
    # Client authentication fails before the grant is looked at: the token lives on.
    assert_pair_valid(inv, tokens)


@pytest.mark.parametrize("style", STYLES)
def test_wrong_client_secret_on_code_exchange_is_a_client_auth_error(inv: LocalInvoiced, style: str) -> None:
    inv.faults.set(error_style=style)
    client = make_client(inv, secret=lambda force: WRONG_SECRET)
    code, verifier = authorize(client, inv)
    with pytest.raises(ClientAuthError):
        client.exchange_code(code=code, redirect_uri=REDIRECT_URI, code_verifier=verifier)
    # The code was not spent; the right secret can still redeem it.
    tokens = make_client(inv).exchange_code(code=code, redirect_uri=REDIRECT_URI, code_verifier=verifier)
    assert_pair_valid(inv, tokens)


@pytest.mark.parametrize("style", STYLES)
def test_rotated_secret_is_reread_once_and_the_refresh_succeeds(inv: LocalInvoiced, style: str) -> None:
    tokens = connect(make_client(inv), inv)
    inv.faults.set(error_style=style)
    secret = SecretSource(WRONG_SECRET, CLIENT_SECRET)  # a stale cached value, the fresh one on force
    client = make_client(inv, secret=secret)
    before = inv.token_request_count()

    new = client.refresh(tokens.refresh_token)

    assert secret.calls == [False, True]
    assert inv.token_request_count() == before + 2
    assert_pair_valid(inv, new)
    assert_pair_dead(inv, tokens)


def test_no_client_secret_sends_nothing(inv: LocalInvoiced) -> None:
    client = InvoicedClient(base_url=inv.base_url, api_url=inv.api_url, client_id=CLIENT_ID)
    before = inv.token_request_count()
    with pytest.raises(ClientAuthError):
        client.refresh("def50200" + "ef" * 60)
    assert inv.token_request_count() == before


# ================================================================== other refusals
@pytest.mark.parametrize("style", STYLES)
def test_unsupported_grant_type_is_a_rejected_request(client: InvoicedClient, inv: LocalInvoiced,
                                                      style: str) -> None:
    """No public method sends another grant type; the private sender is used on purpose."""
    inv.faults.set(error_style=style)
    with pytest.raises(RequestRejectedError):
        client._token_request({"grant_type": "password"})


# ================================================================== faults on the token endpoint
PRE_GRANT_FAULTS = ("server_error", "rate_limit", "html")


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("fault", PRE_GRANT_FAULTS)
def test_pre_grant_fault_on_refresh_is_transient_and_the_token_survives(
        client: InvoicedClient, inv: LocalInvoiced, fault: str, style: str) -> None:
    tokens = connect(client, inv)
    inv.faults.set(error_style=style, **{f"{fault}_next": 1})
    before = inv.token_request_count()

    with pytest.raises(TransientError) as caught:
        client.refresh(tokens.refresh_token)

    assert type(caught.value) is TransientError  # not UnknownOutcomeError: nothing was processed
    assert caught.value.retryable
    assert inv.token_request_count() == before + 1  # no automatic retry
    assert inv.token_requests[-1].fault == fault
    assert inv.faults.snapshot()[f"{fault}_next"] == 0
    assert_pair_valid(inv, tokens)
    # ...so trying again later works, with the same token.
    new = client.refresh(tokens.refresh_token)
    assert_pair_valid(inv, new)


@pytest.mark.parametrize("fault", PRE_GRANT_FAULTS)
def test_pre_grant_fault_on_code_exchange_is_transient_and_the_code_survives(
        client: InvoicedClient, inv: LocalInvoiced, fault: str) -> None:
    code, verifier = authorize(client, inv)
    inv.faults.set(**{f"{fault}_next": 1})
    before = inv.token_request_count()
    with pytest.raises(TransientError) as caught:
        client.exchange_code(code=code, redirect_uri=REDIRECT_URI, code_verifier=verifier)
    assert type(caught.value) is TransientError
    assert inv.token_request_count() == before + 1
    tokens = client.exchange_code(code=code, redirect_uri=REDIRECT_URI, code_verifier=verifier)
    assert_pair_valid(inv, tokens)


def test_timeout_is_an_unknown_outcome(inv: LocalInvoiced) -> None:
    client = make_client(inv, timeout=FAST_TIMEOUT)
    tokens = connect(client, inv)
    inv.faults.set(timeout_next=1, timeout_seconds=FAST_TIMEOUT + 0.5)
    before = inv.token_request_count()

    started = time.monotonic()
    with pytest.raises(UnknownOutcomeError) as caught:
        client.refresh(tokens.refresh_token)
    elapsed = time.monotonic() - started

    assert caught.value.retryable
    assert FAST_TIMEOUT * 0.9 <= elapsed < FAST_TIMEOUT + 0.5  # gave up on its own timeout
    assert inv.token_request_count() == before + 1
    assert inv.token_requests[-1].fault == "timeout"


@pytest.mark.parametrize("style", STYLES)
def test_commit_then_drop_is_an_unknown_outcome_and_the_old_token_is_gone(
        client: InvoicedClient, inv: LocalInvoiced, style: str) -> None:
    tokens = connect(client, inv)
    inv.faults.set(error_style=style, commit_then_drop_next=1)
    before = inv.token_request_count()

    with pytest.raises(UnknownOutcomeError):
        client.refresh(tokens.refresh_token)

    assert inv.token_request_count() == before + 1
    record = inv.token_requests[-1]
    assert (record.fault, record.status) == ("commit_then_drop", 200)
    # The hazard: the server rotated, the client never saw the new pair.
    assert_pair_dead(inv, tokens)
    with pytest.raises(InvalidGrantError):
        client.refresh(tokens.refresh_token)


def test_truncated_answer_is_an_unknown_outcome_and_the_old_token_is_gone(
        client: InvoicedClient, inv: LocalInvoiced) -> None:
    tokens = connect(client, inv)
    inv.faults.set(truncate_next=1)
    before = inv.token_request_count()

    with pytest.raises(UnknownOutcomeError) as caught:
        client.refresh(tokens.refresh_token)

    assert caught.value.reason == "truncated"
    assert caught.value.status == 200
    assert inv.token_request_count() == before + 1
    record = inv.token_requests[-1]
    assert (record.fault, record.status) == ("truncate", 200)
    assert_pair_dead(inv, tokens)


@pytest.mark.parametrize("fault", ("commit_then_drop", "truncate"))
def test_lost_answer_on_code_exchange_is_an_unknown_outcome_and_the_code_is_spent(
        client: InvoicedClient, inv: LocalInvoiced, fault: str) -> None:
    code, verifier = authorize(client, inv)
    inv.faults.set(**{f"{fault}_next": 1})
    before = inv.token_request_count()
    with pytest.raises(UnknownOutcomeError):
        client.exchange_code(code=code, redirect_uri=REDIRECT_URI, code_verifier=verifier)
    assert inv.token_request_count() == before + 1
    with pytest.raises(InvalidGrantError):
        client.exchange_code(code=code, redirect_uri=REDIRECT_URI, code_verifier=verifier)


# ================================================================== unreachable Invoiced
def test_connection_refused_is_transient_not_unknown(inv: LocalInvoiced) -> None:
    sock, port = closed_port()
    try:
        dead = f"http://127.0.0.1:{port}"
        client = make_client(inv, base_url=dead, api_url=dead)
        before = inv.token_request_count()

        with pytest.raises(TransientError) as refresh:
            client.refresh("def50200" + "01" * 60)
        with pytest.raises(TransientError) as exchange:
            client.exchange_code(code="def50200" + "02" * 40, redirect_uri=REDIRECT_URI,
                                 code_verifier=pkce.new_verifier())
        with pytest.raises(TransientError) as api:
            client.current_company("a.b.c")
        with pytest.raises(TransientError) as revoke:
            client.revoke("a.b.c")
    finally:
        sock.close()

    for caught in (refresh, exchange, api, revoke):
        assert not isinstance(caught.value, UnknownOutcomeError), caught.value.reason
    assert refresh.value.reason == exchange.value.reason == "connect_failed"
    assert inv.token_request_count() == before


# ================================================================== revoke
def test_revoke_kills_the_access_token_and_its_refresh_token(client: InvoicedClient, inv: LocalInvoiced) -> None:
    tokens = connect(client, inv)
    other = connect(client, inv)

    assert client.revoke(tokens.access_token) is None

    assert_pair_dead(inv, tokens)
    assert_pair_valid(inv, other)  # only that grant
    with pytest.raises(InvalidGrantError):
        client.refresh(tokens.refresh_token)
    with pytest.raises(ApiError) as caught:
        client.current_company(tokens.access_token)
    assert caught.value.status == 401
    # Revoking again (an unknown token) is still a success.
    client.revoke(tokens.access_token)


# ================================================================== REST API
@pytest.mark.parametrize(("company_id", "name"), [(ACME, "Acme Corporation"), (GLOBEX, "Globex Ltd")])
def test_current_company_names_the_connected_company(client: InvoicedClient, inv: LocalInvoiced,
                                                     company_id: int, name: str) -> None:
    tokens = connect(client, inv, company_id=company_id)
    company = client.current_company(tokens.access_token)
    assert company.name == name
    assert company.id == str(company_id)


def test_current_company_with_a_revoked_token_is_an_api_error(client: InvoicedClient, inv: LocalInvoiced) -> None:
    tokens = connect(client, inv)
    client.revoke(tokens.access_token)
    with pytest.raises(ApiError) as caught:
        client.current_company(tokens.access_token)
    assert caught.value.status == 401
    assert not isinstance(caught.value, TransientError)


def test_current_company_server_error_is_transient(client: InvoicedClient, inv: LocalInvoiced) -> None:
    tokens = connect(client, inv)
    inv.faults.set(api_server_error_next=1)
    with pytest.raises(TransientError) as caught:
        client.current_company(tokens.access_token)
    assert caught.value.status == 500
    assert inv.faults.snapshot()["api_server_error_next"] == 0
    # Transient indeed: the same token works on the next call.
    assert client.current_company(tokens.access_token).name == "Acme Corporation"


def test_errors_never_carry_tokens(client: InvoicedClient, inv: LocalInvoiced) -> None:
    tokens = connect(client, inv)
    client.revoke(tokens.access_token)
    failures: list[InvoicedError] = []
    for call in (lambda: client.refresh(tokens.refresh_token),
                 lambda: client.current_company(tokens.access_token)):
        with pytest.raises(InvoicedError) as caught:
            call()
        failures.append(caught.value)
    for error in failures:
        text = f"{error!r} {error} {error.reason}"
        assert tokens.refresh_token not in text
        assert tokens.access_token not in text
