"""The local Invoiced must behave like invoiced-provider.md says, over real HTTP.

Every test talks to a started instance on loopback with `requests`; the
instance's clock is a fake one so expiry can be tested without waiting.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit

import pytest
import requests
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from local.invoiced import Company, ConsentError, Faults, LocalInvoiced

CLIENT_ID = "Xq7Rk2Lm9Pz4Tn8Wv3Bc6Yd1"
CLIENT_SECRET = "Hs5Jf8Kd2Lq9Zx4Cv7Bn1Mg6Tr3Wp0Ye"
CALLBACK = "https://connect.example.test/callback"
WITH_QUERY = "https://connect.example.test/cb?env=dev"
LOOPBACK = "http://127.0.0.1:8765/callback"
LOOPBACK_V6 = "http://[::1]:8765/callback"
ACME, GLOBEX = 167, 168

INVALID_REQUEST = ("The request is missing a required parameter, includes an invalid parameter value, "
                   "includes a parameter more than once, or is otherwise malformed.")
REFRESH_INVALID = "The refresh token is invalid."
DENIED = "The resource owner or authorization server denied the request."
T = 5  # seconds; every request has a timeout


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.25

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="module")
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="module")
def server(clock: FakeClock) -> Iterator[LocalInvoiced]:
    # One instance for the module (RSA key generation and two servers per test add up);
    # every test makes its own grants, and the clock only moves forward.
    with LocalInvoiced(client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
                       redirect_uris=[CALLBACK, WITH_QUERY, LOOPBACK, LOOPBACK_V6],
                       companies=[Company(ACME, "Acme <Corp>"),
                                  Company(GLOBEX, "Globex", country="GB", currency="gbp")],
                       clock=clock) as instance:
        yield instance


@pytest.fixture
def inv(server: LocalInvoiced) -> Iterator[LocalInvoiced]:
    server.faults.reset()
    server.token_requests.clear()
    yield server
    server.faults.reset()


# -- helpers -------------------------------------------------------------------------


def authorize_url(inv: LocalInvoiced, **params: str | None) -> str:
    query: dict[str, str | None] = {"response_type": "code", "client_id": CLIENT_ID,
                                    "redirect_uri": CALLBACK, "scope": "read_write", "state": "st-123"}
    query.update(params)
    return f"{inv.base_url}/oauth/authorize?{urlencode({k: v for k, v in query.items() if v is not None})}"


def query_of(location: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(location).query))


def get_code(inv: LocalInvoiced, company_id: int | None = None, **params: str | None) -> str:
    return query_of(inv.consent(authorize_url(inv, **params), company_id=company_id))["code"]


def token_post(inv: LocalInvoiced, data: dict[str, str], *, creds: bool = True, **kw: Any) -> requests.Response:
    body = {"client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, **data} if creds else data
    return requests.post(f"{inv.base_url}/oauth/access_token", data=body, timeout=kw.pop("timeout", T), **kw)


def exchange(inv: LocalInvoiced, code: str, redirect_uri: str | None = CALLBACK, **extra: str) -> requests.Response:
    data = {"grant_type": "authorization_code", "code": code, **extra}
    if redirect_uri is not None:
        data["redirect_uri"] = redirect_uri
    return token_post(inv, data)


def refresh(inv: LocalInvoiced, refresh_token: str, **kw: Any) -> requests.Response:
    return token_post(inv, {"grant_type": "refresh_token", "refresh_token": refresh_token}, **kw)


def connect(inv: LocalInvoiced, company_id: int | None = None, **params: str) -> dict[str, Any]:
    response = exchange(inv, get_code(inv, company_id, **params))
    assert response.status_code == 200, response.text
    return response.json()


def api_get(inv: LocalInvoiced, path: str, access_token: str | None) -> requests.Response:
    headers = {"Authorization": f"Bearer {access_token}"} if access_token else {}
    return requests.get(f"{inv.api_url}{path}", headers=headers, timeout=T)


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def verified_claims(inv: LocalInvoiced, jwt: str) -> tuple[dict[str, Any], dict[str, Any]]:
    header, payload, signature = jwt.split(".")
    key = serialization.load_pem_public_key(inv.public_key_pem.encode())
    assert isinstance(key, rsa.RSAPublicKey)
    key.verify(b64url_decode(signature), f"{header}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256())
    return json.loads(b64url_decode(header)), json.loads(b64url_decode(payload))


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


# -- authorize and consent ---------------------------------------------------------------


def test_approve_redirects_to_the_client_with_an_opaque_code_and_the_state(inv: LocalInvoiced) -> None:
    location = inv.consent(authorize_url(inv, state="a b/c+d"))

    assert location.startswith(CALLBACK + "?code=def50200")
    query = parse_qs(urlsplit(location).query)
    assert set(query) == {"code", "state"}
    assert query["state"] == ["a b/c+d"]
    code = query["code"][0]
    assert len(code) > 200 and all(c in "0123456789abcdef" for c in code)


def test_approve_appends_with_ampersand_when_the_redirect_uri_has_a_query(inv: LocalInvoiced) -> None:
    location = inv.consent(authorize_url(inv, redirect_uri=WITH_QUERY))

    assert location.startswith(WITH_QUERY + "&code=def50200")
    assert query_of(location)["env"] == "dev"


def test_approve_without_state_sends_no_state(inv: LocalInvoiced) -> None:
    assert set(query_of(inv.consent(authorize_url(inv, state=None)))) == {"code"}


def test_deny_is_invoiced_shaped_without_an_error_parameter(inv: LocalInvoiced) -> None:
    location = inv.consent(authorize_url(inv), approve=False)

    assert location == (CALLBACK + "?state=st-123&error_description="
                        "The+resource+owner+or+authorization+server+denied+the+request.")


def test_deny_in_league_style_carries_access_denied(inv: LocalInvoiced) -> None:
    inv.faults.error_style = "league"

    query = query_of(inv.consent(authorize_url(inv), approve=False))

    assert query == {"state": "st-123", "error": "access_denied", "error_description": DENIED,
                     "hint": "The user denied the request", "message": DENIED}


@pytest.mark.parametrize("params", [
    {"client_id": "Zz9Zz9Zz9Zz9Zz9Zz9Zz9Zz9"},
    {"client_id": None},
    {"redirect_uri": "https://evil.example.test/callback"},
    {"redirect_uri": CALLBACK + "/"},
    {"redirect_uri": "https://connect.example.test:8443/callback"},
    {"redirect_uri": "http://localhost:8765/callback"},
    {"redirect_uri": "http://127.0.0.1:9999/other"},
    {"redirect_uri": "https://127.0.0.1:8765/callback"},
    {"redirect_uri": "http://[::1/callback"},
    {"redirect_uri": "http://127.0.0.1:99999/callback"},
    {"redirect_uri": None},  # several URIs are registered, so omitting it is ambiguous
    {"scope": "admin"},
    {"scope": "read_write admin"},
    {"scope": None},
    {"response_type": "token"},
    {"code_challenge": "x" * 43, "code_challenge_method": "S512"},
    {"code_challenge": "short", "code_challenge_method": "S256"},
], ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()))
def test_bad_authorize_requests_get_an_error_page_and_no_redirect(inv: LocalInvoiced, params: dict) -> None:
    response = requests.get(authorize_url(inv, **params), allow_redirects=False, timeout=T)

    assert response.status_code == 400
    assert "Location" not in response.headers
    assert response.headers["Content-Type"].startswith("text/html")
    assert "<form" not in response.text
    with pytest.raises(ConsentError):
        inv.consent(authorize_url(inv, **params))


@pytest.mark.parametrize(("registered", "requested"), [
    (LOOPBACK, "http://127.0.0.1:51234/callback"),
    (LOOPBACK, "http://127.0.0.1/callback"),
    (LOOPBACK_V6, "http://[::1]:40000/callback"),
])
def test_loopback_redirect_uris_match_on_any_port(inv: LocalInvoiced, registered: str, requested: str) -> None:
    location = inv.consent(authorize_url(inv, redirect_uri=requested))

    assert location.startswith(requested + "?code=")
    # The token request must repeat the exact URI used at authorize, port included.
    assert exchange(inv, query_of(location)["code"], redirect_uri=requested).status_code == 200


def test_reflected_values_are_escaped_on_error_pages(inv: LocalInvoiced) -> None:
    hostile = '"><script>alert(1)</script>'

    for params in ({"client_id": hostile}, {"redirect_uri": "https://x.test/" + hostile}):
        page = requests.get(authorize_url(inv, **params), timeout=T).text
        assert "<script>" not in page
        assert "&lt;script&gt;" in page


def test_consent_page_is_a_form_with_a_company_picker_and_two_buttons(inv: LocalInvoiced) -> None:
    page = requests.get(authorize_url(inv), timeout=T)

    assert page.status_code == 200
    assert page.headers["Cache-Control"] == "no-store"
    assert page.headers["X-Frame-Options"] == "DENY"
    html = page.text
    assert '<form method="post" action="/oauth/authorize">' in html
    assert f'<option value="{ACME}">Acme &lt;Corp&gt;</option>' in html  # escaped company name
    assert f'<option value="{GLOBEX}">Globex</option>' in html
    assert '<button type="submit" name="decision" value="approve">Approve</button>' in html
    assert '<button type="submit" name="decision" value="deny">Deny</button>' in html
    assert "st-123" not in html  # the original query stays server side


def test_consent_page_names_the_application_by_its_registered_name(inv: LocalInvoiced) -> None:
    html = requests.get(authorize_url(inv), timeout=T).text

    assert "<title>Approve Your application - Invoiced (local)</title>" in html
    assert "<strong>Your application</strong> wants access to your Invoiced account." in html
    assert CLIENT_ID not in html  # Invoiced shows the name, never the client id


def test_consent_page_escapes_the_application_name() -> None:
    hostile = 'Ledger "Sync" <script>alert(1)</script> & Co'
    with LocalInvoiced(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, redirect_uris=[CALLBACK],
                       client_name=hostile) as named:
        html = requests.get(authorize_url(named), timeout=T).text

    escaped = "Ledger &quot;Sync&quot; &lt;script&gt;alert(1)&lt;/script&gt; &amp; Co"
    assert "<script>" not in html
    assert f"<title>Approve {escaped} - Invoiced (local)</title>" in html
    assert f'<h1 id="client-name">{escaped}</h1>' in html
    assert f"<strong>{escaped}</strong> wants access to your Invoiced account." in html


def test_consent_page_fits_a_320_pixel_screen(inv: LocalInvoiced) -> None:
    html = requests.get(authorize_url(inv), timeout=T).text
    style = html.split("<style>", 1)[1].split("</style>", 1)[0]

    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html
    # Nothing wider than the screen: no fixed widths or minimum widths, side padding, and
    # long unbroken text (the redirect URI, a company or application name) wraps.
    assert not re.findall(r"(?<![-\w])(width|min-width)\s*:", style)
    assert "max-width:100%" in style.split("select{", 1)[1].split("}", 1)[0]
    body = style.split("body{", 1)[1].split("}", 1)[0]
    assert "padding:0 1rem" in body and "overflow-wrap:anywhere" in body
    assert "word-break:break-all" in style.split("code{", 1)[1].split("}", 1)[0]


def test_picked_company_becomes_the_token_subject(inv: LocalInvoiced) -> None:
    tokens = connect(inv, company_id=GLOBEX)

    assert verified_claims(inv, tokens["access_token"])[1]["sub"] == f"tenant:{GLOBEX}"
    assert api_get(inv, "/companies/current", tokens["access_token"]).json()["id"] == GLOBEX


def test_a_company_that_is_not_the_users_is_refused(inv: LocalInvoiced) -> None:
    with pytest.raises(ConsentError, match="400"):
        inv.consent(authorize_url(inv), company_id=999)


def test_a_consent_form_can_be_submitted_only_once(inv: LocalInvoiced) -> None:
    page = requests.get(authorize_url(inv), timeout=T).text
    request_id = page.split('name="request_id" value="')[1].split('"')[0]
    form = {"request_id": request_id, "company": str(ACME), "decision": "approve"}

    first = requests.post(f"{inv.base_url}/oauth/authorize", data=form, allow_redirects=False, timeout=T)
    second = requests.post(f"{inv.base_url}/oauth/authorize", data=form, allow_redirects=False, timeout=T)

    assert first.status_code == 302
    assert second.status_code == 400 and "Location" not in second.headers


def test_openid_only_grant_names_the_user_and_cannot_use_the_api(inv: LocalInvoiced) -> None:
    page = requests.get(authorize_url(inv, scope="openid"), timeout=T).text
    assert "<select" not in page

    tokens = connect(inv, scope="openid")

    assert verified_claims(inv, tokens["access_token"])[1]["sub"] == "user:1001"
    assert api_get(inv, "/companies/current", tokens["access_token"]).status_code == 401


# -- code exchange -------------------------------------------------------------------------


def test_token_response_has_invoiceds_exact_shape(inv: LocalInvoiced) -> None:
    response = exchange(inv, get_code(inv))

    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert list(body) == ["token_type", "expires_in", "access_token", "refresh_token"]  # no scope
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600
    assert body["refresh_token"].startswith("def50200") and len(body["refresh_token"]) > 500


def test_access_token_is_an_rs256_jwt_with_invoiceds_claims(inv: LocalInvoiced, clock: FakeClock) -> None:
    tokens = connect(inv, scope="read read_write")

    header, claims = verified_claims(inv, tokens["access_token"])

    assert header == {"typ": "JWT", "alg": "RS256"}
    assert set(claims) == {"aud", "jti", "iat", "nbf", "exp", "sub", "scopes"}
    assert claims["aud"] == CLIENT_ID
    assert claims["sub"] == f"tenant:{ACME}"
    assert claims["scopes"] == ["read", "read_write"]
    assert claims["iat"] == claims["nbf"] == pytest.approx(clock.now)
    assert claims["exp"] == int(clock.now + 3600)
    assert len(claims["jti"]) == 80
    assert inv.jwks()["keys"][0]["alg"] == "RS256"


def test_a_forged_access_token_is_refused(inv: LocalInvoiced) -> None:
    header, payload, signature = connect(inv)["access_token"].split(".")
    claims = json.loads(b64url_decode(payload))
    claims["sub"] = f"tenant:{GLOBEX}"
    forged_payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    forged = f"{header}.{forged_payload}.{signature}"

    with pytest.raises(InvalidSignature):
        verified_claims(inv, forged)
    assert api_get(inv, "/companies/current", forged).status_code == 401
    assert not inv.is_access_token_valid(forged)


def test_a_code_works_once(inv: LocalInvoiced) -> None:
    code = get_code(inv)

    assert exchange(inv, code).status_code == 200
    reuse = exchange(inv, code)

    assert reuse.status_code == 400
    assert reuse.json() == {"type": "invalid_request", "message": INVALID_REQUEST}


def test_a_code_expires_after_ten_minutes(inv: LocalInvoiced, clock: FakeClock) -> None:
    fresh, stale = get_code(inv), get_code(inv)
    clock.advance(599)
    assert exchange(inv, fresh).status_code == 200

    clock.advance(2)
    late = exchange(inv, stale)

    assert late.status_code == 400 and late.json()["message"] == INVALID_REQUEST


@pytest.mark.parametrize(("data", "message"), [
    ({"client_secret": "Wrong5Jf8Kd2Lq9Zx4Cv7Bn1Mg6Tr3Wp"}, "Client authentication failed"),
    ({"client_id": "Zz9Zz9Zz9Zz9Zz9Zz9Zz9Zz9"}, "Client authentication failed"),
    ({"redirect_uri": "https://evil.example.test/callback"}, "Client authentication failed"),
    ({"redirect_uri": WITH_QUERY}, INVALID_REQUEST),  # registered, but not the one used at authorize
    ({"redirect_uri": None}, INVALID_REQUEST),
    ({"code": "def50200" + "ab" * 300}, INVALID_REQUEST),
    ({"code": None}, INVALID_REQUEST),
    ({"client_id": None}, INVALID_REQUEST),
    ({"grant_type": "password"}, "The authorization grant type is not supported by the authorization server."),
    ({"grant_type": None}, "The authorization grant type is not supported by the authorization server."),
], ids=lambda v: str(v)[:60])
def test_code_exchange_errors_are_invoiced_shaped(inv: LocalInvoiced, data: dict, message: str) -> None:
    body = {"grant_type": "authorization_code", "code": get_code(inv), "redirect_uri": CALLBACK,
            "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, **data}
    response = token_post(inv, {k: v for k, v in body.items() if v is not None}, creds=False)

    assert response.status_code == 400
    assert response.json() == {"type": "invalid_request", "message": message}


def test_client_credentials_may_come_by_http_basic(inv: LocalInvoiced) -> None:
    data = {"grant_type": "authorization_code", "code": get_code(inv), "redirect_uri": CALLBACK}

    wrong = token_post(inv, data, creds=False, auth=(CLIENT_ID, "x" * 32))
    right = token_post(inv, data, creds=False, auth=(CLIENT_ID, CLIENT_SECRET))

    assert wrong.json() == {"type": "invalid_request", "message": "Client authentication failed"}
    assert right.status_code == 200


# -- PKCE ------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["S256", "plain"])
def test_pkce_with_the_matching_verifier_succeeds(inv: LocalInvoiced, method: str) -> None:
    verifier = secrets.token_urlsafe(48)
    challenge = s256(verifier) if method == "S256" else verifier
    code = get_code(inv, code_challenge=challenge, code_challenge_method=method)

    assert exchange(inv, code, code_verifier=verifier).status_code == 200


@pytest.mark.parametrize("sent", ["wrong", "missing", "malformed"])
def test_pkce_without_the_matching_verifier_fails(inv: LocalInvoiced, sent: str) -> None:
    verifier = secrets.token_urlsafe(48)
    code = get_code(inv, code_challenge=s256(verifier), code_challenge_method="S256")
    extra = {"wrong": {"code_verifier": secrets.token_urlsafe(48)}, "missing": {},
             "malformed": {"code_verifier": "has spaces " * 5}}[sent]

    response = exchange(inv, code, **extra)

    assert response.status_code == 400
    assert response.json() == {"type": "invalid_request", "message": "Failed to verify `code_verifier`."}
    # A failed verification does not burn the code.
    assert exchange(inv, code, code_verifier=verifier).status_code == 200


def test_a_verifier_for_a_code_without_challenge_is_rejected(inv: LocalInvoiced) -> None:
    response = exchange(inv, get_code(inv), code_verifier=secrets.token_urlsafe(48))

    assert response.status_code == 400
    assert response.json() == {"type": "invalid_request", "message": INVALID_REQUEST}


# -- refresh and rotation --------------------------------------------------------------------


def test_refresh_rotates_strictly_with_no_grace(inv: LocalInvoiced) -> None:
    old = connect(inv)
    assert api_get(inv, "/companies/current", old["access_token"]).status_code == 200

    response = refresh(inv, old["refresh_token"])

    assert response.status_code == 200 and response.headers["Cache-Control"] == "no-store"
    new = response.json()
    assert new["refresh_token"] != old["refresh_token"] and new["access_token"] != old["access_token"]
    assert not inv.is_refresh_token_valid(old["refresh_token"])
    assert not inv.is_access_token_valid(old["access_token"])
    assert api_get(inv, "/companies/current", old["access_token"]).json() == {
        "type": "invalid_request", "message": DENIED}
    assert api_get(inv, "/companies/current", new["access_token"]).status_code == 200
    again = refresh(inv, old["refresh_token"])
    assert again.status_code == 400
    assert again.json() == {"type": "invalid_request", "message": REFRESH_INVALID}
    assert inv.is_refresh_token_valid(new["refresh_token"])  # a failed replay harms nothing


def test_concurrent_refreshes_with_one_token_have_exactly_one_winner(inv: LocalInvoiced) -> None:
    # Several rounds: a race that is lost only now and then must still show up.
    token = connect(inv)["refresh_token"]
    for _ in range(6):
        barrier = threading.Barrier(8)
        results: list[requests.Response] = []

        def race(start: threading.Barrier, out: list[requests.Response], token: str) -> None:
            start.wait()
            out.append(refresh(inv, token))

        threads = [threading.Thread(target=race, args=(barrier, results, token)) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        winners = [r for r in results if r.status_code == 200]
        losers = [r for r in results if r.status_code != 200]
        assert len(winners) == 1
        assert all(r.status_code == 400 and r.json()["message"] == REFRESH_INVALID for r in losers)
        token = winners[0].json()["refresh_token"]
        assert inv.is_refresh_token_valid(token)
    assert inv.token_request_count("refresh_token") == 6 * 8


def test_refresh_may_narrow_but_not_widen_scope(inv: LocalInvoiced) -> None:
    tokens = connect(inv, scope="read read_write")

    narrowed = token_post(inv, {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
                                "scope": "read"})
    assert verified_claims(inv, narrowed.json()["access_token"])[1]["scopes"] == ["read"]

    widened = token_post(inv, {"grant_type": "refresh_token",
                               "refresh_token": narrowed.json()["refresh_token"], "scope": "read read_write"})
    assert widened.json() == {"type": "invalid_request",
                              "message": "The requested scope is invalid, unknown, or malformed"}


def test_access_token_expires_after_its_ttl(inv: LocalInvoiced, clock: FakeClock) -> None:
    tokens = connect(inv)
    clock.advance(3599)
    assert api_get(inv, "/companies/current", tokens["access_token"]).status_code == 200

    clock.advance(1)

    assert api_get(inv, "/companies/current", tokens["access_token"]).status_code == 401
    assert not inv.is_access_token_valid(tokens["access_token"])
    assert refresh(inv, tokens["refresh_token"]).status_code == 200  # the refresh token lives on


def test_refresh_token_expires_after_a_year(inv: LocalInvoiced, clock: FakeClock) -> None:
    tokens = connect(inv)
    clock.advance(365 * 86_400 + 1)

    response = refresh(inv, tokens["refresh_token"])

    assert response.json() == {"type": "invalid_request", "message": REFRESH_INVALID}
    assert not inv.is_refresh_token_valid(tokens["refresh_token"])


def test_refresh_with_wrong_client_secret_fails_and_keeps_the_token(inv: LocalInvoiced) -> None:
    tokens = connect(inv)

    response = token_post(inv, {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
                                "client_id": CLIENT_ID, "client_secret": "y" * 32}, creds=False)

    assert response.json() == {"type": "invalid_request", "message": "Client authentication failed"}
    assert inv.is_refresh_token_valid(tokens["refresh_token"])


# -- revoke ------------------------------------------------------------------------------------


def test_revoke_kills_the_access_token_and_its_refresh_token(inv: LocalInvoiced) -> None:
    tokens, other = connect(inv), connect(inv)

    response = requests.post(f"{inv.base_url}/oauth/revoke", data={"token": tokens["access_token"]}, timeout=T)

    assert response.status_code == 204 and response.content == b""
    assert api_get(inv, "/companies/current", tokens["access_token"]).status_code == 401
    assert not inv.is_refresh_token_valid(tokens["refresh_token"])
    assert inv.is_refresh_token_valid(other["refresh_token"])


# -- REST API ------------------------------------------------------------------------------------


def test_current_company(inv: LocalInvoiced) -> None:
    response = api_get(inv, "/companies/current", connect(inv, company_id=ACME)["access_token"])

    assert response.status_code == 200
    assert response.json() == {"id": ACME, "object": "company", "name": "Acme <Corp>",
                               "email": "billing@example.com", "country": "US", "currency": "usd",
                               "time_zone": "America/Chicago", "test_mode": True}


@pytest.mark.parametrize("token", [None, "", "not-a-jwt", "a.b.c"])
def test_api_without_a_valid_bearer_token_is_401(inv: LocalInvoiced, token: str | None) -> None:
    response = api_get(inv, "/companies/current", token)

    assert response.status_code == 401
    assert response.json() == {"type": "invalid_request", "message": DENIED}


def test_hosts_are_separate(inv: LocalInvoiced) -> None:
    access = connect(inv)["access_token"]
    assert urlsplit(inv.base_url).port != urlsplit(inv.api_url).port

    on_app_host = requests.get(f"{inv.base_url}/companies/current",
                               headers={"Authorization": f"Bearer {access}"}, timeout=T)
    on_api_host = requests.post(f"{inv.api_url}/oauth/access_token", data={}, timeout=T)

    assert on_app_host.status_code == 404
    assert on_api_host.status_code == 401


def parse_links(header: str) -> dict[str, str]:
    links = {}
    for part in header.split(", "):
        url, rel = part.split("; ")
        links[rel.removeprefix('rel="').removesuffix('"')] = url.strip("<>")
    return links


def test_invoices_paginate_with_link_headers(inv: LocalInvoiced) -> None:
    access = connect(inv)["access_token"]

    first = api_get(inv, "/invoices", access)

    assert first.status_code == 200 and first.headers["X-Total-Count"] == "250"
    assert isinstance(first.json(), list) and len(first.json()) == 100
    links = parse_links(first.headers["Link"])
    assert set(links) == {"self", "first", "next", "last"}
    assert all(url.startswith(inv.api_url + "/invoices?") for url in links.values())
    assert query_of(links["last"]) == {"per_page": "100", "page": "3"}

    seen: list[int] = []
    url: str | None = f"{inv.api_url}/invoices?per_page=30"
    pages = 0
    while url:
        page = requests.get(url, headers={"Authorization": f"Bearer {access}"}, timeout=T)
        seen += [invoice["id"] for invoice in page.json()]
        page_links = parse_links(page.headers["Link"])
        assert ("previous" in page_links) == (pages > 0)
        url, pages = page_links.get("next"), pages + 1
    assert pages == 9 and len(seen) == len(set(seen)) == 250 and seen == sorted(seen)


def test_invoice_fields_and_per_company_data(inv: LocalInvoiced) -> None:
    acme = api_get(inv, "/invoices?per_page=5", connect(inv, company_id=ACME)["access_token"]).json()
    globex = api_get(inv, "/invoices?per_page=5", connect(inv, company_id=GLOBEX)["access_token"]).json()

    required = {"id", "object", "customer", "number", "currency", "date", "due_date", "status", "total",
                "balance", "paid", "closed", "draft", "items", "url", "pdf_url", "created_at",
                "updated_at", "metadata"}
    assert all(required <= set(invoice) and invoice["object"] == "invoice" for invoice in acme + globex)
    assert {i["currency"] for i in acme} == {"usd"} and {i["currency"] for i in globex} == {"gbp"}
    assert not {i["id"] for i in acme} & {i["id"] for i in globex}


@pytest.mark.parametrize(("query", "count", "status"), [
    ("per_page=500", 100, 200), ("page=3", 50, 200), ("page=4", 0, 200), ("per_page=abc", None, 400),
])
def test_invoice_paging_bounds(inv: LocalInvoiced, query: str, count: int | None, status: int) -> None:
    response = api_get(inv, f"/invoices?{query}", connect(inv)["access_token"])

    assert response.status_code == status
    if count is not None:
        assert len(response.json()) == count
    else:
        assert response.json()["type"] == "invalid_request"


def list_all(inv: LocalInvoiced, access: str, query: str = "") -> tuple[list[dict[str, Any]], requests.Response]:
    """Every invoice ``query`` lists, following the Link header; also the first page's response."""
    first = api_get(inv, f"/invoices?{query}", access)
    assert first.status_code == 200, first.text
    invoices, page = list(first.json()), first
    while "next" in parse_links(page.headers["Link"]):
        page = requests.get(parse_links(page.headers["Link"])["next"],
                            headers={"Authorization": f"Bearer {access}"}, timeout=T)
        invoices += page.json()
    return invoices, first


