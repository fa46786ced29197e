"""The app API: what the integrating app calls, from any language, over Lambda Invoke with IAM.

Three functions, each with a managed policy that allows invoking it and
nothing else (``docs/app-api.md``; the JSON Schemas in ``contracts/app-api/v1``):

* **links** (``LinkIssuerPolicyArn``): ``{"connection_id", "return_to"?, "ttl_seconds"?}``
  -> a signed connect link and its expiry. The signing key never leaves the
  service.
* **tokens** (``TokenVendingPolicyArn``): ``{"connection_id", "min_validity_seconds"?}``
  -> a valid access token, its expiry, the API URL of the connection's own
  Invoiced environment, the tenant and the version. An expiring token is
  refreshed under the connection's lease; a warm function answers from its
  cache with no AWS call. The SDK's readers ask it too, with
  ``rejected_version`` after a 401.
* **connection-state** (``ConnectionStatePolicyArn``): one connection's state,
  or the connections that need attention (from the sparse attention-index,
  never a Scan). Never a token.

Every request may say ``"api_version": 1``; every answer says it. Bad input
gets ``{"error": code, "message": ...}`` with a code from :data:`ERROR_CODES`;
nothing escapes unhandled.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

from invoiced_connect.core import b64url
from invoiced_connect.core.lifetimes import DEFAULT_REFRESH_WINDOW_SECONDS
from invoiced_connect.core.models import (
    Attention,
    Connection,
    ConnectionStatus,
    InvalidConnectionId,
    validate_connection_id,
)
from invoiced_connect.sdk.tokens import (
    MAX_MIN_VALIDITY_SECONDS,
    AccessToken,
    ConnectionNotFound,
    ConnectionRevoked,
    FreshTokenRequest,
    NeedsReauthorization,
    ReadCounts,
    TokenError,
    TokenReader,
    TokenRejected,
    TokenUnavailable,
)

logger = logging.getLogger(__name__)

API_VERSION = 1
#: Every ``error`` an answer can carry (``contracts/app-api/v1/error.json``).
ERROR_CODES = (
    "bad_request",
    "unsupported_version",
    "not_found",
    "return_url_refused",
    "needs_reauth",
    "revoked",
    "unavailable",
    "token_rejected",
    "not_configured",
    "internal_error",
)
MAX_LIST_LIMIT = 500
DEFAULT_LIST_LIMIT = 100
#: The order in which the attention listing walks the index's partitions.
ATTENTION_ORDER = (Attention.NEEDS_REAUTH, Attention.FAILING, Attention.KEPT_ASIDE)
#: How long the tokens function waits for another refresher's lease, at most.
REFRESH_WAIT_SECONDS = 20
#: Leave this much of the invocation for the refresh itself and the answer.
VENDOR_RESERVE_SECONDS = 15.0


class AppApiError(Exception):
    """An answer ``{"error": code, "message": ...}`` (never carries a token)."""

    def __init__(self, code: str, message: str, *, retry_at: int | None = None) -> None:
        assert code in ERROR_CODES, code
        super().__init__(message)
        self.code = code
        self.retry_at = retry_at

    def as_answer(self) -> dict[str, Any]:
        answer: dict[str, Any] = {"error": self.code, "message": str(self)}
        if self.retry_at is not None:
            answer["retry_at"] = self.retry_at
        return answer


def answer(call: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``call`` and turn every failure into a typed error answer."""
    from invoiced_connect.core.settings import SettingsError

    try:
        return {"api_version": API_VERSION, **call()}
    except AppApiError as exc:
        return exc.as_answer()
    except TokenError as exc:
        return AppApiError(exc.code, str(exc), retry_at=exc.retry_at).as_answer()
    except SettingsError as exc:
        logger.error("the app API is not configured", extra={"error_type": type(exc).__name__})
        return AppApiError("not_configured", str(exc)).as_answer()
    except Exception as exc:  # noqa: BLE001 - the caller gets a typed answer; the log has the type and place
        logger.exception("app API request failed", extra={"error_type": type(exc).__name__})
        return AppApiError("internal_error", "the request failed; see the function's logs").as_answer()


