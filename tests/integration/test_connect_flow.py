"""The connect flow end to end, over HTTP, through moto's server and the
local Invoiced: what succeeds, and every way it must refuse safely."""

from __future__ import annotations

import contextlib
import hashlib
import re
import threading
import time
from datetime import timedelta
from urllib.parse import parse_qs, quote, quote_plus, urlencode, urlsplit

import boto3
import pytest
import requests

from invoiced_connect.connect import messages
from invoiced_connect.connect.links import LinkClaims, sign_link_token
from invoiced_connect.connect.pkce import fingerprint, new_verifier, random_token
from invoiced_connect.core.models import ConnectionStatus
from invoiced_connect.storage.crypto import TokenCipher
from invoiced_connect.storage.store import FlowState, StateRejected, TokenStore
from local.stack import LOCAL_APP_NAME
from tests.support import CLIENT_SECRET_CANARY, RETURN_BASE, b64url, security_header_problems
from tests.support.browser import COOKIE_RE, RESULT_COOKIE_RE, callback, start_flow

LINK_USED_MESSAGE = messages.link_used(LOCAL_APP_NAME).text

# ------------------------------------------------------------------ helpers
def table_items(stack, prefix: str) -> list[dict]:
    db = boto3.client("dynamodb")
    items = db.scan(TableName=stack.table_name)["Items"]
    return [item for item in items if item["pk"]["S"].startswith(prefix)]


def stored(stack, connection_id: str):
    return TokenStore(stack.table_name).get_connection(connection_id)


def signing_key(stack) -> str:
    from invoiced_connect import runtime

    return runtime.current().secrets.get_field(stack.env["LINK_SIGNING_SECRET_ARN"], "current")


def connect_url_for(stack, token: str) -> str:
    return f"{stack.connect_url}?{urlencode({'link': token})}"


def plant_state(stack, *, connection_id="acme-42", expires_in=600, issuer=None, return_to=None):
    """Write a flow state directly, as /connect would, and return (state, cookie)."""
    state, binding = random_token(), random_token()
    TokenStore(stack.table_name).put_state(
        FlowState(
            state_hash=fingerprint(state),
            connection_id=connection_id,
            code_verifier=new_verifier(),
            binding_hash=fingerprint(binding),
            issuer=issuer or stack.invoiced.base_url,
            redirect_uri=stack.callback_url,
            scope="read_write",
            return_to=return_to,
            expires_at=int(time.time()) + expires_in,
            link_hash=fingerprint(random_token()),
            link_expires_at=int(time.time()) + 3600,
        )
    )
    return state, binding


def assert_safe_page(response: requests.Response, status: int) -> None:
    assert response.status_code == status, response.text
    assert security_header_problems(response.headers) == []
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]


def reference_of(response: requests.Response) -> str:
    marker = "Reference: <code>"
    assert marker in response.text
    return response.text.split(marker, 1)[1].split("<", 1)[0]


