"""Configuration: the only module that reads the environment.

Every value is read and validated once into a frozen :class:`Settings`; an
invalid or missing variable raises :class:`SettingsError` naming it, so a
misconfigured deployment fails with a sentence, not a stack trace.
"""

from __future__ import annotations

import ipaddress
import os
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from invoiced_connect.core.environments import api_url_for_issuer
from invoiced_connect.core.lifetimes import DEFAULT_REFRESH_WINDOW_SECONDS

DEFAULT_BASE_URL = "https://invoiced.com"
DEFAULT_API_URL = "https://api.invoiced.com"
DEFAULT_SCOPE = "read_write"
VALID_SCOPES = frozenset({"read", "read_write", "accounts_receivable"})
#: The pages' texts: the integrating app's name, and its support page or address.
MAX_APP_NAME_LENGTH = 60
MAX_SUPPORT_CONTACT_LENGTH = 200
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+")
# Printable ASCII without space, backslash, quotes and angle brackets.
_URL_CHARACTERS = re.compile(r"[!#-&(-;=?-\[\]-~]+")


class SettingsError(RuntimeError):
    """The environment does not describe a usable configuration."""


@dataclass(frozen=True)
class Settings:
    table_name: str
    kms_key_id: str
    invoiced_base_url: str
    invoiced_api_url: str
    client_id: str
    scope: str
    public_base_url: str
    return_url_allowlist: tuple[str, ...]
    link_signing_secret_arn: str | None
    client_secret_arn: str | None
    http_timeout: float
    event_bus_name: str | None = None
    connections_function_name: str | None = None
    tokens_function_name: str | None = None
    refresh_queue_url: str | None = None
    refresh_window_seconds: int = DEFAULT_REFRESH_WINDOW_SECONDS
    keepalive_seconds: int = 30 * 86400
    active_use_seconds: int = 24 * 3600
    #: At most one rotation per connection in this time when Invoiced rejects its stored token.
    rejected_token_window_seconds: int = 300
    #: How long after a lost answer a request of ours may still be in flight at
    #: Invoiced (``None``: derived from the HTTP timeout, at least 90 s).
    unknown_outcome_settle_seconds: int | None = None
    #: ``INVOICED_API_URL`` as set (``None`` when unset): a reader checks it against the
    #: connection's own environment instead of defaulting to production.
    configured_api_url: str | None = None
    #: How the connect pages name the integrating app ("Connect <app> to Invoiced"); ``None``: unnamed.
    app_name: str | None = None
    #: Shown on every error page: an https URL or an e-mail address.
    support_contact: str | None = None
    #: Where the pages' "Back to <app>" link leads when a link has no return URL (allowlisted).
    default_return_url: str | None = None

    @property
    def issuer(self) -> str:
        """The authorization server a flow was started against."""
        return self.invoiced_base_url

    @property
    def connect_url(self) -> str:
        return f"{self.require('public_base_url')}/connect"

    @property
    def redirect_uri(self) -> str:
        return f"{self.require('public_base_url')}/callback"

    def require_client_id(self) -> str:
        if not self.client_id:
            raise SettingsError(
                "INVOICED_CLIENT_ID is empty: set the InvoicedClientId parameter to the "
                "client id of your Invoiced OAuth application"
            )
        return self.client_id

    def require(self, name: str) -> str:
        """Return an optional setting that this caller needs, or fail clearly."""
        value = getattr(self, name)
        if not value:
            raise SettingsError(f"{_ENV_NAMES[name]} is not set")
        return value


_ENV_NAMES = {
    "public_base_url": "PUBLIC_BASE_URL",
    "link_signing_secret_arn": "LINK_SIGNING_SECRET_ARN",
    "client_secret_arn": "CLIENT_SECRET_ARN",
    "event_bus_name": "EVENT_BUS_NAME",
    "connections_function_name": "CONNECTIONS_FUNCTION_NAME",
    "tokens_function_name": "TOKENS_FUNCTION_NAME",
    "refresh_queue_url": "REFRESH_QUEUE_URL",
}


