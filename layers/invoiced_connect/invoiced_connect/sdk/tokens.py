"""The reader SDK: a valid Invoiced access token for a connection, in one call.

    from invoiced_connect import get_token

    token = get_token("acme-7")   # .access_token, .api_url, .expires_at, .tenant_id, .version

Attach the stack's ``TokenReaderPolicyArn`` to your function and add the
layer; set ``TABLE_NAME``, ``KMS_KEY_ID`` and ``TOKENS_FUNCTION_NAME`` from the
stack outputs (the stack's own functions have them). The policy lets a
reader decrypt access tokens only: refresh tokens stay with the refresher.

How it stays correct when Invoiced revokes the old pair on every refresh:

* A token is cached in memory only while the scheduler cannot have replaced
  it (until shortly before it may rotate it, never past ``expires_at`` minus
  a margin), and for at most :data:`RECHECK_SECONDS` before the row is read
  again: an operator's refresh, a disconnect or a reconnect reach a warm
  reader within a minute. A cache miss is one consistent ``GetItem``; KMS is
  called only when the stored version changed.
* When the stored token is expired or about to be (or the row is in the
  format from before the tokens were encrypted apart), the reader does not
  refresh it itself (it holds no client secret and cannot decrypt a refresh
  token): it invokes the stack's tokens function, which refreshes under the
  connection's lease and answers with the new token. N readers at once cause
  one token request.
* After Invoiced answers 401, :meth:`TokenReader.token_rejected` reads again;
  if the stored token is newer it is returned, otherwise a replacement is
  asked for that version. Replacements for that reason are limited per
  connection (one per ``REJECTED_TOKEN_WINDOW_SECONDS``): beyond that,
  :class:`TokenRejected`, and the stored pair stays as it is.
* While a refresh's answer is lost (the row is flagged ``outcome_unknown``:
  Invoiced may have revoked the stored pair), no reader hands out the stored
  token: it raises :class:`TokenUnavailable` with ``retry_at`` (when the
  refresher will settle it, about 90 s after the loss), and once it is due
  the tokens function settles it (see :mod:`invoiced_connect.lifecycle.refresh`):
  a fresh token, or :class:`NeedsReauthorization`. A warm cache learns of
  the flag within :data:`RECHECK_SECONDS`, and at once on a 401.
* The margins scale with the lifetime Invoiced granted (see
  :mod:`invoiced_connect.core.lifetimes`): for one-hour tokens a reader never
  takes one with less than 5 minutes left unless asked otherwise, and never
  promises more than 30; for a 90-second token 8 s and 45 s. A larger
  ``min_validity_seconds`` than a connection's tokens can give is capped.
* Each token says which Invoiced API it belongs to (``api_url``: sandbox or
  production, from the connection's own issuer), so it is never sent to the
  other environment.

Errors are typed: :class:`ConnectionNotFound`, :class:`NeedsReauthorization`,
:class:`ConnectionRevoked` (permanent until the customer reconnects),
:class:`TokenUnavailable` (transient; ``retry_at`` says when to try again) and
:class:`TokenRejected`.

Readers count the tokens asked of them and the cache misses (no I/O);
:func:`invoiced_connect.entry.observability.add_token_metrics` emits them as the
``TokenReads`` and ``TokenCacheMisses`` metrics.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from invoiced_connect.core.lifetimes import (
    DEFAULT_REFRESH_WINDOW_SECONDS,
    MAX_MIN_VALIDITY_SECONDS,
    MIN_VALIDITY_SECONDS,
    ROTATION_MARGIN_SECONDS,
    lifetime_of,
    max_min_validity,
    min_validity,
    rotation_margin,
)
from invoiced_connect.core.models import Connection, ConnectionStatus, validate_connection_id

__all__ = [
    "ERRORS_BY_CODE", "MAX_MIN_VALIDITY_SECONDS", "MIN_VALIDITY_SECONDS", "RECHECK_SECONDS",
    "ROTATION_MARGIN_SECONDS", "AccessToken", "ConnectionNotFound", "ConnectionRevoked", "FreshTokenRequest",
    "NeedsReauthorization", "ReadCounts", "TokenError", "TokenReader", "TokenRejected", "TokenUnavailable",
    "lambda_invoker", "token_from_answer",
]

#: A cached token is checked against the table (one consistent read; no KMS
#: call while the version is the same) at least this often, so a warm reader
#: learns of an operator's refresh, a disconnect or a reconnect this soon.
RECHECK_SECONDS = 60


class TokenError(Exception):
    """Base of the SDK's errors; never carries a token."""

    #: The app API's error code for this error.
    code = "unavailable"

    def __init__(self, connection_id: str, message: str, retry_at: int | None = None) -> None:
        super().__init__(message)
        self.connection_id = connection_id
        self.retry_at = retry_at


