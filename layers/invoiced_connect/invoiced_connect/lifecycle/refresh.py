"""Refreshing a connection's tokens without ever losing the connection.

Invoiced rotates the refresh token on every refresh and revokes the old
access and refresh token at once, with no grace period. So:

* **One refresher at a time.** A refresh takes a lease on the row (owner and
  expiry, by a conditional update on the version it read); the lease
  outlasts the HTTP timeouts plus the commit. Whoever finds the lease taken
  waits for the row to change and never calls Invoiced itself.
* **Versioned commit.** New tokens are written only if the row is still at
  the version read and the lease is still ours. If that write fails, the
  tokens are *kept aside* in a rescue row (encrypted), alarmed, and
  recovered: applied if the connection is still at that version, revoked at
  Invoiced if it has moved on (a reconnect or a disconnect won).
* **Lost races are success.** "The refresh token is invalid" is re-checked
  with a consistent read: if the row changed, someone else refreshed.
* **Classification.** Refresh token dead (and no race, no rescue): status
  ``needs_reauth``, an event, no more retries. Client authentication failed
  (the client already re-read its secret once): alarm, connection untouched.
  Transient (5xx, 429, timeouts, resets, HTML): retry later with
  exponential backoff and jitter; the cooldown is stored on the row so no
  refresher (scheduled or on demand) can hammer Invoiced.
* **Unknown outcome settled by a probe.** The token request was sent and its
  answer lost: Invoiced may have rotated (and revoked the stored pair) or
  not. The row is flagged (readers get ``TokenUnavailable`` meanwhile) and,
  once no request of ours can still be in flight at Invoiced
  (:attr:`RefreshPolicy.settle_seconds`), the next refresher asks the old
  access token, which Invoiced revokes at the moment it rotates:
  ``GET /companies/current`` accepted means no rotation happened (the flag
  is cleared and the refresh goes ahead), 401 means the rotation happened
  and its tokens are lost (``needs_reauth`` at once, with its event), no
  answer keeps the flag and the long cooldown. An access token that has
  expired anyway cannot tell, so then the old refresh token is tried:
  refused means the same as the 401.
* **Margins scale with the lifetime** Invoiced granted (see
  :mod:`invoiced_connect.core.lifetimes`): one-hour tokens get the values below,
  shorter ones a share of them.

Nothing here deletes a connection or decrypts a token without a lease.
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from invoiced_connect.cloud import events as connection_events
from invoiced_connect.core.lifetimes import (
    DEFAULT_REFRESH_WINDOW_SECONDS,
    REFERENCE_LIFETIME_SECONDS,
    min_validity,
    scaled,
)
from invoiced_connect.core.metrics import outcome_metric_name
from invoiced_connect.core.models import Connection, ConnectionStatus
from invoiced_connect.invoiced.client import (
    ClientAuthError,
    InvalidGrantError,
    InvalidTokenResponseError,
    InvoicedError,
    TransientError,
    UnknownOutcomeError,
)
from invoiced_connect.storage.store import LeaseLost, Rescue

if TYPE_CHECKING:
    from invoiced_connect.cloud.events import EventPublisher
    from invoiced_connect.core.settings import Settings
    from invoiced_connect.invoiced.client import InvoicedClient
    from invoiced_connect.storage.crypto import SealedTokens, TokenCipher
    from invoiced_connect.storage.store import TokenStore

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: Backoff after a transient failure: base * 2^(n-1), at most the cap, with jitter.
BACKOFF_BASE_SECONDS = 30
BACKOFF_CAP_SECONDS = 1800
#: After an answer was lost, the probe is asked this much later at the earliest:
#: longer than a load balancer in front of Invoiced holds a request (60 s), plus
#: our own read timeout, so no request of ours can still be in flight.
UNKNOWN_OUTCOME_SETTLE_SECONDS = 90
#: When the probe itself got no answer, it is asked again only this much later.
UNKNOWN_OUTCOME_COOLDOWN_SECONDS = 900
#: The probe needs the old access token to have at least this left, or it cannot tell.
PROBE_MIN_VALIDITY_SECONDS = 5
#: ``status_reason`` of a connection whose rotation happened but whose answer was lost.
ROTATED_ANSWER_LOST = "rotated_answer_lost"
#: A "refresh failing" event is published when the failure count reaches this.
FAILING_EVENT_AFTER = 3
#: Attempts to store new tokens (encrypt, commit, rescue) before giving up on one step.
WRITE_ATTEMPTS = 4
_RETRYABLE_WRITE_ERRORS = frozenset({
    "ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded",
    "InternalServerError", "ServiceUnavailable", "TransactionConflictException",
    "KMSInternalException", "DependencyTimeoutException",  # the encrypt before the commit
})


class RefreshOutcome(StrEnum):
    """What a refresh (or a recovery) came to."""

    REFRESHED = "refreshed"
    ALREADY_FRESH = "already_fresh"
    RACE_RECOVERED = "race_recovered"
    BUSY = "busy"
    COOLING_DOWN = "cooling_down"
    TRANSIENT = "transient"
    UNKNOWN_OUTCOME = "unknown_outcome"
    NEEDS_REAUTH = "needs_reauth"
    CLIENT_AUTH_FAILED = "client_auth_failed"
    KEPT_ASIDE = "kept_aside"
    RESCUE_APPLIED = "rescue_applied"
    RESCUE_DISCARDED = "rescue_discarded"
    NOT_ACTIVE = "not_active"
    NOT_FOUND = "not_found"
    #: Invoiced rejected the stored token, which was already replaced once for
    #: that reason within the window: no rotation storm, the pair stays.
    TOKEN_REJECTED = "token_rejected"  # noqa: S105 - an outcome

    @property
    def metric_name(self) -> str:
        """The CloudWatch metric counting this outcome, e.g. ``RefreshUnknownOutcome``."""
        return outcome_metric_name(self.value)


class Mode(StrEnum):
    SCHEDULED = "scheduled"  # the scheduler found it due
    ON_DEMAND = "on_demand"  # a reader's token is expiring or was rejected
    FORCED = "forced"  # an operator asked (cooldowns still apply)


@dataclass(frozen=True)
class RefreshResult:
    connection_id: str
    outcome: RefreshOutcome
    status: str | None = None
    version: int | None = None
    retry_at: int | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "connection_id": self.connection_id,
            "outcome": self.outcome.value,
            "status": self.status,
            "version": self.version,
            "retry_at": self.retry_at,
        }


@dataclass(frozen=True)
class RefreshPolicy:
    """When connections are refreshed; built from :class:`Settings`."""

    window_seconds: int = DEFAULT_REFRESH_WINDOW_SECONDS
    keepalive_seconds: int = 30 * 86400
    active_use_seconds: int = 24 * 3600
    lease_seconds: int = 60
    #: At most one rotation per connection in this time because Invoiced rejected its token.
    rejected_token_window_seconds: int = 300
    #: After a lost answer, the probe waits this long (see UNKNOWN_OUTCOME_SETTLE_SECONDS).
    settle_seconds: int = UNKNOWN_OUTCOME_SETTLE_SECONDS

    @classmethod
    def from_settings(cls, settings: Settings) -> RefreshPolicy:
        # A token request may take two attempts (the secret re-read), each
        # bounded by the connect and read timeouts; then KMS and the commit.
        lease = max(60, int(4 * settings.http_timeout) + 20)
        settle = settings.unknown_outcome_settle_seconds or max(UNKNOWN_OUTCOME_SETTLE_SECONDS,
                                                                60 + int(2 * settings.http_timeout))
        return cls(settings.refresh_window_seconds, settings.keepalive_seconds, settings.active_use_seconds, lease,
                   settings.rejected_token_window_seconds, settle)

    def next_refresh_at(self, *, expires_at: int, now: int, active_until: int,
                        lifetime: int = REFERENCE_LIFETIME_SECONDS) -> int:
        """When the scheduler should refresh next, for tokens of ``lifetime`` seconds.

        The scheduler refreshes a row from ``refresh_at - window_seconds`` on.
        In active use the access token is kept fresh ahead of expiry, so
        readers never wait: a one-hour token from ``window_seconds`` before
        it expires, a shorter one from its share of that (``refresh_at`` is
        then past ``expires_at``). Otherwise only the keep-alive is scheduled
        (refresh tokens die a year after their last rotation) and readers
        refresh on demand: every rotation is a moment a connection can be
        lost, so there are no more of them than needed.
        """
        lead = self.lead_seconds(lifetime)
        if active_until >= expires_at - lead:
            return expires_at - lead + self.window_seconds
        return now + self.keepalive_seconds

    def lead_seconds(self, lifetime: int) -> int:
        """How long before expiry the scheduler rotates a token of ``lifetime`` seconds."""
        return scaled(self.window_seconds, lifetime)

    def backoff(self, failures: int, rng: Callable[[], float] = random.random) -> int:
        ceiling = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2 ** max(0, failures - 1))
        return int(ceiling / 2 + rng() * ceiling / 2)  # "equal jitter": never less than half


def new_owner() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Lease:
    """A connection's row leased by ``owner``: no other refresher (or disconnect)
    acts on it until the lease is committed, released or runs out."""

    row: Connection
    sealed: SealedTokens | None
    owner: str


class Refresher:
    """Refreshes one connection at a time, safely under concurrency (see module doc)."""

    def __init__(
        self,
        *,
        store: TokenStore,
        cipher: TokenCipher,
        invoiced: Callable[[], InvoicedClient],
        events: EventPublisher,
        policy: RefreshPolicy = RefreshPolicy(),
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.store = store
        self.cipher = cipher
        self._invoiced = invoiced
        self.events = events
        self.policy = policy
        self.clock = clock
        self.sleep = sleep
        self.rng = rng

    # ---------------------------------------------------------------- entry points
    def refresh(
        self,
        connection_id: str,
        *,
        mode: Mode = Mode.SCHEDULED,
        stale_version: int | None = None,
        wait_seconds: float = 0.0,
        after_rejection: bool = False,
    ) -> RefreshResult:
        """Refresh if it is (still) needed.

        ``stale_version``: the version a reader found expiring or rejected;
        a newer version means someone else already refreshed. ``wait_seconds``:
        how long to wait for another refresher's lease (0: report ``busy``).
        ``after_rejection``: Invoiced answered 401 to the token of
        ``stale_version``; at most one such rotation per connection per
        :attr:`RefreshPolicy.rejected_token_window_seconds`, after which the
        answer is ``token_rejected`` and the stored pair stays as it is.
        """
        deadline = self.clock() + wait_seconds
        now = int(self.clock())
        rejected_since = now - self.policy.rejected_token_window_seconds if after_rejection else None
        # The common case in one write: lease the row if it needs refreshing
        # now; the update returns what a read would have. Only if that is
        # refused is the row read, to say why.
        requirement = self._requirement(mode, stale_version, now)
        if requirement is not None:
            owner = new_owner()
            try:
                leased, sealed = self.store.take_lease(
                    connection_id, owner=owner, now=now, until=now + self.policy.lease_seconds,
                    rejected_since=rejected_since, **requirement,
                )
            except LeaseLost:
                pass
            else:
                return self._refresh_under_lease(leased, sealed, owner, mode)
        while True:
            found = self.store.get_connection(connection_id)
            if found is None:
                return RefreshResult(connection_id, RefreshOutcome.NOT_FOUND)
            row, _ = found
            now = int(self.clock())
            if row.status is not ConnectionStatus.ACTIVE:
                return self._result(row, RefreshOutcome.NOT_ACTIVE)
            if not self._needed(row, mode, stale_version, now):
                raced = stale_version is not None and row.version > stale_version
                return self._result(row, RefreshOutcome.RACE_RECOVERED if raced else RefreshOutcome.ALREADY_FRESH)
            if row.next_attempt_at > now:
                return self._result(row, RefreshOutcome.COOLING_DOWN, retry_at=row.next_attempt_at)
            if row.leased_by_other(None, now):
                if not self.wait_out_lease(row, deadline):
                    return self._result(row, RefreshOutcome.BUSY, retry_at=row.lease_until)
                continue  # another refresher's new pair answers a rejection too
            if after_rejection and row.rejected_refresh_at > now - self.policy.rejected_token_window_seconds:
                return self._rejected_again(row, now)
            lease = self.take_lease(
                row, rejected_since=now - self.policy.rejected_token_window_seconds if after_rejection else None)
            if lease is None:
                continue  # changed or leased since the read: look again
            return self._refresh_under_lease(lease.row, lease.sealed, lease.owner, mode)

    # ---------------------------------------------------------------- the lease, for whoever acts on a row
    def take_lease(self, row: Connection, *, statuses: tuple[ConnectionStatus, ...] = (ConnectionStatus.ACTIVE,),
                   rejected_since: int | None = None) -> Lease | None:
        """Lease ``row`` as read (its version, one of ``statuses``) for
        :attr:`RefreshPolicy.lease_seconds`; ``None`` when it changed or was
        leased since the read (read it again)."""
        owner = new_owner()
        now = int(self.clock())
        try:
            leased, sealed = self.store.take_lease(
                row.connection_id, owner=owner, version=row.version, now=now, until=now + self.policy.lease_seconds,
                statuses=statuses, rejected_since=rejected_since,
            )
        except LeaseLost:
            return None
        return Lease(leased, sealed, owner)

    def wait_out_lease(self, row: Connection, deadline: float) -> bool:
        """``row`` is leased by someone else: wait (polling, consistently) until
        it changes or the lease ends, at most until ``deadline``. ``False``
        without waiting when the deadline has passed: the caller is busy."""
        if self.clock() >= deadline:
            return False
        delay = 0.05
        while self.clock() < deadline:
            self.sleep(min(delay, max(0.0, deadline - self.clock())))
            delay = min(delay * 2, 0.5)
            found = self.store.get_connection(row.connection_id)
            if found is None:
                break
            current = found[0]
            if current.version != row.version or not current.leased_by_other(None, int(self.clock())):
                break
        return True

    def release(self, lease: Lease) -> None:
        """Give ``lease`` back without a commit (nothing was changed under it)."""
        self.store.release_lease(lease.row.connection_id, owner=lease.owner)

    def revoke(self, access_token: str) -> None:
        """Revoke a grant at Invoiced by its access token (its refresh token goes with it)."""
        self._invoiced().revoke(access_token)

    def recover(self, connection_id: str) -> RefreshResult:
        """Apply or discard tokens kept aside for ``connection_id`` (see module doc)."""
        rescue = self.store.get_rescue(connection_id)
        if rescue is None:
            found = self.store.get_connection(connection_id)
            return self._result(found[0], RefreshOutcome.ALREADY_FRESH) if found else RefreshResult(
                connection_id, RefreshOutcome.NOT_FOUND)
        found = self.store.get_connection(connection_id)
        row = found[0] if found else None
        now = int(self.clock())
        if row is not None and row.version == rescue.base_version and row.status is not ConnectionStatus.REVOKED:
            if row.leased_by_other(None, now):
                return self._result(row, RefreshOutcome.BUSY, retry_at=row.lease_until)
            owner = new_owner()
            try:
                leased, _ = self.store.take_lease(
                    connection_id, owner=owner, version=row.version, now=now,
                    until=now + self.policy.lease_seconds,
                    statuses=(ConnectionStatus.ACTIVE, ConnectionStatus.NEEDS_REAUTH),
                )
            except LeaseLost:
                return self._result(row, RefreshOutcome.BUSY)
            try:
                committed = self._commit(leased, owner, rescue.sealed, rescue.expires_at, lifetime=rescue.lifetime)
            except LeaseLost:
                return self._result(row, RefreshOutcome.BUSY)
            except BaseException:
                self.store.release_lease(connection_id, owner=owner)  # the rescue row stays for the next run
                raise
            self.store.delete_rescue(rescue)
            logger.warning("kept-aside tokens recovered", extra={"connection_id": connection_id,
                                                                  "version": committed.version})
            self._announce_recovery(leased, committed)
            return self._result(committed, RefreshOutcome.RESCUE_APPLIED)
        # The connection moved on (reconnected, disconnected, gone): the kept
        # tokens belong to a grant nobody uses. Revoke it rather than leave
        # a live grant behind, then forget it.
        access_token = self.cipher.decrypt_access_any_format(connection_id, rescue.sealed)
        try:
            self.revoke(access_token)
        except TransientError:
            return RefreshResult(connection_id, RefreshOutcome.TRANSIENT, retry_at=now + self.policy.backoff(1, self.rng))
        except InvoicedError:
            pass  # refused: the token is not live anyway
        self.store.delete_rescue(rescue)
        logger.warning("kept-aside tokens discarded (connection moved on)", extra={"connection_id": connection_id})
        return self._result(row, RefreshOutcome.RESCUE_DISCARDED) if row else RefreshResult(
            connection_id, RefreshOutcome.RESCUE_DISCARDED)

    # ---------------------------------------------------------------- the decision
    def _requirement(self, mode: Mode, stale_version: int | None, now: int) -> dict[str, int] | None:
        """What :meth:`_needed` checks, as conditions of the lease (see ``TokenStore.take_lease``);
        ``None`` when the row must be read to decide (the token's own lifetime decides)."""
        if stale_version is not None:
            return {"stale_version": stale_version}
        if mode is Mode.SCHEDULED:
            return {"due_by": now + self.policy.window_seconds}
        if mode is Mode.ON_DEMAND:
            return None
        return {}

    def _rejected_again(self, row: Connection, now: int) -> RefreshResult:
        """Invoiced rejected a token that was already replaced for that reason within the window."""
        retry_at = row.rejected_refresh_at + self.policy.rejected_token_window_seconds
        logger.warning("Invoiced rejected the stored token again; not rotating it again yet",
                       extra={"connection_id": row.connection_id, "retry_at": retry_at,
                              "alarm": "token_rejected"})
        if self.store.note_rejection(row.connection_id, now=now, rotated_at=row.rejected_refresh_at):
            self.events.publish(connection_events.CONNECTION_TOKEN_REJECTED, row, reason="token_rejected")
        return self._result(row, RefreshOutcome.TOKEN_REJECTED, retry_at=retry_at)

    def _needed(self, row: Connection, mode: Mode, stale_version: int | None, now: int) -> bool:
        if stale_version is not None:
            return row.version <= stale_version
        if row.outcome_unknown_at:
            return True  # a lost answer to settle, whatever the mode
        if mode is Mode.SCHEDULED:
            return row.refresh_at is not None and row.refresh_at <= now + self.policy.window_seconds
        if mode is Mode.ON_DEMAND:
            return row.expires_at - now < min_validity(row.token_lifetime)
        return True

    # ---------------------------------------------------------------- under the lease
    def _refresh_under_lease(self, row: Connection, sealed: SealedTokens | None, owner: str,
                             mode: Mode) -> RefreshResult:
        connection_id = row.connection_id
        settled = False
        try:
            if sealed is None:
                raise LeaseLost(f"{connection_id} has no tokens")
            if row.outcome_unknown_at:
                probed = self._probe(row, sealed, owner)
                if isinstance(probed, RefreshResult):
                    return probed
                settled = probed
            refresh_token = self.cipher.decrypt_refresh(connection_id, sealed)
            tokens = self._invoiced().refresh(refresh_token)
        except InvalidGrantError as exc:
            return self._refresh_token_dead(row, owner, exc)
        except ClientAuthError as exc:
            self.store.release_lease(connection_id, owner=owner)
            logger.error("client authentication failed on refresh: check the client id and secret",
                         extra={"connection_id": connection_id, "reason": exc.reason, "alarm": "client_auth_failed"})
            return self._result(row, RefreshOutcome.CLIENT_AUTH_FAILED)
        except (UnknownOutcomeError, InvalidTokenResponseError) as exc:
            # Invoiced may have rotated: the stored pair may be dead. Flag it;
            # the probe settles it once nothing can still be in flight.
            return self._failed(row, owner, exc.reason, outcome_unknown=True)
        except InvoicedError as exc:
            return self._failed(row, owner, exc.reason, settled=settled)
        except BaseException:
            self.store.release_lease(connection_id, owner=owner)
            raise
        # From here on these tokens exist nowhere else: never drop them.
        now = int(self.clock())
        active_until = now + self.policy.active_use_seconds if mode is Mode.ON_DEMAND else row.active_until
        ciphertext = self._retry_write(
            lambda: self.cipher.encrypt(connection_id, tokens.access_token, tokens.refresh_token))
        try:
            committed = self._commit(row, owner, ciphertext, tokens.expires_at, active_until=active_until,
                                     lifetime=tokens.lifetime)
        except (LeaseLost, ClientError, BotoCoreError) as exc:
            return self._keep_aside(row, owner, ciphertext, tokens.expires_at, type(exc).__name__, tokens.lifetime)
        if row.outcome_unknown_at:
            logger.warning("refresh succeeded after an unknown outcome", extra={"connection_id": connection_id})
        self._announce_recovery(row, committed)
        return self._result(committed, RefreshOutcome.REFRESHED)

    def _announce_recovery(self, before: Connection, after: Connection) -> None:
        """"Connection Recovered" when new tokens were committed to a connection in trouble."""
        if before.trouble is not None:
            self.events.publish(connection_events.CONNECTION_RECOVERED, after, reason=before.trouble)

    def _probe(self, row: Connection, sealed: SealedTokens, owner: str) -> RefreshResult | bool:
        """Settle a lost answer with the old access token (see the module doc).

        ``True``: no rotation happened, refresh now. ``False``: the access
        token had expired anyway, so only the refresh itself can tell.
        A :class:`RefreshResult`: settled otherwise (``needs_reauth``, or no
        answer and the long cooldown).
        """
        now = int(self.clock())
        if row.expires_at <= now + PROBE_MIN_VALIDITY_SECONDS:
            return False
        access_token = self.cipher.decrypt_access_any_format(row.connection_id, sealed)
        try:
            accepted = self._invoiced().token_accepted(access_token, api_url=row.api_base_url)
        except InvoicedError as exc:
            logger.warning("the probe after a lost answer got no answer either",
                           extra={"connection_id": row.connection_id, "reason": exc.reason})
            return self._failed(row, owner, "probe_" + (exc.reason or "no_answer"), probe_failed=True)
        if accepted:
            logger.info("lost answer settled: Invoiced had not rotated, refreshing again",
                        extra={"connection_id": row.connection_id})
            return True
        return self._reauth(row, owner, ROTATED_ANSWER_LOST)

    def _commit(self, row: Connection, owner: str, ciphertext: SealedTokens, expires_at: int,
                active_until: int | None = None, lifetime: int = REFERENCE_LIFETIME_SECONDS) -> Connection:
        """The versioned commit, retried on throttling; :class:`LeaseLost` is final."""
        now = int(self.clock())
        until = row.active_until if active_until is None else active_until
        refresh_at = self.policy.next_refresh_at(expires_at=expires_at, now=now, active_until=until,
                                                 lifetime=lifetime)
        return self._retry_write(lambda: self.store.commit_tokens(
            row.connection_id, owner=owner, version=row.version, ciphertext=ciphertext,
            expires_at=expires_at, now=now, refresh_at=refresh_at, active_until=active_until, lifetime=lifetime,
        ))

    def _retry_write(self, write: Callable[[], T]) -> T:
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            try:
                return write()
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                if code not in _RETRYABLE_WRITE_ERRORS or attempt == WRITE_ATTEMPTS:
                    raise
            except BotoCoreError:
                if attempt == WRITE_ATTEMPTS:
                    raise
            self.sleep(min(2.0, 0.1 * 2 ** attempt) * (0.5 + self.rng() / 2))
        raise AssertionError("unreachable")

    def _keep_aside(self, row: Connection, owner: str, ciphertext: SealedTokens, expires_at: int,
                    reason: str, lifetime: int) -> RefreshResult:
        now = int(self.clock())
        rescue = Rescue(row.connection_id, ciphertext, row.version, expires_at, now, reason, lifetime)
        self._retry_write(lambda: self.store.put_rescue(rescue))
        logger.error("new tokens could not be committed; kept aside for recovery",
                     extra={"connection_id": row.connection_id, "reason": reason, "alarm": "tokens_kept_aside"})
        self.events.publish(connection_events.CONNECTION_REFRESH_FAILING, row, reason="kept_aside")
        # Try to recover at once; if that fails too, the rescue row is in the
        # due-index and the next scheduler run brings it back.
        try:
            self.store.release_lease(row.connection_id, owner=owner)
            with_recovery = self.recover(row.connection_id)
        except (ClientError, BotoCoreError, InvoicedError) as exc:
            logger.warning("recovery postponed", extra={"connection_id": row.connection_id,
                                                         "error_type": type(exc).__name__})
            return self._result(row, RefreshOutcome.KEPT_ASIDE)
        if with_recovery.outcome in (RefreshOutcome.RESCUE_APPLIED, RefreshOutcome.RESCUE_DISCARDED):
            return with_recovery
        return self._result(row, RefreshOutcome.KEPT_ASIDE)

    def _refresh_token_dead(self, row: Connection, owner: str, exc: InvoicedError) -> RefreshResult:
        found = self.store.get_connection(row.connection_id)
        current = found[0] if found else None
        if current is None or current.version != row.version or current.lease_owner != owner:
            # Someone else rotated (or reconnected) meanwhile: theirs is the live pair.
            self.store.release_lease(row.connection_id, owner=owner)
            return self._result(current or row, RefreshOutcome.RACE_RECOVERED)
        rescue = self.store.get_rescue(row.connection_id)
        if rescue is not None and rescue.base_version == row.version:
            self.store.release_lease(row.connection_id, owner=owner)
            return self.recover(row.connection_id)
        return self._reauth(row, owner, exc.reason)

    def _reauth(self, row: Connection, owner: str, reason: str) -> RefreshResult:
        """The stored pair is dead: ``needs_reauth``, with its event."""
        now = int(self.clock())
        try:
            marked = self.store.mark_needs_reauth(row.connection_id, owner=owner, version=row.version, now=now,
                                                  reason=reason)
        except LeaseLost:
            return self._result(row, RefreshOutcome.RACE_RECOVERED)
        logger.warning("refresh token rejected: the connection needs re-authorization",
                       extra={"connection_id": row.connection_id, "reason": reason})
        self.events.publish(connection_events.CONNECTION_NEEDS_REAUTH, marked, reason=reason)
        return self._result(marked, RefreshOutcome.NEEDS_REAUTH)

    def _failed(self, row: Connection, owner: str, reason: str, *, outcome_unknown: bool = False,
                probe_failed: bool = False, settled: bool = False) -> RefreshResult:
        """Count a failure and set the cooldown.

        ``outcome_unknown``: the answer was just lost; the probe comes after
        :attr:`RefreshPolicy.settle_seconds`. ``probe_failed``: the probe got
        no answer; the flag stays and the next one comes after the long
        cooldown. ``settled``: the probe found the pair alive, so the flag
        goes even though this refresh failed (before it was sent, or refused).
        """
        now = int(self.clock())
        failures = row.failure_count + 1
        delay = self.policy.backoff(failures, self.rng)
        if outcome_unknown:
            delay = max(delay, self.policy.settle_seconds)
        elif probe_failed:
            delay = max(delay, UNKNOWN_OUTCOME_COOLDOWN_SECONDS)
        unknown = True if outcome_unknown else (False if settled else None)
        try:
            # The scheduler reads refresh_at - window on: so it finds the row when it may be tried.
            marked = self.store.record_failure(row.connection_id, owner=owner, version=row.version, now=now,
                                               reason=reason, next_attempt_at=now + delay,
                                               outcome_unknown=unknown,
                                               failing=failures >= FAILING_EVENT_AFTER,
                                               refresh_at=now + delay + self.policy.window_seconds)
        except LeaseLost:
            return self._result(row, RefreshOutcome.RACE_RECOVERED)
        extra = {"connection_id": row.connection_id, "reason": reason, "failures": failures, "retry_in": delay}
        if outcome_unknown:
            logger.error("refresh outcome unknown: the answer was lost; probing once nothing can be in flight",
                         extra={**extra, "alarm": "unknown_outcome"})
        else:
            logger.warning("refresh failed, will retry", extra=extra)
        if outcome_unknown or failures == FAILING_EVENT_AFTER:
            self.events.publish(connection_events.CONNECTION_REFRESH_FAILING, marked, reason=reason)
        flagged = outcome_unknown or probe_failed or (bool(row.outcome_unknown_at) and not settled)
        outcome = RefreshOutcome.UNKNOWN_OUTCOME if flagged else RefreshOutcome.TRANSIENT
        return self._result(marked, outcome, retry_at=now + delay)

    @staticmethod
    def _result(row: Connection, outcome: RefreshOutcome, *, retry_at: int | None = None) -> RefreshResult:
        return RefreshResult(row.connection_id, outcome, row.status.value, row.version, retry_at)
