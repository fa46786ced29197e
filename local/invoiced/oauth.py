"""The authorization server's rules and state: codes, refresh tokens, access
tokens. No HTTP here; the WSGI layer translates requests into these calls.

One lock guards all grant state, and every check-then-change (redeeming a
code, rotating a refresh token) happens inside it: that is what makes exactly
one of N concurrent refreshes with the same token win.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from .errors import (
    ACCESS_DENIED,
    INVALID_CLIENT,
    INVALID_REFRESH_TOKEN,
    INVALID_SCOPE,
    PKCE_FAILED,
    UNSUPPORTED_GRANT_TYPE,
    OAuthError,
)
from .models import Company
from .signing import RS256Signer

COMPANY_SCOPES = frozenset({"read", "read_write", "accounts_receivable"})
VALID_SCOPES = COMPANY_SCOPES | {"openid"}
REFRESH_TOKEN_TTL = 365 * 86_400
#: How long a rendered consent page stays submittable.
CONSENT_TTL = 3_600
#: The signed-in local user; an openid-only grant is about them, not a company.
LOCAL_USER_ID = 1001
_PKCE_RE = re.compile(r"[A-Za-z0-9\-._~]{43,128}")
#: What the consent page calls the application when no name was given.
DEFAULT_CLIENT_NAME = "Your application"
_LOOPBACK_HOSTS = ("127.0.0.1", "::1")  # as urlsplit().hostname spells them
# league's tokens are encrypted payloads with this prefix; ours are random but look alike.
_OPAQUE_PREFIX = "def50200"


def _opaque(n_bytes: int) -> str:
    return _OPAQUE_PREFIX + secrets.token_hex(n_bytes)


def _loopback_key(uri: str) -> tuple[str | None, str, str, str] | None:
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 - only to reject a malformed or out-of-range port
    except ValueError:  # e.g. "http://[::1/cb" or port 99999
        return None
    if parts.scheme != "http" or "@" in parts.netloc or parts.hostname not in _LOOPBACK_HOSTS:
        return None
    return parts.hostname, parts.path, parts.query, parts.fragment


def redirect_uri_matches(registered: str, requested: str) -> bool:
    """Invoiced's rule: exact string equality, except loopback IP literals over
    http, which match a registered loopback URI on any port (RFC 8252 s7.3)."""
    if registered == requested:
        return True
    key = _loopback_key(requested)
    return key is not None and key == _loopback_key(registered)


def add_query(uri: str, params: Sequence[tuple[str, str]]) -> str:
    """Append ``params`` to ``uri`` with ``?`` or ``&`` as the URI needs (form-encoded: spaces are ``+``)."""
    return f"{uri}{'&' if '?' in uri else '?'}{urlencode(params)}"


@dataclass(frozen=True)
class OAuthClient:
    """The single registered OAuth application (always confidential).

    ``name`` is the application name entered when registering it; the consent
    page shows it to the user.
    """

    client_id: str
    client_secret: str
    redirect_uris: tuple[str, ...]
    name: str = DEFAULT_CLIENT_NAME

    def accepts_redirect(self, uri: str) -> bool:
        return any(redirect_uri_matches(registered, uri) for registered in self.redirect_uris)


@dataclass(frozen=True)
class AuthorizationRequest:
    """A validated `GET /oauth/authorize`, waiting for the user's decision."""

    client_id: str
    redirect_uri: str
    #: As sent; None when the client leaned on its single registered URI.
    redirect_uri_param: str | None
    scopes: tuple[str, ...]
    state: str | None
    code_challenge: str | None
    code_challenge_method: str | None

    @property
    def needs_company(self) -> bool:
        return any(scope in COMPANY_SCOPES for scope in self.scopes)


@dataclass(frozen=True)
class _Code:
    request: AuthorizationRequest
    subject: str
    expires_at: float


@dataclass(frozen=True)
class _Refresh:
    client_id: str
    scopes: tuple[str, ...]
    subject: str
    access_jti: str
    expires_at: float


@dataclass(frozen=True)
class AccessGrant:
    """What a live access token stands for."""

    jti: str
    client_id: str
    scopes: tuple[str, ...]
    subject: str
    expires_at: float
    refresh_token: str

    @property
    def company_id(self) -> int | None:
        kind, _, ident = self.subject.partition(":")
        return int(ident) if kind == "tenant" else None