@pytest.fixture(scope="module")
def every_invoice(server: LocalInvoiced) -> list[dict[str, Any]]:
    """ACME's whole ledger, unfiltered, in id order."""
    return list_all(server, connect(server, company_id=ACME)["access_token"])[0]


def test_filter_by_status_lists_only_that_status(inv: LocalInvoiced, every_invoice: list[dict[str, Any]]) -> None:
    expected = [i["id"] for i in every_invoice if i["status"] == "past_due"]

    listed, first = list_all(inv, connect(inv)["access_token"], "filter[status]=past_due&per_page=10")

    assert 10 < len(expected) < 250
    assert [i["id"] for i in listed] == expected
    assert first.headers["X-Total-Count"] == str(len(expected))
    last = parse_links(first.headers["Link"])["last"]
    assert query_of(last) == {"filter[status]": "past_due", "per_page": "10", "page": str(-(-len(expected) // 10))}


def test_filter_by_customer_and_combined_filters(inv: LocalInvoiced, every_invoice: list[dict[str, Any]]) -> None:
    # A customer with both settled and open invoices, so each filter narrows the list.
    customer = next(c for c in sorted({i["customer"] for i in every_invoice})
                    if len({i["closed"] for i in every_invoice if i["customer"] == c}) == 2)
    access = connect(inv)["access_token"]

    by_customer, _ = list_all(inv, access, f"filter[customer]={customer}")
    unpaid, _ = list_all(inv, access, f"filter[customer]={customer}&filter[paid]=0&filter[closed]=false")

    assert [i["id"] for i in by_customer] == [i["id"] for i in every_invoice if i["customer"] == customer]
    assert [i["id"] for i in unpaid] == [i["id"] for i in every_invoice
                                         if i["customer"] == customer and not i["paid"] and not i["closed"]]
    assert 0 < len(unpaid) < len(by_customer)


def test_filter_by_date_and_metadata(inv: LocalInvoiced, every_invoice: list[dict[str, Any]]) -> None:
    target = every_invoice[6]  # the 7th invoice carries a po_number
    access = connect(inv)["access_token"]
    day = time.strftime("%Y-%m-%d", time.gmtime(target["date"]))

    on_day, _ = list_all(inv, access, f"filter[date]={day}")
    by_po, _ = list_all(inv, access, urlencode({"metadata[po_number]": target["metadata"]["po_number"]}))

    assert [i["id"] for i in on_day] == [target["id"]]
    assert target["id"] in [i["id"] for i in by_po]
    assert all(i["metadata"].get("po_number") == target["metadata"]["po_number"] for i in by_po)


def test_start_and_end_date_bound_the_invoice_date(inv: LocalInvoiced, every_invoice: list[dict[str, Any]]) -> None:
    start, end = every_invoice[9]["date"], every_invoice[19]["date"]

    listed, first = list_all(inv, connect(inv)["access_token"], f"start_date={start}&end_date={end}")

    assert [i["id"] for i in listed] == [i["id"] for i in every_invoice[9:20]]
    assert first.headers["X-Total-Count"] == "11"


def test_updated_after_and_before_are_exclusive(inv: LocalInvoiced, every_invoice: list[dict[str, Any]]) -> None:
    after, before = every_invoice[50]["updated_at"], every_invoice[150]["updated_at"]
    access = connect(inv)["access_token"]

    newer, _ = list_all(inv, access, f"updated_after={after}")
    between, _ = list_all(inv, access, f"updated_after={after}&updated_before={before}")

    assert [i["id"] for i in newer] == [i["id"] for i in every_invoice if i["updated_at"] > after]
    assert [i["id"] for i in between] == [i["id"] for i in every_invoice if after < i["updated_at"] < before]
    assert every_invoice[50]["id"] not in [i["id"] for i in newer]
    # Read like PHP's (int) cast: the leading digits count, whatever follows them.
    assert list_all(inv, access, f"updated_after={after}xyz")[0] == newer


def test_sort_orders_by_each_term_with_id_breaking_ties(inv: LocalInvoiced,
                                                         every_invoice: list[dict[str, Any]]) -> None:
    listed, _ = list_all(inv, connect(inv)["access_token"], urlencode({"sort": "status asc,total desc"}))

    expected = sorted(every_invoice, key=lambda i: i["id"])
    expected.sort(key=lambda i: i["total"], reverse=True)
    expected.sort(key=lambda i: i["status"])
    assert [i["id"] for i in listed] == [i["id"] for i in expected]
    assert [i["id"] for i in listed] != [i["id"] for i in every_invoice]


@pytest.mark.parametrize("sort", ["bogus desc", "url desc", "total", "total sideways", "total desc desc", ""])
def test_unusable_sort_terms_are_dropped_not_refused(inv: LocalInvoiced, every_invoice: list[dict[str, Any]],
                                                     sort: str) -> None:
    listed, _ = list_all(inv, connect(inv)["access_token"], urlencode({"sort": sort}))

    assert [i["id"] for i in listed] == [i["id"] for i in every_invoice]


@pytest.mark.parametrize(("query", "message"), [
    ("filter[colour]=red", "Invalid filter parameter: colour"),
    ("filter[notes]=x", "Invalid filter parameter: notes"),
    ("filter[status][0]=paid", "Invalid value for `status` filter parameter"),
    ("filter[date]=yesterday-ish", "Invalid value for `date` filter parameter: yesterday-ish"),
    ("filter[due_date]=2024-13-45", "Invalid value for `due_date` filter parameter: 2024-13-45"),
])
def test_malformed_filters_get_invoiceds_400(inv: LocalInvoiced, query: str, message: str) -> None:
    response = api_get(inv, f"/invoices?{query}", connect(inv)["access_token"])

    assert response.status_code == 400
    assert response.json() == {"type": "invalid_request", "message": message}


@pytest.mark.parametrize("query", [
    "filter[status]=bogus", "filter[customer]=abc", "filter[paid]=maybe", "metadata[po_number]=none",
])
def test_a_filter_value_that_matches_nothing_lists_nothing(inv: LocalInvoiced, query: str) -> None:
    response = api_get(inv, f"/invoices?{query}", connect(inv)["access_token"])

    assert response.status_code == 200 and response.json() == []
    assert response.headers["X-Total-Count"] == "0"
    assert set(parse_links(response.headers["Link"])) == {"self", "first", "last"}


@pytest.mark.parametrize("query", [
    "start_date=soon", "end_date=-5", "updated_after=abc", "updated_before=0", "created_after=1", "expand=customer",
])
def test_ignored_bounds_and_unknown_parameters_list_everything(inv: LocalInvoiced, query: str) -> None:
    response = api_get(inv, f"/invoices?{query}", connect(inv)["access_token"])

    assert response.status_code == 200 and response.headers["X-Total-Count"] == "250"


def test_more_than_twenty_concurrent_requests_per_token_get_429(inv: LocalInvoiced) -> None:
    busy, other = connect(inv)["access_token"], connect(inv)["access_token"]
    inv.faults.latency_ms = 600
    tokens = [busy] * 23 + [other]
    barrier = threading.Barrier(len(tokens))
    results: dict[int, requests.Response] = {}

    def call(i: int) -> None:
        barrier.wait()
        results[i] = api_get(inv, "/companies/current", tokens[i])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(tokens))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    busy_statuses = sorted(results[i].status_code for i in range(23))
    assert busy_statuses == [200] * 20 + [429] * 3
    limited = next(results[i] for i in range(23) if results[i].status_code == 429)
    assert limited.json()["type"] == "rate_limit_error"
    assert limited.json()["message"].startswith("Too many concurrent requests!")
    assert "Retry-After" not in limited.headers
    assert results[23].status_code == 200  # the limit is per token


# -- faults ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("fault", "status", "content_type"), [
    ("server_error_next", 500, "application/json"),
    ("rate_limit_next", 429, "application/json"),
    ("html_next", 502, "text/html"),
])
def test_pre_grant_faults_answer_without_processing(inv: LocalInvoiced, fault: str, status: int,
                                                    content_type: str) -> None:
    tokens = connect(inv)
    inv.faults.set(**{fault: 2})

    responses = [refresh(inv, tokens["refresh_token"]) for _ in range(2)]

    assert [r.status_code for r in responses] == [status, status]
    assert all(r.headers["Content-Type"].startswith(content_type) for r in responses)
    if fault == "server_error_next":
        assert responses[0].json()["type"] == "api_error"
    if fault == "rate_limit_next":
        assert responses[0].json()["type"] == "rate_limit_error" and "Retry-After" not in responses[0].headers
    assert inv.is_refresh_token_valid(tokens["refresh_token"])  # nothing rotated
    assert getattr(inv.faults, fault) == 0
    assert refresh(inv, tokens["refresh_token"]).status_code == 200  # one-shot: consumed
    assert [r.fault for r in inv.token_requests[-3:]] == [fault.removesuffix("_next")] * 2 + [None]


