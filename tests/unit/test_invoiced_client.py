"""The Invoiced client: strict token parsing and error classification."""

from __future__ import annotations

import pytest
import requests
from urllib3.exceptions import NewConnectionError, ProtocolError

from invoiced_connect.invoiced import client as invoiced
from invoiced_connect.invoiced.client import (
    ClientAuthError,
    InvalidGrantError,
    InvalidTokenResponseError,
    InvoicedClient,
    RequestRejectedError,
    TransientError,
    UnknownOutcomeError,
    classify_token_error,
    parse_token_response,
)
from tests.support import fake_jwt, http_response, token_body

NOW = 1_800_000_000


# ------------------------------------------------------------------ parsing
def test_valid_response_parses_with_tenant_scopes_and_expiry():
    tokens = parse_token_response(http_response(200, token_body()), now=NOW)
    assert tokens.tenant_id == "167"
    assert tokens.scopes == ("read_write",)
    assert tokens.expires_at == NOW + 3600
    assert tokens.refresh_token.startswith("def50200")


def test_tokens_never_show_in_repr():
    tokens = parse_token_response(http_response(200, token_body()), now=NOW)
    assert tokens.access_token not in repr(tokens)
    assert tokens.refresh_token not in repr(tokens)


@pytest.mark.parametrize(
    "body,reason",
    [
        (token_body(access_token=None), "missing_access_token"),
        (token_body(refresh_token=None), "missing_refresh_token"),
        (token_body(refresh_token=""), "missing_refresh_token"),
        (token_body(expires_in=None), "bad_expires_in"),
        (token_body(expires_in="3600"), "bad_expires_in"),
        (token_body(expires_in=True), "bad_expires_in"),
        (token_body(expires_in=-5), "bad_expires_in"),
        (token_body(access_token=123), "missing_access_token"),
        (token_body(token_type="mac"), "bad_token_type"),
        (token_body(access_token="opaque-token"), "not_jwt"),
        (token_body(access_token=fake_jwt(sub="user:12")), "no_tenant"),
        (token_body(access_token=fake_jwt(sub="tenant:abc")), "no_tenant"),
        (token_body(access_token=fake_jwt(sub="tenant:\u0661\u0662\u00b2")), "no_tenant"),  # non-ASCII digits
        (token_body(access_token=fake_jwt(sub="tenant:")), "no_tenant"),
        (["not", "an", "object"], "not_json"),
        ("<html>502 Bad Gateway</html>", "not_json"),
    ],
)
def test_malformed_responses_raise_a_typed_error(body, reason):
    with pytest.raises(InvalidTokenResponseError) as info:
        parse_token_response(http_response(200, body), now=NOW)
    assert info.value.reason == reason


# ------------------------------------------------------------------ classification
@pytest.mark.parametrize(
    "status,body,grant,expected",
    [
        (400, {"type": "invalid_request", "message": invoiced.MSG_CLIENT_AUTH}, "refresh_token", ClientAuthError),
        (400, {"type": "invalid_request", "message": invoiced.MSG_REFRESH_INVALID}, "refresh_token", InvalidGrantError),
        (400, {"type": "invalid_request", "message": invoiced.MSG_MALFORMED}, "authorization_code", InvalidGrantError),
        (400, {"type": "invalid_request", "message": invoiced.MSG_PKCE}, "authorization_code", InvalidGrantError),
        (400, {"type": "invalid_request", "message": invoiced.MSG_MALFORMED}, "refresh_token", RequestRejectedError),
        (400, {"type": "invalid_request", "message": invoiced.MSG_UNSUPPORTED_GRANT}, "refresh_token", RequestRejectedError),
        (400, {"type": "invalid_request", "message": invoiced.MSG_BAD_SCOPE}, "refresh_token", RequestRejectedError),
        (401, {"error": "invalid_client", "error_description": "Client authentication failed"}, "refresh_token", ClientAuthError),
        (401, {"error": "invalid_request", "hint": "Token has been revoked"}, "refresh_token", InvalidGrantError),
        (400, {"error": "invalid_grant"}, "refresh_token", InvalidGrantError),
        (400, {"error": "invalid_request"}, "authorization_code", InvalidGrantError),
        (400, {"error": "unsupported_grant_type"}, "refresh_token", RequestRejectedError),
        (500, {"error": "server_error"}, "refresh_token", TransientError),
        (500, {"type": "api_error", "message": "oops"}, "refresh_token", TransientError),
        (503, "<html>maintenance</html>", "refresh_token", TransientError),
        (429, {"type": "rate_limit_error", "message": "Too many concurrent requests!"}, "refresh_token", TransientError),
        (400, "<html>error</html>", "authorization_code", TransientError),
    ],
)
def test_error_classification(status, body, grant, expected):
    error = classify_token_error(http_response(status, body), grant)
    assert type(error) is expected
    assert error.status == status


