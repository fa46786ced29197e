"""Metrics, log keys and trace annotations: the names the handlers (and SDK users) share.

Every metric is a CloudWatch EMF count in the namespace of
``POWERTOOLS_METRICS_NAMESPACE`` (the stack: ``InvoicedConnect``) with the
``service`` dimension of ``POWERTOOLS_SERVICE_NAME``:

==========================  ==========================================================
``ConnectStarted``          ``/connect`` sent the browser to Invoiced
``ConnectFailed``           a connect attempt ended without a connection; its own
                            extra dimension ``reason`` (:data:`CONNECT_FAILURE_REASONS`)
``Connected``               ``/callback`` stored a new connection
``Reconnected``             ``/callback`` re-authorized an existing connection
``Refresh<Outcome>``        one per refresh outcome (``RefreshRefreshed``,
                            ``RefreshNeedsReauth``: a connection now needing
                            re-authorization, ...)
``RefreshFailed``           outcomes that left the connection without a new token
                            (:data:`REFRESH_FAILED_OUTCOMES`)
``RefreshPermanentFailure`` failures no retry fixes (:data:`REFRESH_PERMANENT_OUTCOMES`)
``TokenReads``              access tokens asked of the SDK's reader
``TokenCacheMisses``        of those, the ones not answered from its memory cache
==========================  ==========================================================

Nothing here does I/O, and importing it costs only the standard library;
Powertools is imported where a function needs it (every handler has loaded
it already).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from invoiced_connect.core.models import InvalidConnectionId, validate_connection_id

if TYPE_CHECKING:
    from aws_lambda_powertools import Logger, Metrics, Tracer

    from invoiced_connect.connect.flow import FlowReport

CONNECT_STARTED = "ConnectStarted"
CONNECT_FAILED = "ConnectFailed"
CONNECTED = "Connected"
RECONNECTED = "Reconnected"
REFRESH_FAILED = "RefreshFailed"
REFRESH_PERMANENT_FAILURE = "RefreshPermanentFailure"
REPLACED_GRANT_REVOKED = "ReplacedGrantRevoked"
REPLACED_GRANT_REVOKE_FAILED = "ReplacedGrantRevokeFailed"
TOKEN_READS = "TokenReads"  # noqa: S105 - a metric name
TOKEN_CACHE_MISSES = "TokenCacheMisses"  # noqa: S105 - a metric name
#: The extra dimension of ``ConnectFailed`` (and of no other metric).
REASON_DIMENSION = "reason"

#: The values of ``ConnectFailed``'s ``reason`` dimension. The logs carry the
#: finer reason (``bad_link``, ``no_cookie``, ``issuer``, ...).
CONNECT_FAILURE_REASONS = frozenset({
    "link_invalid",        # /connect: no link, or malformed, tampered, foreign-key or expired
    "return_url_refused",  # /connect: the link's return URL is no longer allowlisted
    "link_used",           # the link already completed a connection
    "bad_request",         # a parameter repeated or too long; no state or no code on /callback
    "not_configured",      # a setting or secret is missing or invalid
    "state_rejected",      # /callback: replayed, expired, foreign or cookie-less state
    "denied",              # the customer declined on Invoiced
    "authorize_error",     # Invoiced redirected back with another error
    "code_rejected",       # Invoiced refused the code (expired or already used)
    "client_auth_failed",  # Invoiced refused the client id or secret
    "exchange_failed",     # the code exchange failed otherwise (unreachable, bad answer)
    "store_failed",        # the tokens could not be encrypted or stored
    "unexpected",          # anything else (a plain 500 page)
})

#: Refresh outcomes after which the connection has no new token (``RefreshFailed``).
#: Not counted: ``rescue_discarded`` (kept-aside tokens revoked because a
#: reconnect or disconnect had moved the connection on: nothing is lost) and the
#: worker's own ``error`` (an unexpected exception; the message is redelivered,
#: so counting it would count one failure up to five times; see ``RefreshError``
#: and the dead-letter alarm).
REFRESH_FAILED_OUTCOMES = frozenset({"transient", "unknown_outcome", "needs_reauth", "client_auth_failed",
                                     "kept_aside"})
#: Of those, the ones that no retry fixes (``RefreshPermanentFailure``): the
#: customer must reconnect, or the operator must fix the client credentials.
REFRESH_PERMANENT_OUTCOMES = frozenset({"needs_reauth", "client_auth_failed"})


def outcome_metric_name(outcome: str, prefix: str = "Refresh") -> str:
    """``prefix`` + the outcome in CamelCase: ``unknown_outcome`` -> ``RefreshUnknownOutcome``."""
    return prefix + "".join(part.capitalize() for part in outcome.split("_"))


def refresh_aggregates(outcomes: Mapping[str, int]) -> dict[str, int]:
    """``RefreshFailed`` and ``RefreshPermanentFailure`` for these outcome counts (zeros included)."""
    return {
        REFRESH_FAILED: sum(count for outcome, count in outcomes.items() if outcome in REFRESH_FAILED_OUTCOMES),
        REFRESH_PERMANENT_FAILURE: sum(
            count for outcome, count in outcomes.items() if outcome in REFRESH_PERMANENT_OUTCOMES),
    }


def add_counts(metrics: Metrics, counts: Mapping[str, int]) -> None:
    """Add each ``name: count`` as a Count metric (to be flushed by ``log_metrics``)."""
    for name, count in counts.items():
        metrics.add_metric(name=name, unit="Count", value=count)


# ---------------------------------------------------------------------- the connect flow
_FLOW_METRICS = {"started": CONNECT_STARTED, "connected": CONNECTED, "reconnected": RECONNECTED}
#: ``FlowReport.replaced_grant`` -> its metric (a reconnect's old grant at Invoiced).
_REPLACED_GRANT_METRICS = {"revoked": REPLACED_GRANT_REVOKED, "revoke_failed": REPLACED_GRANT_REVOKE_FAILED}


def count_flow(metrics: Metrics, report: FlowReport) -> None:
    """Count what one ``/connect`` or ``/callback`` request came to.

    ``ConnectFailed`` goes out at once as its own EMF document (Powertools'
    ``single_metric``), so its ``reason`` dimension never lands on another
    metric; the others join the invocation's metrics, flushed at its end. A
    request that neither started, finished nor failed a connect (the outcome
    page, a 404) counts nothing.
    """
    if report.outcome == "failed":
        from aws_lambda_powertools.metrics import single_metric

        reason = report.reason if report.reason in CONNECT_FAILURE_REASONS else "unexpected"
        with single_metric(name=CONNECT_FAILED, unit="Count", value=1,
                           default_dimensions=metrics.default_dimensions) as metric:
            metric.add_dimension(name=REASON_DIMENSION, value=reason)
    elif report.outcome in _FLOW_METRICS:
        metrics.add_metric(name=_FLOW_METRICS[report.outcome], unit="Count", value=1)
    if report.replaced_grant in _REPLACED_GRANT_METRICS:
        metrics.add_metric(name=_REPLACED_GRANT_METRICS[report.replaced_grant], unit="Count", value=1)


# ---------------------------------------------------------------------- the token SDK
def add_token_metrics(metrics: Metrics) -> dict[str, int]:
    """Add ``TokenReads`` and ``TokenCacheMisses`` since the last call (this process's readers).

    For your own Lambdas that use the SDK; call it once per invocation, inside
    a handler decorated with Powertools' ``@metrics.log_metrics``. Reading the
    counters is free (no I/O). Returns what was added.
    """
    from invoiced_connect.sdk.tokens import READ_COUNTS

    reads, misses = READ_COUNTS.take()
    counts = {TOKEN_READS: reads, TOKEN_CACHE_MISSES: misses}
    add_counts(metrics, counts)
    return counts


# ---------------------------------------------------------------------- the app API
#: Invoiced rejected a stored token again after it was replaced for that reason.
TOKENS_REJECTED = "TokensRejected"
#: An app API request failed unexpectedly (the caller got ``internal_error``).
APP_API_INTERNAL_ERRORS = "AppApiInternalErrors"


def app_api_counts(kind: str, answer: Mapping[str, Any]) -> dict[str, int]:
    """The metrics of one app API answer: ``<kind>Requests``, ``<kind>Errors`` on an
    error, and :data:`TOKENS_REJECTED` / :data:`APP_API_INTERNAL_ERRORS` for those."""
    counts = {f"{kind}Requests": 1}
    error = answer.get("error")
    if error:
        counts[f"{kind}Errors"] = 1
    if error == "token_rejected":
        counts[TOKENS_REJECTED] = 1
    if error == "internal_error":
        counts[APP_API_INTERNAL_ERRORS] = 1
    return counts


def serve_app_api(kind: str, event: Any, context: Any, *, logger: Logger, metrics: Metrics,
                  call: Callable[[Any], dict[str, Any]], token_metrics: bool = False) -> dict[str, Any]:
    """What every app API handler does around ``call(event)``: correlate the log
    lines, key them by the (valid) connection id, count the answer, log its
    outcome. The answer may hold a token or a link: it is never logged."""
    correlate(logger, context)
    connection_id = event_connection_id(event)
    if connection_id:
        logger.append_keys(connection_id=connection_id)
    try:
        answer = call(event)
    finally:
        if token_metrics:
            add_token_metrics(metrics)  # TokenReads, TokenCacheMisses: counters, no I/O
    add_counts(metrics, app_api_counts(kind, answer))
    logger.info("app API request handled", extra={"kind": kind, "outcome": answer.get("error", "ok")})
    return answer


# ---------------------------------------------------------------------- logs and traces
def loggable_connection_id(value: object) -> str | None:
    """``value`` if it is a valid connection id (safe to log and annotate), else ``None``."""
    try:
        return validate_connection_id(value)  # type: ignore[arg-type]
    except InvalidConnectionId:
        return None


def event_connection_id(event: object) -> str | None:
    """An invocation event's ``connection_id`` if it is valid, else ``None``."""
    return loggable_connection_id(event.get("connection_id") if isinstance(event, Mapping) else None)


def correlate(logger: Logger, context: Any) -> None:
    """Give the invocation's log lines a correlation id: the one already set, else Lambda's request id."""
    if logger.get_correlation_id() is None:
        logger.set_correlation_id(getattr(context, "aws_request_id", None))


RecordScope = Callable[[str, str | None], contextlib.AbstractContextManager[dict[str, str]]]


def record_scope(logger: Logger, tracer: Tracer) -> RecordScope:
    """Per SQS record: log keys ``message_id`` and ``connection_id``, and a trace
    subsegment annotated with them and with the ``outcome`` the caller puts in
    the yielded dict."""

    @contextlib.contextmanager
    def scope(message_id: str, connection_id: str | None) -> Iterator[dict[str, str]]:
        keys = {"message_id": message_id, **({"connection_id": connection_id} if connection_id else {})}
        logger.append_keys(**keys)
        facts: dict[str, str] = {}
        try:
            with tracer.provider.in_subsegment("## refresh message") as subsegment:
                if subsegment is not None and connection_id:
                    subsegment.put_annotation(key="connection_id", value=connection_id)
                try:
                    yield facts
                finally:
                    if subsegment is not None and "outcome" in facts:
                        subsegment.put_annotation(key="outcome", value=facts["outcome"])
        finally:
            logger.remove_keys(list(keys))

    return scope