# ------------------------------------------------------------------ the happy path
def test_full_flow_stores_encrypted_tokens_and_shows_the_company(stack, invoiced):
    flow = start_flow(stack, "acme-full")
    query = parse_qs(urlsplit(flow.authorize_url).query)
    assert flow.authorize_url.startswith(f"{invoiced.base_url}/oauth/authorize?")
    assert query["response_type"] == ["code"]
    assert query["client_id"] == [stack.client_id]
    assert query["redirect_uri"] == [stack.callback_url]
    assert query["scope"] == ["read_write"]
    assert query["code_challenge_method"] == ["S256"]
    assert len(query["state"][0]) >= 43
    for attribute in ("Secure", "HttpOnly", "SameSite=Lax", "Path=/"):
        assert attribute in flow.set_cookie
    assert "Domain" not in flow.set_cookie
    assert len(table_items(stack, f"state#{fingerprint(flow.state)}")) == 1

    before = invoiced.token_request_count("authorization_code")
    response = callback(invoiced.consent(flow.authorize_url), flow.cookie)

    assert_safe_page(response, 200)
    assert "Connected to Acme Corporation" in response.text
    assert "__Host-invoiced-connect-result=; Max-Age=0" in response.headers["Set-Cookie"]
    assert invoiced.token_request_count("authorization_code") == before + 1
    assert table_items(stack, f"state#{fingerprint(flow.state)}") == []

    connection, ciphertext = stored(stack, "acme-full")
    assert connection.status is ConnectionStatus.ACTIVE
    assert connection.tenant_id == "167"
    assert connection.company_name == "Acme Corporation"
    assert connection.issuer == invoiced.base_url
    assert connection.api_url == invoiced.api_url  # readers send its token to this API, whatever they configure
    assert connection.version == 1
    assert connection.expires_at > time.time() + 3000
    access, refresh = TokenCipher(stack.kms_key_arn).decrypt("acme-full", ciphertext)
    assert invoiced.is_access_token_valid(access) and invoiced.is_refresh_token_valid(refresh)
    assert ciphertext.split and ciphertext.pair is None  # one ciphertext per token
    for blob in (ciphertext.access, ciphertext.refresh):
        assert refresh.encode() not in blob and access.encode() not in blob
    assert flow.state not in response.text


def test_the_pkce_verifier_stays_server_side_and_the_challenge_is_its_s256(stack, invoiced):
    """The authorize URL carries S256(verifier); the verifier itself lives
    only in the state row and goes to Invoiced's token endpoint, never
    through the browser: no URL, header, cookie or page body shows it."""
    browser = requests.Session()
    seen: list[requests.Response] = []  # every response the browser gets, and its request
    browser.hooks["response"].append(lambda response, *args, **kwargs: seen.append(response))

    started = browser.get(stack.make_link("acme-pkce"), allow_redirects=False, timeout=10)
    assert started.status_code == 302
    authorize_url = started.headers["Location"]
    query = parse_qs(urlsplit(authorize_url).query)
    state, cookie = query["state"][0], COOKIE_RE.search(started.headers["Set-Cookie"]).group(1)
    (row,) = table_items(stack, f"state#{fingerprint(state)}")
    verifier = row["code_verifier"]["S"]  # stored as is, not encrypted

    assert 43 <= len(verifier) <= 128 and re.fullmatch(r"[A-Za-z0-9._~-]+", verifier)  # RFC 7636 s4.1
    assert query["code_challenge_method"] == ["S256"]
    assert query["code_challenge"] == [b64url(hashlib.sha256(verifier.encode("ascii")).digest())]
    assert verifier != state, "the verifier is the state: it travels in the authorize URL"
    assert verifier != cookie, "the verifier is the browser's cookie"

    location = invoiced.consent(authorize_url, session=browser)
    finished = browser.get(location, headers={"Cookie": f"__Host-invoiced-connect={cookie}"},
                           allow_redirects=False, timeout=30)
    assert finished.status_code == 303
    result = RESULT_COOKIE_RE.search(finished.headers["Set-Cookie"]).group(1)
    page = browser.get(finished.headers["Location"], headers={"Cookie": f"__Host-invoiced-connect-result={result}"},
                       allow_redirects=False, timeout=30)
    assert "Connected to Acme Corporation" in page.text  # Invoiced accepted this verifier for that challenge

    assert len(seen) >= 5  # /connect, the consent page and its answer, /callback, the outcome page
    spellings = {verifier, quote(verifier, safe=""), quote_plus(verifier)}
    for response in seen:
        shown = [response.url, response.request.url, response.text,
                 *response.headers.values(), *response.request.headers.values()]
        leaks = [text for text in shown for spelling in spellings if spelling in text]
        assert leaks == [], f"the verifier reached the browser in {response.request.method} {response.url}"
    assert state not in repr(row) and cookie not in repr(row)  # the row holds only their hashes


