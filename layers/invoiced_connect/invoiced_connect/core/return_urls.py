"""Post-connect return URLs: only exact, allowlisted destinations.

An allowlist entry is an origin with an optional path prefix, for example
``https://app.example.com/settings/integrations``. A return URL matches when
its scheme, host and port equal the entry's and its path is the prefix or
lies below it at a ``/`` boundary. Anything a browser might read differently
from Python (backslashes, control characters, user info, non-ASCII hosts,
scheme-relative or scheme-only forms) is refused before matching.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_RETURN_URL_LENGTH = 2048

# Printable ASCII without space, backslash, quotes and angle brackets.
_SAFE_URL = re.compile(r"^[!#-&(-;=?-\[\]-~]+$")
_HOST = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})


class ReturnUrlError(ValueError):
    """A return URL (or allowlist entry) is not acceptable."""


@dataclass(frozen=True)
class _Parsed:
    scheme: str
    host: str
    port: int
    path: str


def _parse(url: str) -> _Parsed:
    if not isinstance(url, str) or not url:
        raise ReturnUrlError("return URL is empty")
    if len(url) > MAX_RETURN_URL_LENGTH:
        raise ReturnUrlError("return URL is too long")
    if not _SAFE_URL.fullmatch(url):
        raise ReturnUrlError("return URL contains characters that are not allowed")
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http"):
        raise ReturnUrlError("return URL must be an absolute https URL")
    if not url.lower().startswith(f"{parts.scheme}://"):
        raise ReturnUrlError("return URL must be an absolute https URL")
    if "@" in parts.netloc:
        raise ReturnUrlError("return URL must not contain user information")
    if "%" in parts.netloc:
        raise ReturnUrlError("return URL host must not be percent-encoded")
    host = (parts.hostname or "").lower()
    if not host or not (_HOST.fullmatch(host) or host in _LOOPBACK_HOSTS):
        raise ReturnUrlError("return URL has no valid host")
    if parts.scheme == "http" and host not in _LOOPBACK_HOSTS:
        raise ReturnUrlError("return URL must use https")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise ReturnUrlError("return URL has an invalid port") from exc
    path = parts.path or "/"
    if re.search(r"%(2e|2f|5c)", path, re.IGNORECASE):
        # Browsers decode these before resolving "..": they could climb out
        # of an allowlisted path prefix.
        raise ReturnUrlError("return URL path must not percent-encode dots or slashes")
    if "//" in path or "/./" in path or "/../" in path or path.endswith(("/..", "/.")):
        raise ReturnUrlError("return URL path is not canonical")
    return _Parsed(parts.scheme, host, port, path)


def validate_allowlist_entry(entry: str) -> None:
    """Raise :class:`ReturnUrlError` (a ``ValueError``) for a malformed entry."""
    _parse(entry)
    parts = urlsplit(entry)
    if parts.query or parts.fragment:
        raise ReturnUrlError(f"allowlist entry {entry!r} must not have a query or fragment")


def check_return_url(url: str, allowlist: tuple[str, ...] | list[str]) -> str:
    """Return ``url`` unchanged if it is allowed, else raise :class:`ReturnUrlError`."""
    candidate = _parse(url)
    if urlsplit(url).fragment:
        raise ReturnUrlError("return URL must not have a fragment")
    for entry in allowlist:
        allowed = _parse(entry)
        if (candidate.scheme, candidate.host, candidate.port) != (allowed.scheme, allowed.host, allowed.port):
            continue
        prefix = allowed.path.rstrip("/")
        if not prefix or candidate.path == prefix or candidate.path.startswith(prefix + "/"):
            return url
    allowed = ", ".join(allowlist) if allowlist else "nothing (RETURN_URL_ALLOWLIST is empty)"
    raise ReturnUrlError(f"return URL is not in the allowlist; allowed: {allowed}")