def is_loopback_host(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _origin(name: str, value: str) -> str:
    """Validate a base URL: https, or http on loopback only; no path."""
    value = value.strip().rstrip("/")
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise SettingsError(f"{name} must be an absolute URL, got {value!r}")
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise SettingsError(f"{name} must use https unless it points at loopback, got {value!r}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise SettingsError(f"{name} must not carry credentials, a query or a fragment")
    return value


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise SettingsError(f"{name} is not set")
    return value


def _whole_number(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, got {text!r}") from None
    if not low <= value <= high:
        raise SettingsError(f"{name} must be between {low} and {high}, got {value}")
    return value


def _app_name(env: Mapping[str, str]) -> str | None:
    name = env.get("APP_NAME", "").strip()
    if len(name) > MAX_APP_NAME_LENGTH:
        raise SettingsError(f"APP_NAME must be at most {MAX_APP_NAME_LENGTH} characters, got {len(name)}")
    if any(unicodedata.category(char).startswith("C") for char in name):
        raise SettingsError("APP_NAME must not contain control or invisible characters")
    return name or None


def _support_contact(env: Mapping[str, str]) -> str | None:
    """An https URL (a support page) or an e-mail address."""
    value = env.get("SUPPORT_CONTACT", "").strip()
    if not value:
        return None
    if len(value) > MAX_SUPPORT_CONTACT_LENGTH:
        raise SettingsError(f"SUPPORT_CONTACT must be at most {MAX_SUPPORT_CONTACT_LENGTH} characters")
    if _EMAIL.fullmatch(value):
        return value
    parts = urlsplit(value)
    if (_URL_CHARACTERS.fullmatch(value) and parts.scheme == "https" and value.startswith("https://")
            and parts.hostname and not parts.username and not parts.password):
        return value
    raise SettingsError(f"SUPPORT_CONTACT must be an https URL or an e-mail address, got {value!r}")


def _default_return_url(env: Mapping[str, str], allowlist: tuple[str, ...]) -> str | None:
    from invoiced_connect.core.return_urls import ReturnUrlError, check_return_url

    value = env.get("DEFAULT_RETURN_URL", "").strip()
    if not value:
        return None
    try:
        check_return_url(value, allowlist)
    except ReturnUrlError as exc:
        raise SettingsError(f"DEFAULT_RETURN_URL {value!r} is refused ({exc}); it must lie under an entry of "
                            "RETURN_URL_ALLOWLIST") from None
    return value


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Build settings from ``env`` (the process environment by default)."""
    env = os.environ if env is None else env
    scope = env.get("INVOICED_SCOPE", "").strip() or DEFAULT_SCOPE
    unknown = set(scope.split()) - VALID_SCOPES
    if unknown:
        raise SettingsError(f"INVOICED_SCOPE has unknown scopes: {', '.join(sorted(unknown))}")
    allowlist = tuple(
        entry.strip() for entry in env.get("RETURN_URL_ALLOWLIST", "").split(",") if entry.strip()
    )
    # Imported here to keep the dependency one-way (return_urls needs no settings).
    from invoiced_connect.core.return_urls import ReturnUrlError, validate_allowlist_entry

    for entry in allowlist:
        try:
            validate_allowlist_entry(entry)
        except ReturnUrlError as exc:
            raise SettingsError(f"RETURN_URL_ALLOWLIST entry {entry!r}: {exc}") from None
    try:
        timeout = float(env.get("HTTP_TIMEOUT_SECONDS", "") or 10)
    except ValueError as exc:
        raise SettingsError("HTTP_TIMEOUT_SECONDS must be a number") from exc
    if not 0 < timeout <= 60:
        raise SettingsError("HTTP_TIMEOUT_SECONDS must be between 0 and 60")
    base_url = _origin("INVOICED_BASE_URL", env.get("INVOICED_BASE_URL") or DEFAULT_BASE_URL)
    configured_api_url = (_origin("INVOICED_API_URL", env["INVOICED_API_URL"])
                          if env.get("INVOICED_API_URL", "").strip() else None)
    paired = api_url_for_issuer(base_url)
    if configured_api_url and paired and configured_api_url != paired:
        raise SettingsError(
            f"INVOICED_API_URL is {configured_api_url}, but the API of {base_url} (INVOICED_BASE_URL) is {paired}: "
            "a token of one Invoiced environment is refused by the other"
        )
    return Settings(
        table_name=_required(env, "TABLE_NAME"),
        kms_key_id=_required(env, "KMS_KEY_ID"),
        invoiced_base_url=base_url,
        invoiced_api_url=configured_api_url or paired or DEFAULT_API_URL,
        configured_api_url=configured_api_url,
        client_id=env.get("INVOICED_CLIENT_ID", "").strip(),
        scope=scope,
        # Only the connect flow needs it; readers and the refresher do not.
        public_base_url=_origin("PUBLIC_BASE_URL", env["PUBLIC_BASE_URL"]) if env.get("PUBLIC_BASE_URL", "").strip() else "",
        return_url_allowlist=allowlist,
        link_signing_secret_arn=env.get("LINK_SIGNING_SECRET_ARN", "").strip() or None,
        client_secret_arn=env.get("CLIENT_SECRET_ARN", "").strip() or None,
        http_timeout=timeout,
        event_bus_name=env.get("EVENT_BUS_NAME", "").strip() or None,
        connections_function_name=env.get("CONNECTIONS_FUNCTION_NAME", "").strip() or None,
        tokens_function_name=env.get("TOKENS_FUNCTION_NAME", "").strip() or None,
        refresh_queue_url=env.get("REFRESH_QUEUE_URL", "").strip() or None,
        # Access tokens live an hour; refresh tokens a year from their last rotation.
        refresh_window_seconds=60 * _whole_number(env, "REFRESH_WINDOW_MINUTES", DEFAULT_REFRESH_WINDOW_SECONDS // 60, 5, 50),
        keepalive_seconds=86400 * _whole_number(env, "KEEPALIVE_DAYS", 30, 1, 300),
        active_use_seconds=3600 * _whole_number(env, "ACTIVE_USE_HOURS", 24, 0, 720),
        rejected_token_window_seconds=_whole_number(env, "REJECTED_TOKEN_WINDOW_SECONDS", 300, 30, 3600),
        unknown_outcome_settle_seconds=_whole_number(env, "UNKNOWN_OUTCOME_SETTLE_SECONDS", 0, 1, 900) or None,
        app_name=_app_name(env),
        support_contact=_support_contact(env),
        default_return_url=_default_return_url(env, allowlist),
    )
