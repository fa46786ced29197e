"""Plain values shared by the modules: connection ids, token sets, connections."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

from invoiced_connect.core.environments import api_url_for_issuer
from invoiced_connect.core.lifetimes import REFERENCE_LIFETIME_SECONDS

_CONNECTION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")


class InvalidConnectionId(ValueError):
    """A connection id that the system refuses to store or look up."""


def validate_connection_id(connection_id: str) -> str:
    """Return the id if it is 1-128 characters of ``A-Z a-z 0-9 . _ : @ -``.

    Connection ids are chosen by the integrating app (usually its own customer
    id); the narrow alphabet keeps them safe in keys, URLs, logs and pages.
    """
    if not isinstance(connection_id, str) or not _CONNECTION_ID.fullmatch(connection_id):
        raise InvalidConnectionId(
            "connection id must be 1-128 characters of letters, digits and . _ : @ -, "
            "starting with a letter or digit"
        )
    return connection_id


class ConnectionStatus(StrEnum):
    ACTIVE = "active"
    NEEDS_REAUTH = "needs_reauth"
    REVOKED = "revoked"


class Attention(StrEnum):
    """Why a connection is listed for someone to look at (the attention-index)."""

    NEEDS_REAUTH = "needs_reauth"  # the customer must reconnect
    FAILING = "failing"  # refreshes keep failing, or an answer was lost
    KEPT_ASIDE = "kept_aside"  # new tokens are waiting to be recovered


@dataclass(frozen=True)
class TokenSet:
    """What Invoiced's token endpoint returned, parsed and checked.

    ``repr`` never shows the tokens, so a TokenSet can be logged by accident
    without leaking them.
    """

    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    expires_at: int
    tenant_id: str
    scopes: tuple[str, ...] = ()
    #: Seconds the access token was granted for (``expires_in``).
    lifetime: int = REFERENCE_LIFETIME_SECONDS


@dataclass(frozen=True)
class Company:
    id: str
    name: str


@dataclass(frozen=True)
class Connection:
    """A stored connection, without its tokens (they stay encrypted)."""

    connection_id: str
    tenant_id: str
    company_name: str | None
    scopes: tuple[str, ...]
    issuer: str
    status: ConnectionStatus
    expires_at: int
    version: int
    created_at: int
    updated_at: int
    refreshed_at: int = 0
    #: When the scheduler should refresh it next (absent unless active).
    refresh_at: int | None = None
    #: Until when the access token is kept fresh ahead of expiry (recent use).
    active_until: int = 0
    lease_owner: str | None = None
    lease_until: int = 0
    failure_count: int = 0
    next_attempt_at: int = 0
    last_error: str | None = None
    #: Set when a refresh was sent and its answer lost (the tokens may be dead).
    outcome_unknown_at: int = 0
    status_reason: str | None = None
    #: The REST API the callback used for this connection (absent on rows from before it was recorded).
    api_url: str | None = None
    attention: Attention | None = None
    #: When a rotation was last taken because Invoiced rejected the stored token.
    rejected_refresh_at: int = 0
    #: When a rejection after that rotation was last reported (one event per rotation).
    rejected_notice_at: int = 0
    #: Seconds the stored access token was granted for (one hour on rows from before it was recorded).
    token_lifetime: int = REFERENCE_LIFETIME_SECONDS

    @property
    def api_base_url(self) -> str | None:
        """The REST API of this connection's own Invoiced environment, if known."""
        return self.api_url or api_url_for_issuer(self.issuer)

    @property
    def trouble(self) -> str | None:
        """What kept this connection from being healthy: ``needs_reauth``, ``outcome_unknown``
        (a refresh's answer was lost) or ``refresh_failing``; ``None`` when nothing did.
        A revoked connection is not in trouble: it was disconnected on purpose."""
        if self.status is ConnectionStatus.NEEDS_REAUTH:
            return "needs_reauth"
        if self.status is ConnectionStatus.REVOKED:
            return None
        if self.outcome_unknown_at:
            return "outcome_unknown"
        if self.failure_count:
            return "refresh_failing"
        return None

    def leased_by_other(self, owner: str | None, now: float) -> bool:
        return self.lease_until > now and self.lease_owner != owner