def test_ciphertext_copied_to_another_connection_does_not_decrypt(stack, invoiced):
    from invoiced_connect.storage.crypto import TokenDecryptionError

    flow = start_flow(stack, "acme-copy")
    callback(invoiced.consent(flow.authorize_url), flow.cookie)
    _, ciphertext = stored(stack, "acme-copy")
    with pytest.raises(TokenDecryptionError):
        TokenCipher(stack.kms_key_arn).decrypt("someone-else", ciphertext)


def _events_of(stack, connection_id: str) -> list[dict]:
    return [e for e in stack.published_events() if e["detail"].get("connection_id") == connection_id]


def test_reconnect_to_the_same_company_replaces_tokens_and_grows_the_version(stack, invoiced):
    first = start_flow(stack, "acme-again")
    callback(invoiced.consent(first.authorize_url, company_id=167), first.cookie)
    original, old_blob = stored(stack, "acme-again")
    live = invoiced.live_grant_count(167)  # other tests' connections to 167 are live too

    second = start_flow(stack, "acme-again")
    response = callback(invoiced.consent(second.authorize_url, company_id=167), second.cookie)
    assert response.status_code == 200
    connection, new_blob = stored(stack, "acme-again")
    assert connection.version == original.version + 1
    assert connection.created_at == original.created_at
    assert new_blob != old_blob
    assert (connection.tenant_id, connection.company_name) == ("167", original.company_name)
    assert invoiced.live_grant_count(167) == live  # one grant more, and the replaced one revoked


def test_reconnect_to_another_company_is_refused_and_changes_nothing(stack, invoiced):
    first = start_flow(stack, "acme-other")
    callback(invoiced.consent(first.authorize_url, company_id=167), first.cookie)
    before = stored(stack, "acme-other")
    live_before = invoiced.live_grant_count(168)

    second = start_flow(stack, "acme-other")
    response = callback(invoiced.consent(second.authorize_url, company_id=168), second.cookie)
    assert response.status_code == 409
    expected = messages.company_mismatch(before[0].company_name, "Globex Ltd", LOCAL_APP_NAME)
    assert expected.title in response.text
    assert "Globex Ltd" in response.text and before[0].company_name in response.text
    assert stored(stack, "acme-other") == before
    assert invoiced.live_grant_count(168) == live_before  # the refused grant was revoked at Invoiced
    refused = _events_of(stack, "acme-other")[-1]
    assert refused["detail-type"] == "Connection Reconnect Refused"
    assert (refused["detail"]["tenant_id"], refused["detail"]["chosen_tenant_id"],
            refused["detail"]["chosen_company_name"], refused["detail"]["reason"]) == (
        "167", "168", "Globex Ltd", "company_mismatch")

    # The link was not spent: opened again, with the right company, it reconnects.
    again = start_flow(stack, "acme-other")
    assert callback(invoiced.consent(again.authorize_url, company_id=167), again.cookie).status_code == 200
    assert stored(stack, "acme-other")[0].version == before[0].version + 1


def test_reconnect_to_another_company_under_an_allowing_link(stack, invoiced):
    first = start_flow(stack, "acme-move")
    callback(invoiced.consent(first.authorize_url, company_id=167), first.cookie)
    original, _ = stored(stack, "acme-move")

    second = start_flow(stack, "acme-move", allow_company_change=True)
    response = callback(invoiced.consent(second.authorize_url, company_id=168), second.cookie)
    assert response.status_code == 200
    connection, _ = stored(stack, "acme-move")
    assert (connection.tenant_id, connection.company_name, connection.version) == (
        "168", "Globex Ltd", original.version + 1)
    reconnected = _events_of(stack, "acme-move")[-1]
    assert reconnected["detail-type"] == "Connection Reconnected"
    assert (reconnected["detail"]["tenant_id"], reconnected["detail"]["previous_tenant_id"],
            reconnected["detail"]["previous_company_name"]) == ("168", "167", original.company_name)