class ConnectionNotFound(TokenError):
    """No connection with this id (never connected, or a typo)."""

    code = "not_found"


class NeedsReauthorization(TokenError):
    """Invoiced no longer accepts the connection's refresh token: the customer must reconnect."""

    code = "needs_reauth"


class ConnectionRevoked(TokenError):
    """The connection was disconnected."""

    code = "revoked"


class TokenUnavailable(TokenError):
    """No valid token right now (Invoiced unreachable, refresh cooling down, a lost
    answer being settled); try again at ``retry_at``."""

    code = "unavailable"


class TokenRejected(TokenError):
    """Invoiced keeps rejecting the connection's token although it was just replaced
    for that reason: the caller is probably using it wrongly (another API, another
    company's data). Not replaced again before ``retry_at``; the connection is untouched."""

    code = "token_rejected"


#: App API error code -> the SDK's error.
ERRORS_BY_CODE: dict[str, type[TokenError]] = {
    cls.code: cls for cls in (ConnectionNotFound, NeedsReauthorization, ConnectionRevoked, TokenUnavailable,
                              TokenRejected)
}


@dataclass(frozen=True)
class AccessToken:
    """A valid access token and what using it needs; ``repr`` hides the token."""

    connection_id: str
    access_token: str = field(repr=False)
    expires_at: int
    #: The REST API of the connection's own Invoiced environment (None only for
    #: connections of an unknown issuer made before the URL was recorded).
    api_url: str | None
    tenant_id: str
    version: int

    def as_answer(self) -> dict[str, Any]:
        """The tokens function's answer (``tokens.answer`` contract)."""
        return {"connection_id": self.connection_id, "access_token": self.access_token, "token_type": "Bearer",
                "expires_at": self.expires_at, "api_url": self.api_url, "tenant_id": self.tenant_id,
                "version": self.version}


def token_from_answer(connection_id: str, answer: Any) -> AccessToken:
    """The token in a tokens-function answer; its error, raised, otherwise."""
    if not isinstance(answer, dict):
        raise TokenUnavailable(connection_id, "the tokens function gave no answer")
    if "error" in answer:
        retry_at = answer.get("retry_at")
        error = ERRORS_BY_CODE.get(str(answer["error"]), TokenUnavailable)
        raise error(connection_id, f"{answer.get('message') or answer['error']}",
                    retry_at=retry_at if isinstance(retry_at, int) else None)
    try:
        return AccessToken(connection_id, str(answer["access_token"]), int(answer["expires_at"]),
                           answer.get("api_url"), str(answer["tenant_id"]), int(answer["version"]))
    except (KeyError, TypeError, ValueError):
        raise TokenUnavailable(connection_id, "the tokens function's answer is incomplete") from None


@dataclass(frozen=True)
class FreshTokenRequest:
    """What a reader asks for when its stored token will not do."""

    connection_id: str
    #: What the caller asked for (``None``: the default for the token's lifetime).
    min_validity_seconds: int | None = None
    #: The version found expiring, in the pre-split format, flagged, or rejected.
    stale_version: int | None = None
    #: Invoiced answered 401 to the token of ``stale_version``.
    rejected: bool = False

    def as_payload(self) -> dict[str, Any]:
        """The ``tokens.request`` sent to the tokens function (which reads the version itself)."""
        if self.rejected:
            return {"connection_id": self.connection_id, "rejected_version": self.stale_version}
        if self.min_validity_seconds is None:
            return {"connection_id": self.connection_id}
        return {"connection_id": self.connection_id, "min_validity_seconds": self.min_validity_seconds}


