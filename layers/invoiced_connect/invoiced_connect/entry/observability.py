"""Emitting metrics, log keys and trace annotations, for the handlers (and SDK users).

The metric names and what each counts are :mod:`invoiced_connect.core.metrics`'s;
this module adds them to a Powertools ``Metrics`` (EMF), keys the log lines
and annotates traces. Nothing here does I/O, and importing it costs only the
standard library; Powertools is imported where a function needs it (every
handler has loaded it already).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from invoiced_connect.core.metrics import (
    APP_API_INTERNAL_ERRORS,
    CONNECT_FAILED,
    CONNECT_FAILURE_REASONS,
    REASON_DIMENSION,
    TOKEN_CACHE_MISSES,
    TOKEN_READS,
    TOKENS_REJECTED,
)
from invoiced_connect.core.models import InvalidConnectionId, validate_connection_id

if TYPE_CHECKING:
    from aws_lambda_powertools import Logger, Metrics, Tracer

    from invoiced_connect.connect.flow import FlowReport
    from invoiced_connect.lifecycle.worker import RecordScope

def add_counts(metrics: Metrics, counts: Mapping[str, int]) -> None:
    """Add each ``name: count`` as a Count metric (to be flushed by ``log_metrics``)."""
    for name, count in counts.items():
        metrics.add_metric(name=name, unit="Count", value=count)


# ---------------------------------------------------------------------- the connect flow
def count_flow(metrics: Metrics, report: FlowReport) -> None:
    """Count what one ``/connect`` or ``/callback`` request came to.

    ``ConnectFailed`` goes out at once as its own EMF document (Powertools'
    ``single_metric``), so its ``reason`` dimension never lands on another
    metric; the others join the invocation's metrics, flushed at its end. A
    request that neither started, finished nor failed a connect (the outcome
    page, a 404) counts nothing.
    """
    if report.failed:
        from aws_lambda_powertools.metrics import single_metric

        reason = report.reason if report.reason in CONNECT_FAILURE_REASONS else "unexpected"
        with single_metric(name=CONNECT_FAILED, unit="Count", value=1,
                           default_dimensions=metrics.default_dimensions) as metric:
            metric.add_dimension(name=REASON_DIMENSION, value=reason)
    elif report.outcome is not None:
        metrics.add_metric(name=report.outcome.metric_name, unit="Count", value=1)
    if report.replaced_grant is not None:  # a reconnect's old grant at Invoiced: revoked or not
        metrics.add_metric(name=report.replaced_grant.metric_name, unit="Count", value=1)


# ---------------------------------------------------------------------- the token SDK
def add_token_metrics(metrics: Metrics) -> dict[str, int]:
    """Add ``TokenReads`` and ``TokenCacheMisses`` since the last call (this process's
    readers: those :mod:`invoiced_connect.runtime` built).

    For your own Lambdas that use the SDK (``from invoiced_connect import
    add_token_metrics``); call it once per invocation, inside a handler
    decorated with Powertools' ``@metrics.log_metrics``. Reading the counters
    is free (no I/O). Returns what was added.
    """
    from invoiced_connect import runtime

    reads, misses = runtime.current().read_counts.take()
    counts = {TOKEN_READS: reads, TOKEN_CACHE_MISSES: misses}
    add_counts(metrics, counts)
    return counts


# ---------------------------------------------------------------------- the app API


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