def test_return_to_gets_a_303_with_connection_id_and_status(stack, invoiced):
    flow = start_flow(stack, "acme-return", return_to=f"{RETURN_BASE}/done?tab=x")
    response = callback(invoiced.consent(flow.authorize_url), flow.cookie)
    assert response.status_code == 303
    assert response.headers["Location"] == f"{RETURN_BASE}/done?tab=x&connection_id=acme-return&status=connected"


# ------------------------------------------------------------------ denial
def test_invoiced_style_deny_shows_a_page_and_exchanges_nothing(stack, invoiced):
    flow = start_flow(stack, "acme-deny")
    before = invoiced.token_request_count()
    location = invoiced.consent(flow.authorize_url, approve=False)
    assert "error=" not in location and "error_description=" in location
    response = callback(location, flow.cookie)
    assert_safe_page(response, 200)
    assert "Not connected" in response.text
    assert "You declined access" in response.text
    assert invoiced.token_request_count() == before
    assert stored(stack, "acme-deny") is None
    assert table_items(stack, f"state#{fingerprint(flow.state)}") == []


def test_stock_deny_with_return_to_redirects_with_status_denied(stack, invoiced):
    invoiced.faults.set(error_style="league")
    flow = start_flow(stack, "acme-deny2", return_to=f"{RETURN_BASE}/done")
    location = invoiced.consent(flow.authorize_url, approve=False)
    assert "error=access_denied" in location
    response = callback(location, flow.cookie)
    assert response.status_code == 303
    assert response.headers["Location"] == f"{RETURN_BASE}/done?connection_id=acme-deny2&status=denied"


def test_provider_error_description_is_escaped(stack, invoiced):
    state, cookie = plant_state(stack)
    hostile = '<script>alert("x")</script>'
    query = urlencode({"state": state, "error": "invalid_request", "error_description": hostile})
    response = callback(f"{stack.callback_url}?{query}", cookie)
    assert_safe_page(response, 400)
    assert "<script>" not in response.text
    assert "&lt;script&gt;" in response.text


# ------------------------------------------------------------------ state and cookie
def test_missing_cookie_is_refused_and_the_state_survives(stack, invoiced):
    flow = start_flow(stack, "acme-nocookie")
    location = invoiced.consent(flow.authorize_url)
    before = invoiced.token_request_count()
    response = callback(location, None)
    assert_safe_page(response, 400)
    assert invoiced.token_request_count() == before
    assert len(table_items(stack, f"state#{fingerprint(flow.state)}")) == 1


def test_foreign_browser_is_refused_and_the_owner_can_still_finish(stack, invoiced):
    victim = start_flow(stack, "acme-victim")
    attacker = start_flow(stack, "acme-attacker")
    location = invoiced.consent(victim.authorize_url)
    before = invoiced.token_request_count()

    response = callback(location, attacker.cookie)
    assert_safe_page(response, 400)
    assert invoiced.token_request_count() == before
    assert stored(stack, "acme-victim") is None

    assert callback(location, victim.cookie).status_code == 200
    assert stored(stack, "acme-victim") is not None


def test_replayed_callback_is_refused_without_a_second_exchange(stack, invoiced):
    flow = start_flow(stack, "acme-replay")
    location = invoiced.consent(flow.authorize_url)
    assert callback(location, flow.cookie).status_code == 200
    version = stored(stack, "acme-replay")[0].version
    before = invoiced.token_request_count()

    response = callback(location, flow.cookie)
    assert_safe_page(response, 400)
    assert invoiced.token_request_count() == before
    assert stored(stack, "acme-replay")[0].version == version


def test_expired_state_is_refused(stack, invoiced):
    state, cookie = plant_state(stack, connection_id="acme-expired", expires_in=-1)
    before = invoiced.token_request_count()
    response = callback(f"{stack.callback_url}?{urlencode({'state': state, 'code': 'def50200abc'})}", cookie)
    assert_safe_page(response, 400)
    assert invoiced.token_request_count() == before
    assert stored(stack, "acme-expired") is None