def test_only_transient_errors_are_retryable():
    assert TransientError("x").retryable and UnknownOutcomeError("x").retryable
    assert not InvalidGrantError("x").retryable and not ClientAuthError("x").retryable


# ------------------------------------------------------------------ transport behaviour
class ScriptedSession:
    """Answers each POST with the next scripted response or exception."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.posts: list[dict] = []

    def post(self, url, data=None, **kwargs):
        self.posts.append({"url": url, "data": dict(data or {}), **kwargs})
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    get = post


def client_with(session, secrets=("s1",)):
    calls = []

    def secret(force: bool) -> str:
        """The first value until a forced re-read, then the last one."""
        calls.append(force)
        return secrets[-1] if force else secrets[0]

    client = InvoicedClient(
        base_url="https://invoiced.test", api_url="https://api.invoiced.test", client_id="c" * 24,
        client_secret=secret, timeout=5, session=session,
    )
    return client, calls


def test_exchange_sends_code_verifier_and_redirect_uri_with_timeouts():
    session = ScriptedSession(http_response(200, token_body()))
    client, _ = client_with(session)
    client.exchange_code(code="def50200abc", redirect_uri="https://x.test/callback", code_verifier="v" * 43)
    (post,) = session.posts
    assert post["url"] == "https://invoiced.test/oauth/access_token"
    assert post["data"]["grant_type"] == "authorization_code"
    assert post["data"]["redirect_uri"] == "https://x.test/callback"
    assert post["data"]["code_verifier"] == "v" * 43
    assert post["timeout"] == (3.05, 5)


def test_client_auth_failure_rereads_the_secret_once_and_retries_with_the_new_one():
    bad = http_response(400, {"type": "invalid_request", "message": invoiced.MSG_CLIENT_AUTH})
    session = ScriptedSession(bad, http_response(200, token_body()))
    client, calls = client_with(session, secrets=("old", "new"))
    client.refresh("def50200old")
    assert calls == [False, True]
    assert [p["data"]["client_secret"] for p in session.posts] == ["old", "new"]


def test_client_auth_failure_with_unchanged_secret_is_not_retried():
    bad = http_response(400, {"type": "invalid_request", "message": invoiced.MSG_CLIENT_AUTH})
    session = ScriptedSession(bad)
    client, _ = client_with(session, secrets=("same",))
    with pytest.raises(ClientAuthError):
        client.refresh("def50200old")
    assert len(session.posts) == 1


def test_connect_failure_is_transient_but_a_lost_answer_is_unknown_outcome():
    refused = requests.ConnectionError(NewConnectionError(None, "refused"))
    client, _ = client_with(ScriptedSession(refused))
    with pytest.raises(TransientError) as info:
        client.refresh("def50200x")
    assert not isinstance(info.value, UnknownOutcomeError)

    for lost in (requests.ReadTimeout("read timed out"), requests.ConnectionError(ProtocolError("reset"))):
        client, _ = client_with(ScriptedSession(lost))
        with pytest.raises(UnknownOutcomeError):
            client.refresh("def50200x")


def test_truncated_success_body_is_unknown_outcome():
    client, _ = client_with(ScriptedSession(http_response(200, b'{"token_type":"Bearer","acc')))
    with pytest.raises(UnknownOutcomeError) as info:
        client.refresh("def50200x")
    assert info.value.reason == "truncated"


def test_authorize_url_carries_pkce_and_exact_redirect_uri():
    client, _ = client_with(ScriptedSession())
    url = client.authorize_url(redirect_uri="https://x.test/callback", scope="read_write", state="st", code_challenge="ch")
    assert url.startswith("https://invoiced.test/oauth/authorize?response_type=code&client_id=")
    assert "redirect_uri=https%3A%2F%2Fx.test%2Fcallback" in url
    assert "code_challenge=ch&code_challenge_method=S256" in url
    assert "state=st" in url and "scope=read_write" in url


# ------------------------------------------------------------------ the probe after a lost answer
@pytest.mark.parametrize(("status", "accepted"), [(200, True), (204, True), (401, False)])
def test_the_probe_says_whether_the_api_accepts_the_token(status, accepted):
    session = ScriptedSession(http_response(status, {"id": 167} if status == 200 else ""))
    client, _ = client_with(session)
    assert client.token_accepted("old-access", api_url="https://api.sandbox.invoiced.test/") is accepted
    (sent,) = session.posts
    assert sent["url"] == "https://api.sandbox.invoiced.test/companies/current"
    assert sent["headers"]["Authorization"] == "Bearer old-access"


@pytest.mark.parametrize("answer", [
    http_response(500, {"type": "api_error"}), http_response(429, {"type": "rate_limit_error"}),
    http_response(403, {"type": "invalid_request"}), http_response(502, "<html>Bad Gateway</html>", "text/html"),
    requests.ReadTimeout("read timed out"), requests.ConnectionError("reset"),
], ids=["500", "429", "403", "502 html", "timeout", "reset"])
def test_a_probe_that_cannot_tell_raises_transient(answer):
    client, _ = client_with(ScriptedSession(answer))
    with pytest.raises(TransientError):
        client.token_accepted("old-access")


def test_a_token_response_counts_its_lifetime_from_the_client_clock():
    client = InvoicedClient(base_url="https://invoiced.test", api_url="https://api.invoiced.test",
                            client_id="c" * 24, client_secret=lambda force: "s",
                            session=ScriptedSession(http_response(200, token_body(expires_in=90))),
                            clock=lambda: NOW)
    tokens = client.refresh("def50200old")
    assert (tokens.expires_at, tokens.lifetime) == (NOW + 90, 90)


# ------------------------------------------------------------------ strict parsing of what Invoiced sends
DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize("body", [DEEP, b'{"error": NaN}', b'{"message": Infinity}', b'{"type": -Infinity}',
                                  b'{"error": "invalid_grant", "x": 1e400}'])
def test_an_error_body_that_is_not_strict_json_is_transient_as_no_json(body):
    error = classify_token_error(http_response(400, body), "authorization_code")
    assert (type(error), error.reason, error.status) == (TransientError, "non_json", 400)


@pytest.mark.parametrize("code", [{"x": 1}, ["invalid_grant"], 5, True, None])
def test_an_error_code_that_is_not_a_string_is_a_plain_rejection(code):
    error = classify_token_error(http_response(400, {"error": code}), "refresh_token")
    assert (type(error), error.reason) == (RequestRejectedError, "rejected")


@pytest.mark.parametrize("kind", [["api_error"], {"api_error": 1}])
def test_an_error_type_that_is_not_a_string_is_a_plain_rejection(kind):
    error = classify_token_error(http_response(400, {"type": kind, "message": "x"}), "refresh_token")
    assert (type(error), error.reason) == (RequestRejectedError, "rejected")


@pytest.mark.parametrize("body", [DEEP, b'{"expires_in": NaN}', b'{"expires_in": 1e400}', b'{"x": Infinity}'])
def test_a_token_response_that_is_not_strict_json_is_not_json(body):
    with pytest.raises(InvalidTokenResponseError) as info:
        parse_token_response(http_response(200, body), now=NOW)
    assert info.value.reason == "not_json"


@pytest.mark.parametrize("expires_in", [3600.0, 3600.5, "3600", True, None, [3600]])
def test_expires_in_must_be_an_integer(expires_in):
    with pytest.raises(InvalidTokenResponseError) as info:
        parse_token_response(http_response(200, token_body(expires_in=expires_in) | {"expires_in": expires_in}),
                             now=NOW)
    assert info.value.reason == "bad_expires_in"


def test_access_token_claims_nested_past_the_parsers_depth_are_unreadable():
    access = f"{fake_jwt().split('.')[0]}.{invoiced.b64url.encode(DEEP)}.c2ln"
    with pytest.raises(InvalidTokenResponseError) as info:
        parse_token_response(http_response(200, token_body(access_token=access)), now=NOW)
    assert info.value.reason == "not_jwt"


@pytest.mark.parametrize("claims", [b'{"sub": "tenant:1", "x": NaN}', b'{"sub": "tenant:1", "exp": 1e400}'])
def test_access_token_claims_that_are_not_strict_json_are_unreadable(claims):
    access = f"{fake_jwt().split('.')[0]}.{invoiced.b64url.encode(claims)}.c2ln"
    with pytest.raises(InvalidTokenResponseError) as info:
        parse_token_response(http_response(200, token_body(access_token=access)), now=NOW)
    assert info.value.reason == "not_jwt"


@pytest.mark.parametrize(("company_id", "read"), [(167, "167"), ("167", "167"), (True, ""), (1.5, ""),
                                                  ({"id": 1}, ""), ([167], ""), (None, "")])
def test_the_company_id_is_read_only_from_an_integer_or_a_string(company_id, read):
    body = {"id": company_id, "name": "Acme"}
    client, _ = client_with(ScriptedSession(http_response(200, body)))
    assert client.current_company("at").id == read


@pytest.mark.parametrize("body", [DEEP, b'{"id": NaN, "name": "Acme"}', b'{"id": 1e400, "name": "Acme"}'])
def test_a_company_body_that_is_not_strict_json_is_an_api_error(body):
    client, _ = client_with(ScriptedSession(http_response(200, body)))
    with pytest.raises(invoiced.ApiError) as info:
        client.current_company("at")
    assert info.value.status == 200