def test_timeout_fault_holds_the_request_and_does_not_process_it(inv: LocalInvoiced) -> None:
    tokens = connect(inv)
    inv.faults.set(timeout_next=2, timeout_seconds=0.4)

    with pytest.raises(requests.exceptions.ReadTimeout):
        refresh(inv, tokens["refresh_token"], timeout=0.15)
    started = time.monotonic()
    waited = refresh(inv, tokens["refresh_token"])

    assert time.monotonic() - started >= 0.4
    assert waited.status_code == 504 and waited.headers["Content-Type"].startswith("text/html")
    assert inv.is_refresh_token_valid(tokens["refresh_token"])
    assert refresh(inv, tokens["refresh_token"]).status_code == 200


def test_truncate_fault_commits_then_sends_half_a_body(inv: LocalInvoiced) -> None:
    tokens = connect(inv)
    inv.faults.set(truncate_next=1)

    response = refresh(inv, tokens["refresh_token"])

    assert response.status_code == 200
    with pytest.raises(ValueError):
        response.json()
    assert response.text.startswith('{"token_type": "Bearer"')
    assert not inv.is_refresh_token_valid(tokens["refresh_token"])  # the rotation happened
    assert inv.token_requests[-1].fault == "truncate" and inv.token_requests[-1].status == 200