@dataclass(frozen=True)
class IssuedTokens:
    """A successful token response."""

    access_token: str
    refresh_token: str
    expires_in: int

    def as_json(self) -> dict[str, Any]:
        # Invoiced sends no `scope` field; clients must not expect one.
        return {"token_type": "Bearer", "expires_in": self.expires_in,
                "access_token": self.access_token, "refresh_token": self.refresh_token}


def _parse_scopes(raw: str | None) -> tuple[str, ...]:
    scopes: list[str] = []
    for scope in (raw or "").split(" "):
        if not scope:
            continue
        if scope not in VALID_SCOPES:
            raise OAuthError(INVALID_SCOPE, f"Check the `{scope}` scope")
        if scope not in scopes:
            scopes.append(scope)
    if not scopes:
        # league 8 refuses an empty scope unless a default is configured; Invoiced has none.
        raise OAuthError(INVALID_SCOPE, "Specify a scope in the request or set a default scope")
    return tuple(scopes)


def _pkce_matches(method: str, challenge: str, verifier: str) -> bool:
    if method == "S256":
        digest = hashlib.sha256(verifier.encode("ascii")).digest()
        computed = base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")
    else:
        computed = verifier
    return hmac.compare_digest(computed, challenge)


class AuthorizationServer:
    """Invoiced's authorization code and refresh token grants, in memory."""

    def __init__(self, *, client: OAuthClient, companies: Sequence[Company], signer: RS256Signer,
                 clock: Callable[[], float], access_token_ttl: int, code_ttl: int) -> None:
        self.client = client
        self.companies = {company.id: company for company in companies}
        self._signer = signer
        self._clock = clock
        self._access_token_ttl = access_token_ttl
        self._code_ttl = code_ttl
        self._lock = threading.Lock()
        self._pending: dict[str, tuple[AuthorizationRequest, float]] = {}
        self._codes: dict[str, _Code] = {}
        self._refresh: dict[str, _Refresh] = {}
        self._access: dict[str, AccessGrant] = {}
        # Remembered so a replayed token gets league's "revoked" hint, not "cannot decrypt".
        self._retired_refresh: set[str] = set()

    # -- authorize -----------------------------------------------------------------

    def validate_authorization_request(self, query: Mapping[str, str]) -> AuthorizationRequest:
        """Check a `GET /oauth/authorize` query the way league 8.5 does, in its order."""
        if query.get("response_type") != "code":
            raise OAuthError(UNSUPPORTED_GRANT_TYPE, "Check that all required parameters have been provided")
        client_id = query.get("client_id")
        if not client_id:
            raise OAuthError.invalid_request("client_id")
        if not hmac.compare_digest(client_id.encode(), self.client.client_id.encode()):
            raise OAuthError(INVALID_CLIENT, f"Unknown client `{client_id}`")
        redirect_param = query.get("redirect_uri")
        if redirect_param is not None:
            if not self.client.accepts_redirect(redirect_param):
                raise OAuthError(INVALID_CLIENT, f"The redirect URI `{redirect_param}` is not registered")
            redirect_uri = redirect_param
        elif len(self.client.redirect_uris) == 1:
            redirect_uri = self.client.redirect_uris[0]
        else:
            raise OAuthError(INVALID_CLIENT, "Several redirect URIs are registered; send `redirect_uri`")
        scopes = _parse_scopes(query.get("scope"))
        challenge = query.get("code_challenge")
        method = None
        if challenge is not None:
            method = query.get("code_challenge_method", "plain")
            if method not in ("S256", "plain"):
                raise OAuthError.invalid_request(
                    "code_challenge_method", "Code challenge method must be one of `S256`, `plain`")
            if not _PKCE_RE.fullmatch(challenge):
                raise OAuthError.invalid_request(
                    "code_challenge", "Code challenge must follow the specifications of RFC-7636.")
        return AuthorizationRequest(client_id=client_id, redirect_uri=redirect_uri,
                                    redirect_uri_param=redirect_param, scopes=scopes,
                                    state=query.get("state"), code_challenge=challenge,
                                    code_challenge_method=method)

    def hold_for_consent(self, request: AuthorizationRequest) -> str:
        """Park ``request`` server side; the consent form only carries the returned id."""
        pending_id = secrets.token_urlsafe(24)
        with self._lock:
            now = self._clock()
            # Pages nobody answers would otherwise pile up in a long `make run` session.
            for stale in [p for p, (_, until) in self._pending.items() if until < now]:
                del self._pending[stale]
            self._pending[pending_id] = (request, now + CONSENT_TTL)
        return pending_id

    def take_pending(self, pending_id: str) -> AuthorizationRequest | None:
        """The parked request (single use), or None if unknown, used or stale."""
        with self._lock:
            held = self._pending.pop(pending_id, None)
        if held is None or self._clock() > held[1]:
            return None
        return held[0]

    def approve(self, request: AuthorizationRequest, company_id: int | None) -> str:
        """Issue a code for ``request`` and return the redirect back to the client.

        Raises ValueError when a company scope was asked for and ``company_id``
        is not one of the user's companies.
        """
        if request.needs_company:
            if company_id not in self.companies:
                raise ValueError("Pick one of your companies")
            subject = f"tenant:{company_id}"
        else:
            subject = f"user:{LOCAL_USER_ID}"
        code = _opaque(344)
        with self._lock:
            now = self._clock()
            for stale in [c for c, grant in self._codes.items() if grant.expires_at < now]:
                del self._codes[stale]
            self._codes[code] = _Code(request, subject, now + self._code_ttl)
        params = [("code", code)]
        if request.state is not None:
            params.append(("state", request.state))
        return add_query(request.redirect_uri, params)

    @staticmethod
    def deny(request: AuthorizationRequest, style: str) -> str:
        """The redirect back to the client after the user clicks Deny."""
        params = [] if request.state is None else [("state", request.state)]
        if style == "league":
            params += [("error", ACCESS_DENIED.error), ("error_description", ACCESS_DENIED.league_message),
                       ("hint", "The user denied the request"), ("message", ACCESS_DENIED.league_message)]
        else:
            # Invoiced-specific: no `error` parameter at all.
            params.append(("error_description", ACCESS_DENIED.invoiced_message))
        return add_query(request.redirect_uri, params)

    # -- token endpoint ----------------------------------------------------------

    def exchange(self, form: Mapping[str, str], basic: tuple[str, str] | None) -> IssuedTokens:
        """Handle a `POST /oauth/access_token` body; raises OAuthError on refusal."""
        grant_type = form.get("grant_type")
        if grant_type == "authorization_code":
            return self._redeem_code(form, basic)
        if grant_type == "refresh_token":
            return self._rotate(form, basic)
        raise OAuthError(UNSUPPORTED_GRANT_TYPE, "Check that all required parameters have been provided")

    def _authenticate_client(self, form: Mapping[str, str], basic: tuple[str, str] | None) -> None:
        # league reads body parameters first and falls back to HTTP Basic.
        client_id = form.get("client_id", basic[0] if basic else None)
        secret = form.get("client_secret", basic[1] if basic else None)
        if not client_id:
            raise OAuthError.invalid_request("client_id")
        if not (hmac.compare_digest(client_id.encode(), self.client.client_id.encode())
                and secret is not None
                and hmac.compare_digest(secret.encode(), self.client.client_secret.encode())):
            raise OAuthError(INVALID_CLIENT)
        redirect_uri = form.get("redirect_uri")
        if redirect_uri is not None and not self.client.accepts_redirect(redirect_uri):
            raise OAuthError(INVALID_CLIENT)

    def _redeem_code(self, form: Mapping[str, str], basic: tuple[str, str] | None) -> IssuedTokens:
        self._authenticate_client(form, basic)
        code = form.get("code")
        if not code:
            raise OAuthError.invalid_request("code")
        verifier = form.get("code_verifier")
        with self._lock:
            grant = self._codes.get(code)
            if grant is None:
                raise OAuthError.invalid_request("code", "Cannot decrypt the authorization code")
            request = grant.request
            if self._clock() > grant.expires_at:
                raise OAuthError.invalid_request("code", "Authorization code has expired")
            if request.client_id != self.client.client_id:
                raise OAuthError.invalid_request("code", "Authorization code was not issued to this client")
            if request.redirect_uri_param is not None:
                if form.get("redirect_uri") is None:
                    raise OAuthError.invalid_request("redirect_uri")
                if form["redirect_uri"] != request.redirect_uri_param:
                    raise OAuthError.invalid_request("redirect_uri", "Invalid redirect URI")
            if request.code_challenge is not None:
                assert request.code_challenge_method is not None
                if (verifier is None or not _PKCE_RE.fullmatch(verifier)
                        or not _pkce_matches(request.code_challenge_method, request.code_challenge, verifier)):
                    raise OAuthError(PKCE_FAILED, "Failed to verify `code_verifier`.")
            elif verifier is not None:
                raise OAuthError.invalid_request("code_verifier", "Unexpected code_verifier")
            # A failed attempt leaves the code usable (as league does); only success burns it.
            del self._codes[code]
            return self._issue_locked(request.client_id, request.scopes, grant.subject)

    def _rotate(self, form: Mapping[str, str], basic: tuple[str, str] | None) -> IssuedTokens:
        self._authenticate_client(form, basic)
        token = form.get("refresh_token")
        if not token:
            raise OAuthError.invalid_request("refresh_token")
        with self._lock:
            old = self._refresh.get(token)
            if old is None:
                known = token in self._retired_refresh
                raise OAuthError(INVALID_REFRESH_TOKEN,
                                 "Token has been revoked" if known else "Cannot decrypt the refresh token")
            if old.client_id != self.client.client_id:
                raise OAuthError(INVALID_REFRESH_TOKEN, "Token is not linked to client")
            if self._clock() > old.expires_at:
                raise OAuthError(INVALID_REFRESH_TOKEN, "Token has expired")
            scopes = old.scopes
            if "scope" in form:
                scopes = _parse_scopes(form["scope"])
                for scope in scopes:
                    if scope not in old.scopes:
                        raise OAuthError(INVALID_SCOPE, f"Check the `{scope}` scope")
            # Strict rotation, no grace period: the old pair dies in the same locked step that
            # mints the new one, so of N concurrent refreshes exactly one finds the token alive.
            issued = self._issue_locked(old.client_id, scopes, old.subject)
            self._revoke_locked(token)
            return issued

    def _issue_locked(self, client_id: str, scopes: tuple[str, ...], subject: str) -> IssuedTokens:
        now = self._clock()
        jti = secrets.token_hex(40)
        expires_at = int(now + self._access_token_ttl)
        # lcobucci/jwt writes iat/nbf with microseconds, so clients see floats there.
        access_token = self._signer.sign({
            "aud": client_id, "jti": jti, "iat": round(now, 6), "nbf": round(now, 6),
            "exp": expires_at, "sub": subject, "scopes": list(scopes),
        })
        refresh_token = _opaque(496)
        self._access[jti] = AccessGrant(jti, client_id, scopes, subject, expires_at, refresh_token)
        self._refresh[refresh_token] = _Refresh(client_id, scopes, subject, jti, now + REFRESH_TOKEN_TTL)
        return IssuedTokens(access_token, refresh_token, self._access_token_ttl)

    def _revoke_locked(self, refresh_token: str) -> None:
        grant = self._refresh.pop(refresh_token, None)
        self._retired_refresh.add(refresh_token)
        if grant is not None:
            self._access.pop(grant.access_jti, None)

    # -- revoke and resource access ------------------------------------------------

    def revoke(self, token: str) -> None:
        """`POST /oauth/revoke`: kill an access token and its refresh token.

        A refresh token is accepted too (RFC 7009); unknown tokens are ignored.
        """
        claims = self._signer.verify(token)
        with self._lock:
            if claims is not None:
                grant = self._access.get(str(claims.get("jti")))
                if grant is not None:
                    self._revoke_locked(grant.refresh_token)
                    self._access.pop(grant.jti, None)
            elif token in self._refresh:
                self._revoke_locked(token)

    def authenticate_bearer(self, token: str) -> AccessGrant | None:
        """The grant behind a live access token, or None if forged, expired or revoked."""
        claims = self._signer.verify(token)
        if claims is None:
            return None
        now = self._clock()
        with self._lock:
            grant = self._access.get(str(claims.get("jti")))
        if grant is None or now >= grant.expires_at:
            return None
        nbf = claims.get("nbf")
        # A minute of leeway, like the resource server's clock-skew allowance.
        if not isinstance(nbf, (int, float)) or now + 60 < nbf:
            return None
        return grant

    def live_grant_count(self, company_id: int) -> int:
        """How many unexpired, unrevoked access tokens ``company_id`` has granted."""
        now = self._clock()
        with self._lock:
            return sum(1 for g in self._access.values() if g.company_id == company_id and now < g.expires_at)

    def is_refresh_token_valid(self, token: str) -> bool:
        """Whether ``token`` would be accepted by a refresh right now."""
        with self._lock:
            grant = self._refresh.get(token)
        return grant is not None and self._clock() <= grant.expires_at
