"""Disconnecting: revoke the grant at Invoiced, then erase the tokens.

Invoiced's ``POST /oauth/revoke`` takes an access token (and deletes its
refresh token with it), so the revoke needs a *current* one: the disconnect
takes the same lease as a refresh (never racing one), refreshes first if the
access token is about to expire, revokes, and only then marks the connection
``revoked`` with its tokens erased. If Invoiced cannot be reached, nothing
changes and the caller is told to try again; a connection whose tokens are
already dead (``needs_reauth``, or a refresh token Invoiced rejects) is
marked ``revoked`` without a revoke call. The row is kept (no deletes).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import StrEnum

from invoiced_connect.cloud import events as connection_events
from invoiced_connect.core.lifetimes import min_validity
from invoiced_connect.core.metrics import outcome_metric_name
from invoiced_connect.core.models import Connection, ConnectionStatus
from invoiced_connect.invoiced.client import InvoicedError, TransientError
from invoiced_connect.lifecycle.refresh import Mode, Refresher, RefreshOutcome
from invoiced_connect.storage.crypto import SealedTokens

logger = logging.getLogger(__name__)


class DisconnectOutcome(StrEnum):
    """How a disconnect ended (the connections function's ``outcome``)."""

    DISCONNECTED = "disconnected"
    ALREADY_REVOKED = "already_revoked"
    NOT_FOUND = "not_found"
    BUSY = "busy"  # another refresher held the lease past the wait
    UNAVAILABLE = "unavailable"  # Invoiced could not be reached: nothing changed, try again

    @property
    def metric_name(self) -> str:
        return outcome_metric_name(self.value, prefix="Disconnect")


# After these refresh outcomes the row has a current token (or is dead): look again.
_LOOK_AGAIN = frozenset({RefreshOutcome.REFRESHED, RefreshOutcome.ALREADY_FRESH, RefreshOutcome.RACE_RECOVERED,
                         RefreshOutcome.NEEDS_REAUTH, RefreshOutcome.NOT_ACTIVE, RefreshOutcome.RESCUE_APPLIED})


@dataclass(frozen=True)
class DisconnectResult:
    connection_id: str
    outcome: DisconnectOutcome
    status: str | None = None
    version: int | None = None

    def as_dict(self) -> dict[str, object]:
        return {"connection_id": self.connection_id, "outcome": self.outcome.value, "status": self.status,
                "version": self.version}


class Disconnector:
    """Uses a :class:`Refresher`'s store, cipher, client, events and clock."""

    def __init__(self, refresher: Refresher) -> None:
        self.r = refresher

    def disconnect(self, connection_id: str, *, wait_seconds: float = 20.0) -> DisconnectResult:
        r = self.r
        deadline = r.clock() + wait_seconds
        attempts = 0
        while True:
            found = r.store.get_connection(connection_id)
            if found is None:
                return DisconnectResult(connection_id, DisconnectOutcome.NOT_FOUND)
            row, blob = found
            now = int(r.clock())
            if row.status is ConnectionStatus.REVOKED:
                return self._result(row, DisconnectOutcome.ALREADY_REVOKED)
            if row.leased_by_other(None, now):
                if not r.wait_out_lease(row, deadline):
                    return self._result(row, DisconnectOutcome.BUSY)
                continue
            if row.status is ConnectionStatus.ACTIVE and row.expires_at - now < min_validity(row.token_lifetime):
                # Revoke takes an access token, and an expired one may no
                # longer be found: rotate first, through the normal (leased,
                # committed) refresh, then look again.
                refreshed = r.refresh(connection_id, mode=Mode.ON_DEMAND, wait_seconds=max(0.0, deadline - r.clock()))
                if refreshed.outcome not in _LOOK_AGAIN:
                    return self._result(row, DisconnectOutcome.UNAVAILABLE)
                attempts += 1
                if attempts > 3:
                    return self._result(row, DisconnectOutcome.UNAVAILABLE)
                continue
            lease = r.take_lease(row, statuses=(ConnectionStatus.ACTIVE, ConnectionStatus.NEEDS_REAUTH))
            if lease is None:
                continue  # changed or leased since the read: look again
            row, blob, owner = lease.row, lease.sealed, lease.owner
            try:
                reason = self._revoke(row, blob)
            except TransientError as exc:
                r.release(lease)
                logger.warning("disconnect postponed: Invoiced unreachable",
                               extra={"connection_id": connection_id, "reason": exc.reason})
                return self._result(row, DisconnectOutcome.UNAVAILABLE)
            except BaseException:
                r.release(lease)
                raise
            revoked = r.store.mark_revoked(connection_id, owner=owner, version=row.version, now=int(r.clock()),
                                           reason=reason)
            self._discard_rescue(connection_id)
            logger.info("connection disconnected", extra={"connection_id": connection_id, "reason": reason})
            r.events.publish(connection_events.CONNECTION_DISCONNECTED, revoked, reason=reason)
            return self._result(revoked, DisconnectOutcome.DISCONNECTED)

    def _revoke(self, row: Connection, blob: SealedTokens | None) -> str:
        """Revoke the live grant, if there is one; the reason recorded on the row."""
        r = self.r
        if row.status is ConnectionStatus.NEEDS_REAUTH or blob is None:
            return "disconnected_dead_grant"
        access_token = r.cipher.decrypt_access_any_format(row.connection_id, blob)  # revoke takes an access token
        try:
            r.revoke(access_token)
        except TransientError:
            raise
        except InvoicedError:
            return "disconnected_token_refused"  # Invoiced no longer knows the token
        return "disconnected"

    def _discard_rescue(self, connection_id: str) -> None:
        if self.r.store.get_rescue(connection_id) is not None:
            self.r.recover(connection_id)  # revokes the kept-aside grant too

    @staticmethod
    def _result(row: Connection, outcome: DisconnectOutcome) -> DisconnectResult:
        return DisconnectResult(row.connection_id, outcome, row.status.value, row.version)
