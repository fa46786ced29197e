"""The reader SDK: a valid Invoiced access token for a connection, in one call.

    from invoiced_connect.tokens import get_access_token

    token = get_access_token("acme-7")

Attach the stack's ``TokenReaderPolicyArn`` to your function and add the
layer; set ``TABLE_NAME``, ``KMS_KEY_ID`` and ``CONNECTIONS_FUNCTION_NAME``
from the stack outputs (the stack's own functions have them).

How it stays correct when Invoiced revokes the old pair on every refresh:

* A token is cached in memory only while no refresher can have replaced it:
  until shortly before the scheduler may rotate it, and never past
  ``expires_at`` minus a margin. A cache miss is one consistent ``GetItem``;
  KMS is called only when the stored version changed.
* When the stored token is expired or about to be, the reader does not
  refresh it itself (it holds no client secret): it invokes the stack's
  connections function, which refreshes under the connection's lease, and
  then reads again. N readers at once cause one token request.
* After Invoiced answers 401, :meth:`TokenReader.token_rejected` reads again;
  if the stored token is newer it is returned, otherwise a locked refresh
  is requested for exactly that version.

Errors are typed: :class:`ConnectionNotFound`, :class:`NeedsReauthorization`,
:class:`ConnectionRevoked` (permanent until the customer reconnects), and
:class:`TokenUnavailable` (transient; ``retry_at`` says when to try again).

Readers count the tokens asked of them and the cache misses (no I/O);
:func:`invoiced_connect.observability.add_token_metrics` emits them as the
``TokenReads`` and ``TokenCacheMisses`` metrics.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from invoiced_connect.models import Connection, ConnectionStatus, validate_connection_id

#: Never hand out a token with less than this left; ask for a refresh instead.
MIN_VALIDITY_SECONDS = 300
#: The scheduler may rotate a token this long before its ``refresh_at`` (its
#: window), plus the schedule's interval and queueing; the cache ends earlier.
ROTATION_MARGIN_SECONDS = 600
#: How long the connections function may wait for another refresher's lease.
REFRESH_WAIT_SECONDS = 20


class TokenError(Exception):
    """Base of the SDK's errors; never carries a token."""

    def __init__(self, connection_id: str, message: str) -> None:
        super().__init__(message)
        self.connection_id = connection_id


class ConnectionNotFound(TokenError):
    """No connection with this id (never connected, or a typo)."""


class NeedsReauthorization(TokenError):
    """Invoiced no longer accepts the connection's refresh token: the customer must reconnect."""


class ConnectionRevoked(TokenError):
    """The connection was disconnected."""


class TokenUnavailable(TokenError):
    """No valid token right now (Invoiced unreachable, refresh cooling down); try again later."""

    def __init__(self, connection_id: str, message: str, retry_at: int | None = None) -> None:
        super().__init__(connection_id, message)
        self.retry_at = retry_at


@dataclass
class _Cached:
    version: int
    access_token: str = field(repr=False)
    good_until: float


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


#: What every reader of this process counts into, unless given its own;
#: ``invoiced_connect.observability.add_token_metrics`` emits it.
READ_COUNTS = ReadCounts()


def lambda_invoker(function_name: str, client_factory: Callable[[], Any] | None = None) -> Invoker:
    """Call the connections function synchronously with boto3 and return its answer."""

    def invoke(payload: dict[str, Any]) -> dict[str, Any]:
        from invoiced_connect import aws

        client = client_factory() if client_factory else aws.client("lambda")
        response = client.invoke(FunctionName=function_name, Payload=json.dumps(payload).encode("utf-8"))
        body = json.loads(response["Payload"].read() or b"null")
        if response.get("FunctionError") or not isinstance(body, dict):
            raise TokenUnavailable(payload.get("connection_id", ""), "the connections function failed")
        return body

    return invoke