#: Where a reader gets a fresh token: the tokens function, or (inside it) a refresh.
FreshTokens = Callable[[FreshTokenRequest], "AccessToken"]


@dataclass
class _Cached:
    token: AccessToken
    good_until: float
    #: When the row was last read (or the token handed out by a refresh).
    checked_at: float
    #: The token's lifetime (for a token from the tokens function: what it had left).
    lifetime: int


Invoker = Callable[[dict[str, Any]], dict[str, Any]]


class ReadCounts:
    """Counters of token reads, for metrics: plain integers, no I/O.

    ``reads``: access tokens asked of a reader (:meth:`TokenReader.get_access_token`
    and :meth:`TokenReader.token_rejected` calls). ``cache_misses``: those not
    answered from the reader's memory (each one is a consistent ``GetItem``,
    and maybe a KMS ``Decrypt`` or a refresh request).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reads = 0
        self._misses = 0

    def read(self, *, miss: bool) -> None:
        with self._lock:
            self._reads += 1
            self._misses += miss

    def take(self) -> tuple[int, int]:
        """``(reads, cache_misses)`` since the last take; starts counting again from zero."""
        with self._lock:
            counts = (self._reads, self._misses)
            self._reads = self._misses = 0
            return counts


def lambda_invoker(function_name: str, client_factory: Callable[[], Any] | None = None) -> Invoker:
    """Invoke ``function_name`` (the tokens or the connections function) synchronously with boto3
    and return its JSON answer."""

    if client_factory is None:
        from invoiced_connect.cloud import aws

        client_factory = aws.lazy_client("lambda")

    def invoke(payload: dict[str, Any]) -> dict[str, Any]:
        client = client_factory()
        response = client.invoke(FunctionName=function_name, Payload=json.dumps(payload).encode("utf-8"))
        body = json.loads(response["Payload"].read() or b"null")
        if response.get("FunctionError") or not isinstance(body, dict):
            raise TokenUnavailable(payload.get("connection_id", ""), f"the function {function_name} failed")
        return body

    return invoke


class TokenReader:
    """Reads, caches and (through ``invoke``, the tokens function) refreshes tokens.

    ``invoke`` takes a ``tokens.request`` and returns a ``tokens.answer`` or
    an error answer (see ``docs/app-api.md``): the tokens function. Inside
    that function, ``fresh`` refreshes in process instead. Thread-safe. ``coalesce``
    makes concurrent misses for one connection in this process wait for each
    other; correctness never depends on it (the lease does that across
    processes).
    """

    def __init__(
        self,
        *,
        store: Any,
        cipher: Any,
        invoke: Invoker | None = None,
        fresh: FreshTokens | None = None,
        window_seconds: int = DEFAULT_REFRESH_WINDOW_SECONDS,
        clock: Callable[[], float] = time.time,
        coalesce: bool = True,
        counts: ReadCounts | None = None,
        recheck_seconds: float = RECHECK_SECONDS,
    ) -> None:
        self.recheck_seconds = recheck_seconds
        self.store = store
        self.cipher = cipher
        if (invoke is None) == (fresh is None):
            raise ValueError("give a reader either invoke (the tokens function) or fresh")
        self._fresh: FreshTokens = fresh or (
            lambda request: token_from_answer(request.connection_id, invoke(request.as_payload())))
        self.window_seconds = window_seconds
        self.clock = clock
        self.coalesce = coalesce
        self._cache: dict[str, _Cached] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        #: connection id -> (version, until): a replacement after a 401 was refused.
        self._rejected: dict[str, tuple[int, int]] = {}
        self.calls = {"reads": 0, "decrypts": 0, "refresh_requests": 0}
        self.counts = ReadCounts() if counts is None else counts

    # ---------------------------------------------------------------- public
    def get_token(self, connection_id: str, *, min_validity_seconds: int | None = None) -> AccessToken:
        """A token valid at least ``min_validity_seconds`` more (default: 300 s for
        one-hour tokens, a share of that for shorter ones; capped at half the
        token's lifetime); see the module doc."""
        validate_connection_id(connection_id)
        if min_validity_seconds is not None and (
                isinstance(min_validity_seconds, bool) or not isinstance(min_validity_seconds, int)
                or not 0 <= min_validity_seconds <= MAX_MIN_VALIDITY_SECONDS):
            raise ValueError(f"min_validity_seconds must be an integer from 0 to {MAX_MIN_VALIDITY_SECONDS}")
        hit = self._cached(connection_id, min_validity_seconds)
        if hit is not None:
            self.counts.read(miss=False)
            return hit
        with self._lock_for(connection_id):
            hit = self._cached(connection_id, min_validity_seconds)
            if hit is not None:
                self.counts.read(miss=False)
                return hit  # another thread just loaded it
            self.counts.read(miss=True)
            return self._load(connection_id, min_validity_seconds)

    def get_access_token(self, connection_id: str) -> str:
        """The access token alone (see :meth:`get_token`)."""
        return self.get_token(connection_id).access_token

    def token_rejected(self, connection_id: str, access_token: str) -> AccessToken:
        """Invoiced answered 401 to ``access_token``: a token that should work, or an error."""
        validate_connection_id(connection_id)
        self.counts.read(miss=True)
        with self._lock_for(connection_id):
            cached = self._cache.get(connection_id)
            if cached and cached.token.access_token == access_token:
                del self._cache[connection_id]
            row, sealed = self._row(connection_id)
            if self._servable(row, sealed):
                current = self._decrypted(row, sealed)
                if current.access_token != access_token:
                    return current  # already replaced by a refresh
                self._cache.pop(connection_id, None)  # never serve the rejected token again
            refused = self._rejected.get(connection_id)
            if refused and refused[0] == row.version and self.clock() < refused[1]:
                raise TokenRejected(connection_id, "Invoiced rejected the token again; it was already replaced "
                                    "once for that reason", retry_at=refused[1])
            try:
                fresh = self.replace_rejected(connection_id, row.version)
            except TokenRejected as exc:
                self._rejected[connection_id] = (row.version, exc.retry_at or int(self.clock()) + 60)
                raise
            if fresh.access_token == access_token:
                raise TokenUnavailable(connection_id, "Invoiced rejected the token and it could not be replaced")
            return fresh

    def replace_rejected(self, connection_id: str, version: int) -> AccessToken:
        """A replacement for the token of ``version``, which Invoiced rejected
        (the newer stored one if there is one already)."""
        validate_connection_id(connection_id)
        row, sealed = self._row(connection_id)
        if row.version > version and self._servable(row, sealed):
            return self._decrypted(row, sealed)
        return self._fetch(FreshTokenRequest(connection_id, stale_version=version, rejected=True))

    def forget(self, connection_id: str | None = None) -> None:
        """Drop cached tokens (one connection, or all)."""
        if connection_id is None:
            self._cache.clear()
        else:
            self._cache.pop(connection_id, None)

    # ---------------------------------------------------------------- internals
    def _cached(self, connection_id: str, min_validity_seconds: int | None) -> AccessToken | None:
        cached = self._cache.get(connection_id)
        now = self.clock()
        if (cached and now < cached.good_until and now - cached.checked_at < self.recheck_seconds
                and cached.token.expires_at - now >= _needed(min_validity_seconds, cached.lifetime)):
            return cached.token
        return None

    def _lock_for(self, connection_id: str) -> Any:
        if not self.coalesce:
            return _NO_LOCK
        with self._guard:
            return self._locks.setdefault(connection_id, threading.Lock())

    def _load(self, connection_id: str, min_validity_seconds: int | None) -> AccessToken:
        row, sealed = self._row(connection_id)
        needed = _needed(min_validity_seconds, row.token_lifetime)
        if self._servable(row, sealed) and row.expires_at - self.clock() >= max(needed, 1):
            return self._decrypted(row, sealed)
        # Expiring, flagged (a lost answer to settle), or stored in the
        # pre-split format that only a refresher may open.
        fresh = self._fetch(FreshTokenRequest(connection_id, min_validity_seconds, stale_version=row.version))
        if fresh.expires_at - self.clock() < _needed(min_validity_seconds, self._lifetime_of(fresh)):
            raise TokenUnavailable(connection_id, "the access token has expired and was not refreshed")
        return fresh

    def _servable(self, row: Connection, sealed: Any) -> bool:
        """Whether the stored access token may be handed out as it is.

        Not while a lost answer is unsettled: then :class:`TokenUnavailable`
        until the refresher may settle it, and after that only the tokens
        function's answer. Not in the pre-split format either (a refresher
        must open it).
        """
        if row.outcome_unknown_at:
            if row.next_attempt_at > self.clock():
                raise TokenUnavailable(
                    row.connection_id, f"connection {row.connection_id!r} is being checked after a lost "
                    "answer from Invoiced; its stored token may be dead", retry_at=row.next_attempt_at)
            return False
        return bool(sealed.split)

    def _row(self, connection_id: str) -> tuple[Connection, Any]:
        """The current row and its ciphertexts, or the error that its status means."""
        self.calls["reads"] += 1
        found = self.store.get_connection(connection_id, consistent=True)
        if found is None:
            raise ConnectionNotFound(connection_id, f"no connection {connection_id!r}")
        row, sealed = found
        if row.status is ConnectionStatus.NEEDS_REAUTH:
            raise NeedsReauthorization(connection_id, f"connection {connection_id!r} needs to be reconnected")
        if row.status is ConnectionStatus.REVOKED or sealed is None:
            raise ConnectionRevoked(connection_id, f"connection {connection_id!r} was disconnected")
        return row, sealed

    def _decrypted(self, row: Connection, sealed: Any) -> AccessToken:
        """The row's access token (decrypted only if its version is new to us), cached."""
        cached = self._cache.get(row.connection_id)
        if cached and cached.token.version == row.version:
            access_token = cached.token.access_token
        else:
            self.calls["decrypts"] += 1
            access_token = self.cipher.decrypt_access(row.connection_id, sealed)
        token = AccessToken(row.connection_id, access_token, row.expires_at, row.api_base_url, row.tenant_id,
                            row.version)
        self._remember(token, refresh_at=row.refresh_at, lifetime=row.token_lifetime)
        return token

    def _remember(self, token: AccessToken, *, refresh_at: int | None, lifetime: int) -> None:
        self._cache[token.connection_id] = _Cached(token, self._horizon(token.expires_at, refresh_at, lifetime),
                                                   self.clock(), lifetime)

    def _good_until(self, row: Connection) -> float:
        """Until when the row's token may be served from memory."""
        return self._horizon(row.expires_at, row.refresh_at, row.token_lifetime)

    def _horizon(self, expires_at: int, refresh_at: int | None, lifetime: int) -> float:
        until = expires_at - min_validity(lifetime)
        if refresh_at is not None:
            # The scheduler may rotate it from refresh_at - window on.
            until = min(until, refresh_at - self.window_seconds - rotation_margin(lifetime))
        return until

    def _lifetime_of(self, token: AccessToken) -> int:
        """A token from the tokens function: its lifetime is at least what it has left."""
        return lifetime_of(token.expires_at, int(self.clock()))

    def _fetch(self, request: FreshTokenRequest) -> AccessToken:
        """A fresh token (a locked refresh if needed), cached."""
        self.calls["refresh_requests"] += 1
        token = self._fresh(request)
        self._remember(token, refresh_at=None, lifetime=self._lifetime_of(token))
        return token

    def read_stored(self, connection_id: str) -> AccessToken:
        """The stored token as it is now (one consistent read), whatever its validity,
        unless it may be dead (a lost answer) or is in the pre-split format."""
        row, sealed = self._row(connection_id)
        if not self._servable(row, sealed):
            if row.outcome_unknown_at:
                raise TokenUnavailable(connection_id, "the stored token may be dead (a lost answer is being "
                                       "settled)", retry_at=max(row.next_attempt_at, int(self.clock()) + 1))
            raise TokenUnavailable(connection_id, "the stored tokens are in the pre-split format")
        return self._decrypted(row, sealed)


def _needed(min_validity_seconds: int | None, lifetime: int) -> int:
    """The least time left a token must have: what was asked (capped at what a
    token of ``lifetime`` can give), or the default for that lifetime."""
    if min_validity_seconds is None:
        return min_validity(lifetime)
    return min(min_validity_seconds, max_min_validity(lifetime))


_NO_LOCK = contextlib.nullcontext()  # reusable: holds nothing