def test_commit_then_drop_rotates_but_the_client_gets_no_response(inv: LocalInvoiced) -> None:
    tokens = connect(inv)
    inv.faults.set(commit_then_drop_next=1)

    with pytest.raises(requests.exceptions.ConnectionError):
        refresh(inv, tokens["refresh_token"])

    assert not inv.is_refresh_token_valid(tokens["refresh_token"])
    assert not inv.is_access_token_valid(tokens["access_token"])
    record = inv.token_requests[-1]
    assert (record.grant_type, record.status, record.fault) == ("refresh_token", 200, "commit_then_drop")
    # The hazard: retrying with the old token can never succeed.
    assert refresh(inv, tokens["refresh_token"]).json()["message"] == REFRESH_INVALID


def test_api_server_error_fault_hits_the_api_host_once(inv: LocalInvoiced) -> None:
    access = connect(inv)["access_token"]
    inv.faults.api_server_error_next = 1

    failed = api_get(inv, "/companies/current", access)

    assert failed.status_code == 500 and failed.json()["type"] == "api_error"
    assert api_get(inv, "/companies/current", access).status_code == 200


def test_latency_applies_to_both_hosts(inv: LocalInvoiced) -> None:
    access = connect(inv)["access_token"]
    inv.faults.latency_ms = 250

    for call in (lambda: api_get(inv, "/companies/current", access),
                 lambda: requests.get(authorize_url(inv), timeout=T)):
        started = time.monotonic()
        assert call().status_code == 200
        assert time.monotonic() - started >= 0.25


