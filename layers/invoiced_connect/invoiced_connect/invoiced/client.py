"""Invoiced's OAuth 2.0 endpoints and the one API call the connect flow needs.

Every request has a timeout and none is retried by the transport: a token
request that reached Invoiced may have rotated the refresh token, so sending
it again blindly could revoke the connection. Failures become typed errors
that say what the caller may do next:

* :class:`InvalidGrantError`: the code or refresh token is dead; retrying is
  pointless (for a refresh token: the user must reconnect, unless another
  refresher already rotated it).
* :class:`ClientAuthError`: the client id or secret is wrong (or rotated).
* :class:`TransientError`: try again later (5xx, 429, HTML, connect failures).
* :class:`UnknownOutcomeError`: the request was sent and the answer was lost;
  Invoiced may have acted on it.
* :class:`RequestRejectedError`: Invoiced refused the request itself
  (unsupported grant, bad scope, PKCE mismatch); a bug or a configuration
  error, not worth retrying.
* :class:`InvalidTokenResponseError`: a 200 whose body is not a usable token
  response.

Invoiced answers errors in two shapes (``{"type","message"}`` from its own
wrapper, and stock league/oauth2-server's ``{"error","error_description",..}``);
both are understood. See ``shared/reference/invoiced-provider.md``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from invoiced_connect.core import b64url, strict_json
from invoiced_connect.core.models import Company, TokenSet

if TYPE_CHECKING:
    import requests


# ``requests`` is imported on first use, not here: building the authorize URL
# (all that GET /connect needs from this module) must not pay for it at cold
# start.

# Invoiced's wrapper reports every token-endpoint failure as a 400 with one of
# these fixed texts and no error code, so the text is the only signal.
MSG_CLIENT_AUTH = "Client authentication failed"
MSG_REFRESH_INVALID = "The refresh token is invalid."
MSG_MALFORMED = (
    "The request is missing a required parameter, includes an invalid parameter value, "
    "includes a parameter more than once, or is otherwise malformed."
)
MSG_PKCE = "Failed to verify `code_verifier`."
MSG_UNSUPPORTED_GRANT = "The authorization grant type is not supported by the authorization server."
MSG_BAD_SCOPE = "The requested scope is invalid, unknown, or malformed"

_TENANT_SUBJECT = re.compile(r"tenant:[0-9]{1,20}")

GRANT_CODE = "authorization_code"
GRANT_REFRESH = "refresh_token"


class InvoicedError(Exception):
    """Base of every error from talking to Invoiced. Never carries a token."""

    retryable = False

    def __init__(self, message: str, *, status: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason or type(self).__name__


class InvalidGrantError(InvoicedError):
    """The authorization code or refresh token is no longer valid."""


class ClientAuthError(InvoicedError):
    """Invoiced did not accept the client id and secret."""


class RequestRejectedError(InvoicedError):
    """Invoiced refused the request as such (configuration or bug)."""


class TransientError(InvoicedError):
    """Try again later; Invoiced did not act on the request (as far as we know)."""

    retryable = True


class UnknownOutcomeError(TransientError):
    """The request was sent but its answer was lost: Invoiced may have acted."""


class InvalidTokenResponseError(InvoicedError):
    """A successful status with a body that is not a usable token response."""


class ApiError(InvoicedError):
    """A REST API call failed."""


def _json_body(response: requests.Response) -> Any:
    """The body as strict JSON (see core/strict_json.py), or ``None``."""
    try:
        return strict_json.loads(response.content)
    except ValueError:
        return None


def classify_token_error(response: requests.Response, grant_type: str) -> InvoicedError:
    """Turn a non-200 token-endpoint response into the right typed error."""
    status = response.status_code
    body = _json_body(response)
    if status == 429 or status >= 500:
        return TransientError(f"Invoiced answered {status}", status=status, reason=f"http_{status}")
    if not isinstance(body, dict):
        return TransientError(
            f"Invoiced answered {status} without a JSON body", status=status, reason="non_json"
        )
    if "error" in body:  # stock league/oauth2-server shape
        code = body["error"]
        if not isinstance(code, str):
            return RequestRejectedError("Invoiced rejected the request", status=status, reason="rejected")
        if code == "invalid_client":
            return ClientAuthError("client authentication failed", status=status, reason="invalid_client")
        if code == "invalid_grant":
            return InvalidGrantError("the grant is invalid", status=status, reason="invalid_grant")
        if code == "invalid_request" and (status == 401 or grant_type == GRANT_CODE):
            # league 8.x reports a revoked refresh token as invalid_request/401
            # and a bad code as invalid_request/400.
            return InvalidGrantError("the grant is invalid", status=status, reason="invalid_request")
        if code in ("server_error", "temporarily_unavailable"):
            return TransientError(f"Invoiced reported {code}", status=status, reason=code)
        return RequestRejectedError(f"Invoiced rejected the request ({code})", status=status, reason=code)
    message = body.get("message")
    if message == MSG_CLIENT_AUTH:
        return ClientAuthError("client authentication failed", status=status, reason="invalid_client")
    if message == MSG_REFRESH_INVALID:
        return InvalidGrantError("the refresh token is invalid", status=status, reason="refresh_token_invalid")
    if grant_type == GRANT_CODE and message in (MSG_MALFORMED, MSG_PKCE):
        # For a code exchange these mean: expired, reused or foreign code,
        # or a verifier that does not match: this flow cannot use the code again.
        return InvalidGrantError("the authorization code is invalid", status=status, reason="code_invalid")
    if body.get("type") in ("rate_limit_error", "api_error"):
        return TransientError("Invoiced is busy", status=status, reason=str(body["type"]))
    return RequestRejectedError("Invoiced rejected the request", status=status, reason="rejected")


def _jwt_claims(token: str) -> dict[str, Any]:
    """Read a JWT's claims without verifying it.

    The token came straight from Invoiced's token endpoint over TLS; its
    claims are used only to learn which company it is for, never to
    authorize anything.
    """
    parts = token.split(".")
    if len(parts) != 3:
        raise InvalidTokenResponseError("access token is not a JWT", reason="not_jwt")
    try:
        claims = strict_json.loads(b64url.decode(parts[1]))
    except ValueError as exc:
        raise InvalidTokenResponseError("access token claims are unreadable", reason="not_jwt") from exc
    if not isinstance(claims, dict):
        raise InvalidTokenResponseError("access token claims are unreadable", reason="not_jwt")
    return claims


def tenant_from_access_token(token: str) -> tuple[str, tuple[str, ...]]:
    """The company (``sub`` = ``tenant:<id>``) and scopes an access token is for."""
    claims = _jwt_claims(token)
    subject = claims.get("sub")
    if not isinstance(subject, str) or not _TENANT_SUBJECT.fullmatch(subject):
        raise InvalidTokenResponseError(
            "the access token is not for a company (was a company scope requested?)",
            reason="no_tenant",
        )
    scopes = claims.get("scopes", [])
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        raise InvalidTokenResponseError("access token scopes are malformed", reason="bad_scopes")
    return subject[7:], tuple(scopes)


def parse_token_response(response: requests.Response, *, now: float | None = None) -> TokenSet:
    """Strictly parse a 200 token response; anything off is an error, never a partial result."""
    body = _json_body(response)
    if not isinstance(body, dict):
        raise InvalidTokenResponseError("token response is not a JSON object", status=response.status_code, reason="not_json")
    access, refresh = body.get("access_token"), body.get("refresh_token")
    expires_in, token_type = body.get("expires_in"), body.get("token_type")
    if not isinstance(access, str) or not access:
        raise InvalidTokenResponseError("token response has no access_token", reason="missing_access_token")
    if not isinstance(refresh, str) or not refresh:
        raise InvalidTokenResponseError("token response has no refresh_token", reason="missing_refresh_token")
    if isinstance(expires_in, bool) or not isinstance(expires_in, int) or not 0 < expires_in <= 86400 * 366:
        raise InvalidTokenResponseError("token response has no valid expires_in", reason="bad_expires_in")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise InvalidTokenResponseError("token response is not a Bearer token", reason="bad_token_type")
    tenant_id, scopes = tenant_from_access_token(access)
    issued = time.time() if now is None else now
    return TokenSet(
        access_token=access,
        refresh_token=refresh,
        expires_at=int(issued + expires_in),
        tenant_id=tenant_id,
        scopes=scopes,
        lifetime=expires_in,
    )


def no_retry_session() -> requests.Session:
    """A session whose transport never retries: retrying is each caller's decision.

    requests' default adapter already makes no retries; this says so
    explicitly, because a silently retried token request can revoke a connection.
    """
    import requests
    from requests.adapters import HTTPAdapter

    session = requests.Session()
    adapter = HTTPAdapter(max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


def was_not_sent(exc: requests.RequestException) -> bool:
    """True when the request never reached Invoiced (safe to say 'transient')."""
    import requests
    from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

    if isinstance(exc, requests.ConnectTimeout):
        return True
    if isinstance(exc, requests.ConnectionError):
        cause = exc.args[0] if exc.args else None
        reason = getattr(cause, "reason", cause)
        return isinstance(reason, (NewConnectionError, ConnectTimeoutError))
    return False


class InvoicedClient:
    """Talks to one Invoiced environment (production or sandbox).

    ``client_secret`` is a callable ``(force: bool) -> str`` so the secret is
    read only when needed and can be re-read once when Invoiced says client
    authentication failed (the secret may have been rotated).
    """

    def __init__(
        self,
        *,
        base_url: str,
        api_url: str,
        client_id: str,
        client_secret: Callable[[bool], str] | None = None,
        timeout: float = 10.0,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_url = api_url.rstrip("/")
        self.client_id = client_id
        self._client_secret = client_secret
        self._timeout = (min(3.05, timeout), timeout)
        self._own_session = session
        #: When a token response arrived: its ``expires_in`` counts from then.
        self._clock = clock

    @property
    def _session(self) -> requests.Session:
        """The HTTP session, made on the first request (see the note on imports)."""
        if self._own_session is None:
            self._own_session = no_retry_session()
        return self._own_session

    # ---------------------------------------------------------------- authorize
    def authorize_url(self, *, redirect_uri: str, scope: str, state: str, code_challenge: str) -> str:
        query = urlencode(
            {
                "response_type": "code",
                "client_id": self.client_id,
                "redirect_uri": redirect_uri,
                "scope": scope,
                "state": state,
                "code_challenge": code_challenge,
                "code_challenge_method": "S256",
            }
        )
        return f"{self.base_url}/oauth/authorize?{query}"

    # ---------------------------------------------------------------- token endpoint
    def exchange_code(self, *, code: str, redirect_uri: str, code_verifier: str) -> TokenSet:
        """Trade an authorization code for tokens. Sent once; never retried."""
        return self._token_request(
            {"grant_type": GRANT_CODE, "code": code, "redirect_uri": redirect_uri, "code_verifier": code_verifier}
        )

    def refresh(self, refresh_token: str) -> TokenSet:
        """Trade a refresh token for a new pair. Invoiced revokes the old pair at once."""
        return self._token_request({"grant_type": GRANT_REFRESH, "refresh_token": refresh_token})

    def _token_request(self, form: dict[str, str]) -> TokenSet:
        if self._client_secret is None:
            raise ClientAuthError("no client secret configured", reason="no_secret")
        secret = self._client_secret(False)
        try:
            return self._post_token(form, secret)
        except ClientAuthError:
            # Client authentication fails before Invoiced looks at the grant,
            # so one retry with a freshly read secret cannot spend the grant.
            fresh = self._client_secret(True)
            if fresh == secret:
                raise
            return self._post_token(form, fresh)

    def _post_token(self, form: dict[str, str], secret: str) -> TokenSet:
        import requests

        data = {**form, "client_id": self.client_id, "client_secret": secret}
        try:
            response = self._session.post(
                f"{self.base_url}/oauth/access_token",
                data=data,
                headers={"Accept": "application/json"},
                timeout=self._timeout,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            if was_not_sent(exc):
                raise TransientError("could not reach Invoiced", reason="connect_failed") from None
            raise UnknownOutcomeError(
                "the token request was sent but no complete answer came back", reason=type(exc).__name__
            ) from None
        if response.status_code != 200:
            raise classify_token_error(response, form["grant_type"])
        try:
            return parse_token_response(response, now=self._clock())
        except InvalidTokenResponseError as exc:
            if exc.reason == "not_json":
                # A 200 whose body is cut off: Invoiced has committed the
                # grant, but we did not get the new tokens.
                raise UnknownOutcomeError("the token response was incomplete", status=200, reason="truncated") from None
            raise

    # ---------------------------------------------------------------- revoke
    def revoke(self, access_token: str, *, timeout: float | None = None) -> None:
        """Revoke an access token (and with it its refresh token)."""
        import requests

        try:
            response = self._session.post(
                f"{self.base_url}/oauth/revoke", data={"token": access_token},
                timeout=self._timeout if timeout is None else (min(3.05, timeout), timeout),
            )
        except requests.RequestException as exc:
            raise TransientError("could not reach Invoiced", reason=type(exc).__name__) from None
        if response.status_code not in (200, 204):
            if response.status_code == 429 or response.status_code >= 500:
                raise TransientError(f"revoke answered {response.status_code}", status=response.status_code)
            raise RequestRejectedError(f"revoke answered {response.status_code}", status=response.status_code)

    # ---------------------------------------------------------------- REST API
    def token_accepted(self, access_token: str, *, api_url: str | None = None) -> bool:
        """Whether the API accepts ``access_token`` now: one ``GET /companies/current``.

        ``True`` on 2xx, ``False`` on 401; anything else (no answer, 429,
        5xx, another status) cannot tell and raises :class:`TransientError`.
        """
        import requests

        try:
            response = self._session.get(
                f"{(api_url or self.api_url).rstrip('/')}/companies/current",
                headers={"Authorization": f"Bearer {access_token}", "Accept": "application/json"},
                timeout=self._timeout,
            )
        except requests.RequestException as exc:
            raise TransientError("could not reach the Invoiced API", reason=type(exc).__name__) from None
        if 200 <= response.status_code < 300:
            return True
        if response.status_code == 401:
            return False
        raise TransientError(f"companies/current answered {response.status_code}", status=response.status_code,
                             reason=f"status_{response.status_code}")

    def current_company(self, access_token: str, *, timeout: float | None = None) -> Company:
        """``GET /companies/current``: the company the token is for."""
        import requests

        try:
            response = self._session.get(
                f"{self.api_url}/companies/current",
                headers={"Authorization": f"Bearer {access_token}", "Accept": "application/json"},
                timeout=self._timeout if timeout is None else (min(3.05, timeout), timeout),
            )
        except requests.RequestException as exc:
            raise TransientError("could not reach the Invoiced API", reason=type(exc).__name__) from None
        body = _json_body(response)
        if response.status_code != 200 or not isinstance(body, dict):
            error = TransientError if response.status_code == 429 or response.status_code >= 500 else ApiError
            raise error(f"companies/current answered {response.status_code}", status=response.status_code)
        name = body.get("name")
        company_id = body.get("id")
        if type(company_id) is int:
            company_id = str(company_id)
        return Company(id=company_id if isinstance(company_id, str) else "", name=name if isinstance(name, str) else "")