# ---------------------------------------------------------------- request parsing
def parse(event: Any, *, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """The request object, checked for its version and its property names."""
    if not isinstance(event, Mapping):
        raise AppApiError("bad_request", "the request must be a JSON object")
    version = event.get("api_version", API_VERSION)
    if isinstance(version, bool) or version != API_VERSION:
        raise AppApiError("unsupported_version", f"api_version must be {API_VERSION}")
    known = {"api_version", *required, *optional}
    unknown = sorted(str(name) for name in event if name not in known)
    if unknown:
        raise AppApiError("bad_request", f"unknown properties: {', '.join(unknown)}")
    missing = [name for name in required if name not in event]
    if missing:
        raise AppApiError("bad_request", f"missing properties: {', '.join(missing)}")
    return dict(event)


def connection_id_of(request: Mapping[str, Any]) -> str:
    try:
        return validate_connection_id(request.get("connection_id"))
    except InvalidConnectionId as exc:
        raise AppApiError("bad_request", str(exc)) from None


def integer(request: Mapping[str, Any], name: str, *, low: int, high: int, default: int | None) -> int | None:
    """An integer property within ``[low, high]`` (booleans and floats refused)."""
    value = request.get(name, default)
    if value is None and default is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise AppApiError("bad_request", f"{name} must be an integer from {low} to {high}")
    return value


# ---------------------------------------------------------------- links
def create_link(event: Any, *, settings: Any, signing_key: Callable[[], str], now: float | None = None
                ) -> dict[str, Any]:
    """``links.request`` -> ``links.answer`` (the link's URL and expiry)."""
    from invoiced_connect.connect.links import DEFAULT_TTL, MAX_TTL, MIN_TTL, build_claims, link_url, sign_link_token
    from invoiced_connect.core.return_urls import ReturnUrlError

    request = parse(event, required=("connection_id",), optional=("return_to", "ttl_seconds", "allow_company_change"))
    connection_id = connection_id_of(request)
    ttl = integer(request, "ttl_seconds", low=int(MIN_TTL.total_seconds()), high=int(MAX_TTL.total_seconds()),
                  default=int(DEFAULT_TTL.total_seconds()))
    return_to = request.get("return_to")
    if return_to is not None and not isinstance(return_to, str):
        raise AppApiError("bad_request", "return_to must be a string")
    allow_company_change = request.get("allow_company_change", False)
    if not isinstance(allow_company_change, bool):
        raise AppApiError("bad_request", "allow_company_change must be true or false")
    try:
        claims = build_claims(connection_id, return_to, timedelta(seconds=ttl), settings.return_url_allowlist,
                              now=now, allow_company_change=allow_company_change)
    except ReturnUrlError as exc:
        raise AppApiError("return_url_refused", str(exc)) from None
    url = link_url(settings.connect_url, sign_link_token(claims, signing_key()))
    return {"connection_id": connection_id, "url": url, "expires_at": claims.expires_at}


# ---------------------------------------------------------------- tokens
class TokenVendor:
    """The tokens function's logic: a reader whose fresh tokens come from an in-process refresh.

    ``refresher``: an :class:`invoiced_connect.lifecycle.refresh.Refresher`, built on
    first need (a warm cache hit needs none).
    """

    def __init__(self, *, store: Any, cipher: Any, refresher: Callable[[], Any],
                 window_seconds: int = DEFAULT_REFRESH_WINDOW_SECONDS, clock: Callable[[], float] = time.time,
                 counts: ReadCounts | None = None) -> None:
        self._refresher = refresher
        self.wait_seconds = float(REFRESH_WAIT_SECONDS)
        self.reader = TokenReader(store=store, cipher=cipher, fresh=self._refresh, window_seconds=window_seconds,
                                  clock=clock, counts=counts)

    def get_token(self, event: Any, remaining_seconds: float = 60.0) -> dict[str, Any]:
        """``tokens.request`` -> ``tokens.answer``."""
        request = parse(event, required=("connection_id",), optional=("min_validity_seconds", "rejected_version"))
        connection_id = connection_id_of(request)
        if "min_validity_seconds" in request and "rejected_version" in request:
            raise AppApiError("bad_request", "give min_validity_seconds or rejected_version, not both")
        min_validity = integer(request, "min_validity_seconds", low=0, high=MAX_MIN_VALIDITY_SECONDS, default=None)
        rejected = integer(request, "rejected_version", low=0, high=2**53, default=None)
        self.wait_seconds = max(0.0, min(float(REFRESH_WAIT_SECONDS), remaining_seconds - VENDOR_RESERVE_SECONDS))
        if rejected is not None:
            token = self.reader.replace_rejected(connection_id, rejected)
        else:
            token = self.reader.get_token(connection_id, min_validity_seconds=min_validity)
        return token.as_answer()

    def _refresh(self, request: FreshTokenRequest) -> AccessToken:
        """A locked refresh here (the lease makes it the only one), then the stored token."""
        from invoiced_connect.lifecycle.refresh import Mode, RefreshOutcome

        refresher = self._refresher()
        result = refresher.refresh(request.connection_id, mode=Mode.ON_DEMAND, stale_version=request.stale_version,
                                   wait_seconds=self.wait_seconds, after_rejection=request.rejected)
        cid, outcome = request.connection_id, result.outcome
        if outcome is RefreshOutcome.NOT_FOUND:
            raise ConnectionNotFound(cid, f"no connection {cid!r}")
        if outcome is RefreshOutcome.NEEDS_REAUTH or result.status == ConnectionStatus.NEEDS_REAUTH:
            raise NeedsReauthorization(cid, f"connection {cid!r} needs to be reconnected")
        if result.status == ConnectionStatus.REVOKED:
            raise ConnectionRevoked(cid, f"connection {cid!r} was disconnected")
        if outcome is RefreshOutcome.TOKEN_REJECTED:
            raise TokenRejected(cid, "Invoiced rejected the token again after it was replaced for that reason; "
                                "check where it is sent", retry_at=result.retry_at)
        if outcome not in (RefreshOutcome.REFRESHED, RefreshOutcome.RACE_RECOVERED, RefreshOutcome.ALREADY_FRESH,
                           RefreshOutcome.RESCUE_APPLIED):
            raise TokenUnavailable(cid, f"no fresh token now ({outcome.value})", retry_at=result.retry_at)
        return self.reader.read_stored(cid)


# ---------------------------------------------------------------- connection state
def connection_view(row: Connection) -> dict[str, Any]:
    """What the app may know of a connection (``connection-state.answer``): never a token."""
    # A closed connection says why it closed; an active one why it needs attention, if it does.
    reason = row.status_reason if row.status is not ConnectionStatus.ACTIVE else (row.last_error if row.attention else None)
    return {
        "connection_id": row.connection_id,
        "status": row.status.value,
        "tenant_id": row.tenant_id,
        "company_name": row.company_name,
        "issuer": row.issuer,
        "api_url": row.api_base_url,
        "expires_at": row.expires_at,
        "refreshed_at": row.refreshed_at,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "version": row.version,
        "attention": row.attention.value if row.attention else None,
        "reason": reason,
        "failure_count": row.failure_count,
        "retry_at": row.next_attempt_at or None,
    }


def connection_state(event: Any, *, store: Any) -> dict[str, Any]:
    """``connection-state.request`` -> ``connection-state.answer``."""
    action = event.get("action") if isinstance(event, Mapping) else None
    if action == "get":
        request = parse(event, required=("action", "connection_id"))
        connection_id = connection_id_of(request)
        row = store.get_connection_state(connection_id)
        if row is None:
            raise AppApiError("not_found", f"no connection {connection_id!r}")
        return {"connection": connection_view(row)}
    if action == "list_attention":
        request = parse(event, required=("action",), optional=("limit", "next_token"))
        limit = integer(request, "limit", low=1, high=MAX_LIST_LIMIT, default=DEFAULT_LIST_LIMIT)
        assert limit is not None
        return _list_attention(store, limit, request.get("next_token"))
    parse(event, required=("action",), optional=("connection_id", "limit", "next_token"))
    raise AppApiError("bad_request", "action must be get or list_attention")


def _list_attention(store: Any, limit: int, next_token: Any) -> dict[str, Any]:
    kind_index, start = _read_next_token(next_token)
    entries: list[dict[str, Any]] = []
    while kind_index < len(ATTENTION_ORDER) and len(entries) < limit:
        page, start = store.attention(ATTENTION_ORDER[kind_index], limit=limit - len(entries), start=start)
        entries += [{"connection_id": e.connection_id, "attention": e.attention.value, "reason": e.reason,
                     "status": e.status, "since": e.since} for e in page]
        if start is None:
            kind_index += 1
    more = kind_index < len(ATTENTION_ORDER)
    return {"connections": entries, "next_token": _next_token(kind_index, start) if more else None}


def _next_token(kind_index: int, start: dict[str, Any] | None) -> str:
    return b64url.encode(json.dumps({"k": kind_index, "s": start}, separators=(",", ":")).encode("utf-8"))


def _read_next_token(token: Any) -> tuple[int, dict[str, Any] | None]:
    if token is None:
        return 0, None
    try:
        if not isinstance(token, str) or len(token) > 2048:
            raise ValueError
        decoded = json.loads(b64url.decode(token))
        kind_index, start = decoded["k"], decoded["s"]
        if isinstance(kind_index, bool) or not isinstance(kind_index, int) or not 0 <= kind_index < len(
                ATTENTION_ORDER) or not (start is None or _is_index_key(start)):
            raise ValueError
    except (ValueError, KeyError, TypeError):
        raise AppApiError("bad_request", "next_token is not one this API gave") from None
    return kind_index, start


def _is_index_key(start: Any) -> bool:
    """A LastEvaluatedKey of the attention-index: its keys and the table's, as DynamoDB values."""
    return (isinstance(start, dict) and set(start) <= {"pk", "attention", "updated_at"} and "pk" in start
            and all(isinstance(v, dict) and len(v) == 1 and set(v) <= {"S", "N"}
                    and all(isinstance(x, str) for x in v.values()) for v in start.values()))