def test_faults_are_validated_and_resettable() -> None:
    faults = Faults()
    with pytest.raises(ValueError):
        faults.set(no_such_fault=1)
    with pytest.raises(ValueError):
        faults.set(error_style="other")
    with pytest.raises(ValueError):
        faults.server_error_next = -1
    with pytest.raises(AttributeError):
        faults.server_error = 1  # type: ignore[attr-defined]  # a typo must not pass silently

    faults.set(html_next=1, latency_ms=5)
    assert faults.consume("html_next") and not faults.consume("html_next")
    faults.reset()
    assert faults.snapshot()["latency_ms"] == 0


def test_admin_endpoint_reads_sets_and_resets_faults(inv: LocalInvoiced) -> None:
    admin = f"{inv.base_url}/_admin"

    set_ = requests.post(f"{admin}/faults", json={"server_error_next": 1, "latency_ms": 2000}, timeout=T)
    started = time.monotonic()
    read = requests.get(f"{admin}/faults", timeout=T)

    assert set_.status_code == 200 and set_.json()["server_error_next"] == 1
    assert read.json() == inv.faults.snapshot() and read.json()["latency_ms"] == 2000
    assert time.monotonic() - started < 1  # admin calls are never delayed
    assert inv.faults.server_error_next == 1
    assert requests.post(f"{admin}/faults", json={"bogus": 1}, timeout=T).status_code == 400
    assert requests.post(f"{admin}/faults", json={"html_next": "x"}, timeout=T).status_code == 400
    assert requests.post(f"{admin}/faults", data="[]", timeout=T).status_code == 400

    reset = requests.post(f"{admin}/reset", timeout=T)

    assert reset.status_code == 200 and reset.json() == Faults().snapshot()
    assert inv.faults.latency_ms == 0 and inv.faults.server_error_next == 0


