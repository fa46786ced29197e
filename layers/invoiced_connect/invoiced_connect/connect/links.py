"""Signed, expiring connect links.

The integrating app decides which of its customers a connection belongs to;
the browser must not. So a connect link carries the connection id (and an
optional return URL) in a payload signed with HMAC-SHA256 under a key kept in
Secrets Manager, and ``GET /connect`` accepts nothing else.

Each link carries a random id and can complete one connection: the callback
records the id when it exchanges the code, so a forwarded or leaked link is
worth nothing once used.

Token format: ``v1.<base64url(JSON payload)>.<base64url(HMAC)>``. The signing
secret holds ``{"current": key, "previous": key?}``: links are signed with
``current`` and verified with either, so the key can be rotated without
breaking links already handed out.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass, field
from datetime import timedelta
from urllib.parse import urlencode

from invoiced_connect.core import b64url, strict_json
from invoiced_connect.core.models import InvalidConnectionId, validate_connection_id
from invoiced_connect.core.return_urls import ReturnUrlError, check_return_url

VERSION = "v1"
MIN_TTL = timedelta(seconds=60)
DEFAULT_TTL = timedelta(hours=1)
MAX_TTL = timedelta(days=30)
MAX_TOKEN_LENGTH = 4096
MIN_KEY_LENGTH = 32


class LinkError(ValueError):
    """A connect link is malformed, unsigned, tampered with or expired."""


class LinkMalformed(LinkError):
    """Not a connect link of this service: cut short, mangled, or not one at all."""


class LinkSignatureError(LinkError):
    """No key in hand verifies the signature (tampered, foreign, or signed
    with a key this process has not read yet)."""


class LinkExpired(LinkError):
    """A genuine link (its signature verified) past its expiry; ``claims``
    are what it carried, so a page can still offer its return URL."""

    def __init__(self, claims: LinkClaims) -> None:
        super().__init__("the connect link has expired")
        self.claims = claims


@dataclass(frozen=True)
class LinkClaims:
    connection_id: str
    return_to: str | None
    expires_at: int
    link_id: str = field(default_factory=lambda: secrets.token_hex(16))
    #: A reconnect through this link may authorize another Invoiced company
    #: than the connection's (off by default: the app's records stay one company's).
    allow_company_change: bool = False


def _mac(key: str, signed_part: str) -> bytes:
    return hmac.new(key.encode("utf-8"), signed_part.encode("ascii"), hashlib.sha256).digest()


def usable_key(key: object) -> bool:
    return isinstance(key, str) and len(key) >= MIN_KEY_LENGTH


def _check_key(key: str) -> str:
    if not usable_key(key):
        raise ValueError(f"the link signing key must be at least {MIN_KEY_LENGTH} characters")
    return key


def sign_link_token(claims: LinkClaims, key: str) -> str:
    payload = {"cid": claims.connection_id, "exp": claims.expires_at, "jti": claims.link_id}
    if claims.return_to:
        payload["rt"] = claims.return_to
    if claims.allow_company_change:
        payload["acc"] = True
    body = b64url.encode(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode("utf-8"))
    signed_part = f"{VERSION}.{body}"
    return f"{signed_part}.{b64url.encode(_mac(_check_key(key), signed_part))}"


def verify_link_token(token: str, keys: list[str], *, now: float | None = None) -> LinkClaims:
    """Check signature (against any of ``keys``) and expiry; return the claims."""
    if not token or len(token) > MAX_TOKEN_LENGTH or not token.isascii() or token.count(".") != 2:
        raise LinkMalformed("the connect link is malformed")
    version, body, signature = token.split(".")
    if version != VERSION:
        raise LinkMalformed("the connect link is malformed")
    try:
        given = b64url.decode(signature)
    except ValueError as exc:
        raise LinkMalformed("the connect link is malformed") from exc
    if b64url.encode(given) != signature:
        # Only the canonical spelling: base64 decoding skips stray characters
        # and spare bits, which would make one signature readable many ways.
        raise LinkMalformed("the connect link is malformed")
    signed_part = f"{version}.{body}"
    if not any(hmac.compare_digest(_mac(_check_key(key), signed_part), given) for key in keys if key):
        raise LinkSignatureError("the connect link's signature is not valid")
    try:
        payload = strict_json.loads(b64url.decode(body))
        claims = LinkClaims(
            connection_id=validate_connection_id(payload["cid"]),
            return_to=payload.get("rt"),
            expires_at=strict_json.integer(payload["exp"]),
            link_id=payload["jti"],
            allow_company_change=payload.get("acc", False),
        )
    except (ValueError, KeyError, TypeError, InvalidConnectionId) as exc:
        raise LinkMalformed("the connect link is malformed") from exc
    if claims.return_to is not None and (not isinstance(claims.return_to, str) or not claims.return_to):
        raise LinkMalformed("the connect link is malformed")
    if not isinstance(claims.allow_company_change, bool):
        raise LinkMalformed("the connect link is malformed")
    if not isinstance(claims.link_id, str) or not 16 <= len(claims.link_id) <= 64:
        raise LinkMalformed("the connect link is malformed")
    if claims.expires_at <= (time.time() if now is None else now):
        raise LinkExpired(claims)
    return claims


def build_claims(
    connection_id: str,
    return_to: str | None,
    ttl: timedelta,
    allowlist: tuple[str, ...],
    *,
    now: float | None = None,
    allow_company_change: bool = False,
) -> LinkClaims:
    """Validate what a link will carry; raise ``ValueError`` subclasses on bad input."""
    validate_connection_id(connection_id)
    if return_to is not None:
        check_return_url(return_to, allowlist)
    if not MIN_TTL <= ttl <= MAX_TTL:
        raise LinkError(f"ttl must be between {int(MIN_TTL.total_seconds())} seconds and {MAX_TTL.days} days")
    issued = time.time() if now is None else now
    return LinkClaims(connection_id, return_to, int(issued + ttl.total_seconds()),
                      allow_company_change=allow_company_change)


def link_url(connect_url: str, token: str) -> str:
    return f"{connect_url}?{urlencode({'link': token})}"


__all__ = [
    "LinkClaims",
    "LinkError",
    "LinkExpired",
    "LinkMalformed",
    "LinkSignatureError",
    "ReturnUrlError",
    "build_claims",
    "link_url",
    "sign_link_token",
    "verify_link_token",
]