class TokenReader:
    """Reads, caches and (through the connections function) refreshes tokens.

    Thread-safe. ``coalesce`` makes concurrent misses for one connection in
    this process wait for each other; correctness never depends on it (the
    lease does that across processes).
    """

    def __init__(
        self,
        *,
        store: Any,
        cipher: Any,
        invoke: Invoker,
        window_seconds: int = 15 * 60,
        clock: Callable[[], float] = time.time,
        coalesce: bool = True,
        counts: ReadCounts | None = None,
    ) -> None:
        self.store = store
        self.cipher = cipher
        self._invoke = invoke
        self.window_seconds = window_seconds
        self.clock = clock
        self.coalesce = coalesce
        self._cache: dict[str, _Cached] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self.calls = {"reads": 0, "decrypts": 0, "refresh_requests": 0}
        self.counts = READ_COUNTS if counts is None else counts

    # ---------------------------------------------------------------- public
    def get_access_token(self, connection_id: str) -> str:
        """A valid access token for ``connection_id`` (see the module doc)."""
        validate_connection_id(connection_id)
        cached = self._cache.get(connection_id)
        if cached and self.clock() < cached.good_until:
            self.counts.read(miss=False)
            return cached.access_token
        with self._lock_for(connection_id):
            cached = self._cache.get(connection_id)
            if cached and self.clock() < cached.good_until:
                self.counts.read(miss=False)
                return cached.access_token  # another thread just loaded it
            self.counts.read(miss=True)
            return self._load(connection_id)

    def token_rejected(self, connection_id: str, access_token: str) -> str:
        """Invoiced answered 401 to ``access_token``: a token that should work, or an error."""
        validate_connection_id(connection_id)
        self.counts.read(miss=True)
        with self._lock_for(connection_id):
            cached = self._cache.get(connection_id)
            if cached and cached.access_token == access_token:
                del self._cache[connection_id]
            row, token = self._read(connection_id)
            if token != access_token:
                return token  # already replaced by a refresh
            self._request_refresh(connection_id, stale_version=row.version)
            row, token = self._read(connection_id)
            if token == access_token:
                raise TokenUnavailable(connection_id, "Invoiced rejected the token and it could not be replaced")
            return token

    def disconnect(self, connection_id: str) -> dict[str, Any]:
        """Revoke the connection at Invoiced and erase its tokens (through the connections function)."""
        validate_connection_id(connection_id)
        self._cache.pop(connection_id, None)
        return self._invoke({"action": "disconnect", "connection_id": connection_id})

    def forget(self, connection_id: str | None = None) -> None:
        """Drop cached tokens (one connection, or all)."""
        if connection_id is None:
            self._cache.clear()
        else:
            self._cache.pop(connection_id, None)

    # ---------------------------------------------------------------- internals
    def _lock_for(self, connection_id: str) -> Any:
        if not self.coalesce:
            return _NO_LOCK
        with self._guard:
            return self._locks.setdefault(connection_id, threading.Lock())

    def _load(self, connection_id: str) -> str:
        row, token = self._read(connection_id)
        if row.expires_at - self.clock() < MIN_VALIDITY_SECONDS:
            self._request_refresh(connection_id, stale_version=row.version)
            row, token = self._read(connection_id)
            if row.expires_at - self.clock() < MIN_VALIDITY_SECONDS:
                raise TokenUnavailable(connection_id, "the access token has expired and was not refreshed")
        return token

    def _read(self, connection_id: str) -> tuple[Connection, str]:
        """The current row and its access token (decrypted only if its version is new to us)."""
        self.calls["reads"] += 1
        found = self.store.get_connection(connection_id, consistent=True)
        if found is None:
            raise ConnectionNotFound(connection_id, f"no connection {connection_id!r}")
        row, blob = found
        if row.status is ConnectionStatus.NEEDS_REAUTH:
            raise NeedsReauthorization(connection_id, f"connection {connection_id!r} needs to be reconnected")
        if row.status is ConnectionStatus.REVOKED or blob is None:
            raise ConnectionRevoked(connection_id, f"connection {connection_id!r} was disconnected")
        cached = self._cache.get(connection_id)
        if cached and cached.version == row.version:
            token = cached.access_token
        else:
            self.calls["decrypts"] += 1
            token, _ = self.cipher.decrypt(connection_id, blob)
        self._cache[connection_id] = _Cached(row.version, token, self._good_until(row))
        return row, token

    def _good_until(self, row: Connection) -> float:
        until = row.expires_at - MIN_VALIDITY_SECONDS
        if row.refresh_at is not None:
            # The scheduler may rotate it from refresh_at - window on.
            until = min(until, row.refresh_at - self.window_seconds - ROTATION_MARGIN_SECONDS)
        return until

    def _request_refresh(self, connection_id: str, *, stale_version: int) -> None:
        self.calls["refresh_requests"] += 1
        answer = self._invoke({"action": "refresh", "connection_id": connection_id, "stale_version": stale_version,
                               "wait_seconds": REFRESH_WAIT_SECONDS})
        outcome = answer.get("outcome")
        if "error" in answer:
            raise TokenUnavailable(connection_id, f"the refresh request was refused ({answer['error']})")
        if outcome == "not_found":
            raise ConnectionNotFound(connection_id, f"no connection {connection_id!r}")
        if outcome == "needs_reauth" or answer.get("status") == ConnectionStatus.NEEDS_REAUTH.value:
            raise NeedsReauthorization(connection_id, f"connection {connection_id!r} needs to be reconnected")
        if answer.get("status") == ConnectionStatus.REVOKED.value:
            raise ConnectionRevoked(connection_id, f"connection {connection_id!r} was disconnected")
        if outcome in ("busy", "cooling_down", "transient", "unknown_outcome", "client_auth_failed", "kept_aside"):
            retry_at = answer.get("retry_at")
            raise TokenUnavailable(connection_id, f"refresh not possible now ({outcome})",
                                   retry_at=retry_at if isinstance(retry_at, int) else None)


class _NoLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc_info: object) -> None:
        return None


_NO_LOCK = _NoLock()


@functools.cache
def default_reader() -> TokenReader:
    """The process-wide reader, configured from the environment on first use."""
    from invoiced_connect.crypto import TokenCipher
    from invoiced_connect.settings import get_settings
    from invoiced_connect.store import TokenStore

    settings = get_settings()
    return TokenReader(
        store=TokenStore(settings.table_name),
        cipher=TokenCipher(settings.kms_key_id),
        invoke=lambda_invoker(settings.require("connections_function_name")),
        window_seconds=settings.refresh_window_seconds,
    )


def get_access_token(connection_id: str) -> str:
    """A valid access token for ``connection_id``; see :class:`TokenReader`."""
    return default_reader().get_access_token(connection_id)


def disconnect(connection_id: str) -> dict[str, Any]:
    """Revoke ``connection_id`` at Invoiced and erase its tokens."""
    return default_reader().disconnect(connection_id)