# -- league error style -------------------------------------------------------------------------


def test_league_style_token_errors(inv: LocalInvoiced) -> None:
    tokens = connect(inv)
    assert refresh(inv, tokens["refresh_token"]).status_code == 200
    code = get_code(inv)
    inv.faults.error_style = "league"

    bad_client = token_post(inv, {"grant_type": "refresh_token", "refresh_token": "x"}, creds=False,
                            auth=(CLIENT_ID, "z" * 32))
    assert bad_client.status_code == 401
    assert bad_client.headers["WWW-Authenticate"] == 'Basic realm="OAuth"'
    assert bad_client.json()["error"] == "invalid_client"

    rotated = refresh(inv, tokens["refresh_token"])
    assert rotated.status_code == 401
    assert rotated.json() == {"error": "invalid_request", "error_description": REFRESH_INVALID,
                              "hint": "Token has been revoked", "message": REFRESH_INVALID}

    bad_code = exchange(inv, "def50200" + "cd" * 300)
    assert bad_code.status_code == 400 and bad_code.json()["error"] == "invalid_request"

    unsupported = token_post(inv, {"grant_type": "client_credentials"})
    assert unsupported.status_code == 400 and unsupported.json()["error"] == "unsupported_grant_type"

    inv.faults.server_error_next = 1
    server_error = refresh(inv, "anything")
    assert server_error.status_code == 500 and server_error.json()["error"] == "server_error"

    assert exchange(inv, code).status_code == 200  # the style changes errors only