def test_unknown_or_tampered_state_is_refused(stack, invoiced):
    flow = start_flow(stack, "acme-tamper")
    location = invoiced.consent(flow.authorize_url)
    swapped = "A" if flow.state[-1] != "A" else "B"
    tampered = location.replace(f"state={flow.state}", f"state={flow.state[:-1]}{swapped}")
    assert tampered != location
    before = invoiced.token_request_count()
    assert callback(tampered, flow.cookie).status_code == 400
    assert callback(f"{stack.callback_url}?code=def50200x", flow.cookie).status_code == 400
    assert invoiced.token_request_count() == before


def test_state_from_the_other_issuer_is_refused(stack, invoiced):
    state, cookie = plant_state(stack, connection_id="acme-issuer", issuer="https://invoiced.com")
    before = invoiced.token_request_count()
    response = callback(f"{stack.callback_url}?{urlencode({'state': state, 'code': 'def50200abc'})}", cookie)
    assert_safe_page(response, 400)
    assert "another Invoiced environment" in response.text
    assert invoiced.token_request_count() == before


def test_double_submitted_callback_exchanges_exactly_once(stack, invoiced):
    flow = start_flow(stack, "acme-double")
    location = invoiced.consent(flow.authorize_url)
    invoiced.faults.set(latency_ms=200)  # widen the window in which both are in flight
    before = invoiced.token_request_count()
    barrier = threading.Barrier(4)
    results: list[requests.Response] = []

    def submit() -> None:
        barrier.wait()
        results.append(callback(location, flow.cookie))

    threads = [threading.Thread(target=submit) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(response.status_code for response in results) == [200, 400, 400, 400]
    assert invoiced.token_request_count() == before + 1
    assert stored(stack, "acme-double")[0].version == 1
    # The losers lost at the state, in its one conditional delete, not later
    # (say, at the link claim): each is the page of a state already used.
    for loser in (response for response in results if response.status_code != 200):
        assert_replayed_state_page(loser)


def assert_replayed_state_page(response: requests.Response) -> None:
    """The page of a callback whose state was already consumed (``StateRejected``), nothing else."""
    assert_safe_page(response, 400)
    heading = re.search(r"<h1>(.*?)</h1><p>(.*?)</p>", response.text)
    assert heading is not None, response.text
    assert heading.group(1) == "Sign-in expired", f"refused, but not as a replayed state: {heading.groups()}"
    assert "was already used" in heading.group(2) and LINK_USED_MESSAGE not in response.text


class Lockstep:
    """A DynamoDB client whose callers send each request together: every
    caller waits for all the others before each call, so a read-then-write
    done as two requests has all its reads answered before any write."""

    def __init__(self, client, parties: int) -> None:
        self._client = client
        self._barrier = threading.Barrier(parties, timeout=10)

    def __getattr__(self, name: str):
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        def call(*args, **kwargs):
            with contextlib.suppress(threading.BrokenBarrierError):  # callers made different numbers of calls
                self._barrier.wait()
            return attribute(*args, **kwargs)

        return call


def test_consuming_one_state_from_many_threads_has_exactly_one_winner(stack):
    """``consume_state`` itself is the single use: of many consumers of one
    state at once, one gets the flow and every other one ``StateRejected``."""
    state, binding = plant_state(stack, connection_id="acme-race")
    parties = 8
    db = Lockstep(boto3.client("dynamodb"), parties)
    racing = TokenStore(stack.table_name, client_factory=lambda: db)
    won: list[FlowState] = []
    refused: list[StateRejected] = []
    failed: list[BaseException] = []

    def consume() -> None:
        try:
            won.append(racing.consume_state(fingerprint(state), fingerprint(binding), int(time.time())))
        except StateRejected as exc:
            refused.append(exc)
        except BaseException as exc:  # noqa: BLE001 - reported below
            failed.append(exc)

    threads = [threading.Thread(target=consume) for _ in range(parties)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failed == []
    assert len(won) == 1 and len(refused) == parties - 1, (len(won), len(refused))
    assert won[0].connection_id == "acme-race" and won[0].binding_hash == fingerprint(binding)
    assert table_items(stack, f"state#{fingerprint(state)}") == []
    with pytest.raises(StateRejected):
        TokenStore(stack.table_name).consume_state(fingerprint(state), fingerprint(binding), int(time.time()))


# ------------------------------------------------------------------ links
def test_unsigned_tampered_expired_and_foreign_key_links_get_403_and_write_nothing(stack, invoiced):
    key = signing_key(stack)
    good = stack.make_link("acme-link").split("link=", 1)[1]
    header, body, signature = good.split(".")
    bad_tokens = [
        f"{header}.{body}",
        f"{header}.{body[:-1]}{'A' if body[-1] != 'A' else 'B'}.{signature}",
        sign_link_token(LinkClaims("acme-link", None, int(time.time()) - 1), key),
        sign_link_token(LinkClaims("acme-link", None, int(time.time()) + 600), "z" * 64),
        "garbage",
    ]
    states_before = len(table_items(stack, "state#"))
    for token in bad_tokens:
        response = requests.get(connect_url_for(stack, token), allow_redirects=False, timeout=10)
        assert_safe_page(response, 403)
        assert "Set-Cookie" not in response.headers
    response = requests.get(stack.connect_url, allow_redirects=False, timeout=10)
    assert_safe_page(response, 403)
    assert len(table_items(stack, "state#")) == states_before


def test_a_link_signed_with_a_rotated_key_works_at_once_and_the_old_key_keeps_working(stack, invoiced, monkeypatch):
    """The operator rotates the signing key (old one to "previous") while the
    connect function still caches the old secret: links signed with the new
    key must not be refused for the cache's lifetime."""
    import json

    from invoiced_connect import runtime
    from invoiced_connect.entry import web

    # Earlier tests' foreign-key links may have spent this minute's re-read
    # (at most one a minute per process); start from a clean slate.
    monkeypatch.setattr(web.flow(), "_keys_reread_at", float("-inf"))

    arn = stack.env["LINK_SIGNING_SECRET_ARN"]
    secrets = stack.client("secretsmanager")
    original = secrets.get_secret_value(SecretId=arn)["SecretString"]
    old_key = signing_key(stack)  # also what this process has cached
    new_key = random_token(32)
    secrets.put_secret_value(SecretId=arn, SecretString=json.dumps({"current": new_key, "previous": old_key}))
    try:
        for key in (new_key, old_key):
            token = sign_link_token(LinkClaims("acme-rotated", None, int(time.time()) + 600), key)
            response = requests.get(connect_url_for(stack, token), allow_redirects=False, timeout=10)
            assert response.status_code == 302, response.text
        foreign = sign_link_token(LinkClaims("acme-rotated", None, int(time.time()) + 600), "z" * 64)
        assert_safe_page(requests.get(connect_url_for(stack, foreign), allow_redirects=False, timeout=10), 403)
    finally:
        secrets.put_secret_value(SecretId=arn, SecretString=original)
        runtime.current().secrets.clear()


HOSTILE_RETURNS = [
    "//evil.test",
    "/\\evil.test",
    "https:evil.test",
    "a@evil.test",
    "https://a@evil.test/integrations",
    "%2F%2Fevil.test",
    "javascript:alert(1)",
    f"{RETURN_BASE}/x\r\nSet-Cookie: a=b",
    f"{RETURN_BASE}/x%0d%0aLocation:%20https://evil.test",
    "https://аpp.example.test/integrations",
    "https://app.example.test.evil.test/integrations",
]


@pytest.mark.parametrize("return_to", HOSTILE_RETURNS)
def test_hostile_return_urls_are_refused_when_making_and_when_opening_links(stack, invoiced, return_to):
    with pytest.raises(ValueError):
        stack.make_link("acme-evil", return_to=return_to)
    # A link signed with the real key but carrying a hostile URL (say, made
    # before the allowlist changed) is refused at /connect too.
    token = sign_link_token(LinkClaims("acme-evil", return_to, int(time.time()) + 600), signing_key(stack))
    response = requests.get(connect_url_for(stack, token), allow_redirects=False, timeout=10)
    if "%0d%0a" in return_to:
        # Percent-encoded CR/LF is inert text inside a URL; it is allowed only
        # under the allowlisted prefix and is never decoded into a header.
        assert response.status_code in (302, 403)
        assert "\n" not in response.headers.get("Location", "")
    else:
        assert_safe_page(response, 403)


def test_a_link_completes_one_connection_only(stack, invoiced):
    link = stack.make_link("acme-once")
    first = requests.get(link, allow_redirects=False, timeout=10)
    second = requests.get(link, allow_redirects=False, timeout=10)  # e.g. a forwarded copy, opened meanwhile
    cookie_of = lambda r: r.headers["Set-Cookie"].split("=", 1)[1].split(";", 1)[0]  # noqa: E731

    assert callback(invoiced.consent(first.headers["Location"]), cookie_of(first)).status_code == 200
    before = invoiced.token_request_count()
    late = callback(invoiced.consent(second.headers["Location"], company_id=168), cookie_of(second))
    assert_safe_page(late, 400)
    assert "already been used" in late.text
    assert invoiced.token_request_count() == before  # refused before any exchange
    assert stored(stack, "acme-once")[0].tenant_id == "167"

    again = requests.get(link, allow_redirects=False, timeout=10)
    assert_safe_page(again, 403)
    assert "already been used" in again.text


def test_a_failed_exchange_leaves_the_link_usable(stack, invoiced):
    link = stack.make_link("acme-retry")
    first = requests.get(link, allow_redirects=False, timeout=10)
    invoiced_location = first.headers["Location"]
    cookie = first.headers["Set-Cookie"].split("=", 1)[1].split(";", 1)[0]
    location = invoiced.consent(invoiced_location)
    invoiced.faults.set(server_error_next=1)
    assert callback(location, cookie).status_code == 502

    retry = requests.get(link, allow_redirects=False, timeout=10)
    assert retry.status_code == 302
    cookie = retry.headers["Set-Cookie"].split("=", 1)[1].split(";", 1)[0]
    assert callback(invoiced.consent(retry.headers["Location"]), cookie).status_code == 200


def test_link_create_rejects_bad_connection_ids_and_ttls(stack):
    for bad in ("", "has space", "a/b", "x" * 129, "<script>"):
        with pytest.raises(ValueError):
            stack.make_link(bad)
    with pytest.raises(ValueError):
        stack.make_link("acme-ttl", ttl=timedelta(days=90))


# ------------------------------------------------------------------ provider failures
def test_reused_code_is_refused_and_leaves_the_connection_alone(stack, invoiced):
    flow = start_flow(stack, "acme-code")
    location = invoiced.consent(flow.authorize_url)
    assert callback(location, flow.cookie).status_code == 200
    version = stored(stack, "acme-code")[0].version
    code = parse_qs(urlsplit(location).query)["code"][0]

    state, cookie = plant_state(stack, connection_id="acme-code")
    response = callback(f"{stack.callback_url}?{urlencode({'state': state, 'code': code})}", cookie)
    assert_safe_page(response, 400)
    assert "Start again" in response.text
    assert stored(stack, "acme-code")[0].version == version


@pytest.mark.parametrize("fault", ["server_error_next", "html_next", "rate_limit_next", "timeout_next"])
def test_provider_failure_at_exchange_is_a_502_page_without_retry(stack, invoiced, fault):
    connection_id = f"acme-{fault.replace('_', '-')}"
    flow = start_flow(stack, connection_id)
    location = invoiced.consent(flow.authorize_url)
    invoiced.faults.set(**{fault: 1, "timeout_seconds": 4})
    before = invoiced.token_request_count("authorization_code")
    response = callback(location, flow.cookie)
    assert_safe_page(response, 502)
    assert reference_of(response)
    assert invoiced.token_request_count("authorization_code") == before + 1
    assert stored(stack, connection_id) is None


def test_company_lookup_failure_still_saves_the_connection(stack, invoiced):
    flow = start_flow(stack, "acme-nolabel")
    location = invoiced.consent(flow.authorize_url)
    invoiced.faults.set(api_server_error_next=1)
    response = callback(location, flow.cookie)
    assert response.status_code == 200
    assert "Connected to your Invoiced account" in response.text
    connection, _ = stored(stack, "acme-nolabel")
    assert connection.status is ConnectionStatus.ACTIVE and connection.company_name is None


def test_outcome_page_without_an_outcome_cookie_says_so(stack):
    response = requests.get(stack.callback_url, timeout=10)
    assert_safe_page(response, 400)
    assert "Nothing to show" in response.text


def test_forged_outcome_cookie_is_escaped_or_ignored(stack):
    import base64
    import json

    forged = {"s": 200, "t": "<b>x</b>", "m": "<script>alert(1)</script>", "r": "r", "c": "<i>Evil</i>", "ok": True}
    value = base64.urlsafe_b64encode(json.dumps(forged).encode()).decode().rstrip("=")
    response = requests.get(stack.callback_url, headers={"Cookie": f"__Host-invoiced-connect-result={value}"}, timeout=10)
    assert response.status_code == 200
    assert "<i>" not in response.text and "&lt;i&gt;Evil&lt;/i&gt;" in response.text
    for junk in ("not-base64!", base64.urlsafe_b64encode(b'{"s": 500}').decode(), "e30"):
        response = requests.get(stack.callback_url, headers={"Cookie": f"__Host-invoiced-connect-result={junk}"}, timeout=10)
        assert response.status_code == 400


# ------------------------------------------------------------------ bad input never 5xx
@pytest.mark.parametrize(
    "path",
    [
        "/callback",
        "/callback?state=",
        "/callback?state=a&state=b&code=c",
        "/callback?state=%00%ff&code=%zz",
        "/callback?state=" + "a" * 10000,
        "/callback?error=%3Cb%3E",
        "/connect?link=",
        "/connect?link=v1..",
        "/connect?link=v1.%ff%fe.AAAA",
        "/connect?link=a&link=b",
        "/connect?link=" + "v1." + "A" * 5000 + ".B",
    ],
)
def test_bad_input_never_gets_a_5xx(stack, invoiced, path):
    response = callback(stack.gateway_url + path, "x")
    assert 400 <= response.status_code < 500, (path, response.status_code)
    assert security_header_problems(response.headers) == []


# ------------------------------------------------------------------ log hygiene
def test_no_token_code_state_verifier_cookie_or_secret_reaches_the_logs(stack, invoiced, capfd):
    flow = start_flow(stack, "acme-canary")
    location = invoiced.consent(flow.authorize_url)
    code = parse_qs(urlsplit(location).query)["code"][0]
    assert callback(location, flow.cookie).status_code == 200
    access, refresh = TokenCipher(stack.kms_key_arn).decrypt("acme-canary", stored(stack, "acme-canary")[1])
    # and a few failures, which log more
    callback(location, flow.cookie)
    callback(location, "wrong-cookie")
    invoiced.faults.set(server_error_next=1)
    failing = start_flow(stack, "acme-canary2")
    callback(invoiced.consent(failing.authorize_url), failing.cookie)

    out, err = capfd.readouterr()
    logs = out + err
    assert "connection saved" in logs  # the handlers' logs were captured
    for secret in (access, refresh, code, flow.state, flow.cookie, CLIENT_SECRET_CANARY, failing.state):
        assert secret not in logs