def test_league_style_pkce_failure_is_invalid_grant(inv: LocalInvoiced) -> None:
    code = get_code(inv, code_challenge=s256("v" * 43), code_challenge_method="S256")
    inv.faults.error_style = "league"

    body = exchange(inv, code, code_verifier="w" * 43).json()

    assert body["error"] == "invalid_grant" and body["hint"] == "Failed to verify `code_verifier`."


# -- inspection and standalone ----------------------------------------------------------------


def test_token_requests_are_recorded(inv: LocalInvoiced, clock: FakeClock) -> None:
    tokens = connect(inv)
    refresh(inv, tokens["refresh_token"])
    refresh(inv, tokens["refresh_token"])

    assert inv.token_request_count() == 3
    assert inv.token_request_count("refresh_token") == 2
    assert [(r.grant_type, r.status, r.error) for r in inv.token_requests] == [
        ("authorization_code", 200, None), ("refresh_token", 200, None),
        ("refresh_token", 400, "invalid_request")]
    assert inv.token_requests[0].time == clock.now


def test_a_busy_port_fails_start_cleanly(inv: LocalInvoiced) -> None:
    taken = urlsplit(inv.api_url).port
    assert taken is not None
    other = LocalInvoiced(client_id=CLIENT_ID, client_secret=CLIENT_SECRET, redirect_uris=[CALLBACK],
                          api_port=taken)

    with pytest.raises(OSError):
        other.start()
    other.stop()  # idempotent after a failed start


def test_standalone_consent_page_shows_the_client_name_and_companies() -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    command = [sys.executable, "-m", "local.invoiced", "--client-id", CLIENT_ID,
               "--client-secret", CLIENT_SECRET, "--redirect-uri", CALLBACK, "--quiet",
               "--client-name", "Ledger <Sync>", "--company", "5=Five & Co"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=env) as process:
        assert process.stdout is not None
        try:
            base_url = process.stdout.readline().strip().split("=", 1)[1]
            query = urlencode({"response_type": "code", "client_id": CLIENT_ID, "redirect_uri": CALLBACK,
                               "scope": "read"})
            html = requests.get(f"{base_url}/oauth/authorize?{query}", timeout=T).text
        finally:
            process.terminate()
            _, errors = process.communicate(timeout=10)
    assert process.returncode == 0, errors
    assert "<strong>Ledger &lt;Sync&gt;</strong> wants access to your Invoiced account." in html
    assert '<option value="5">Five &amp; Co</option>' in html


def test_runs_standalone_and_prints_its_urls() -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    command = [sys.executable, "-m", "local.invoiced", "--client-id", CLIENT_ID,
               "--client-secret", CLIENT_SECRET, "--redirect-uri", CALLBACK, "--quiet"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=env) as process:
        assert process.stdout is not None
        try:
            lines = [process.stdout.readline().strip() for _ in range(2)]
            urls = dict(line.split("=", 1) for line in lines if "=" in line)
            base_url, api_url = urls["LOCAL_INVOICED_BASE_URL"], urls["LOCAL_INVOICED_API_URL"]

            assert requests.get(f"{base_url}/_admin/faults", timeout=T).status_code == 200
            assert requests.get(f"{api_url}/companies/current", timeout=T).status_code == 401
        finally:
            process.terminate()
            _, errors = process.communicate(timeout=10)
    assert process.returncode == 0, errors
