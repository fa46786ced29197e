"""Glue between API Gateway (via Powertools' resolver) and the flow.

Handlers stay a few lines: they route, call the flow, and hand its
:class:`~invoiced_connect.connect.pages.HttpResult` back through :func:`to_response`.
Anything unexpected becomes a plain 500 page with a reference id, never a
stack trace or a reflected value. :func:`resolve` resolves one event and
counts what it came to (see :func:`invoiced_connect.entry.observability.count_flow`);
the connection id joins the log keys as soon as the flow knows it.

Only the standard library and what Powertools' logger and resolver load are
imported here: ``/connect`` pays every import at cold start.
"""

from __future__ import annotations

import importlib
import os
import uuid
from typing import TYPE_CHECKING

from aws_lambda_powertools.event_handler import Response

from invoiced_connect import runtime
from invoiced_connect.cloud.secrets import SecretError
from invoiced_connect.connect import messages, pages
from invoiced_connect.connect.flow import ConnectFlow, FlowReport, parse_cookies, parse_query
from invoiced_connect.core.settings import SettingsError
from invoiced_connect.entry import observability
from invoiced_connect.entry.logs import use_handler_logger

if TYPE_CHECKING:
    from typing import Any

    from aws_lambda_powertools import Logger, Metrics
    from aws_lambda_powertools.event_handler import APIGatewayHttpResolver

_REPORT = "flow_report"  # the key of this request's FlowReport in the resolver's context


def preload_for_snapshot(*modules: str) -> None:
    """Under SnapStart, import now what the first request would import later.

    Lambda sets ``AWS_LAMBDA_INITIALIZATION_TYPE=snap-start`` while it
    initializes a version to snapshot; what is imported then is in the
    snapshot, so restored functions do not pay for it. Without SnapStart
    these modules stay lazy: importing them here would only move their cost
    from the first request to the import. Nothing is connected or read here:
    credentials and connections made before a snapshot go stale after it.
    """
    if os.environ.get("AWS_LAMBDA_INITIALIZATION_TYPE") == "snap-start":
        for name in modules:
            importlib.import_module(name)


def to_response(result: pages.HttpResult) -> Response:
    return Response(
        status_code=result.status,
        content_type=result.content_type,
        body=result.body,
        headers=result.headers,
        cookies=list(result.cookies),  # Powertools emits str(cookie) for each
    )


def flow() -> ConnectFlow:
    """This execution environment's flow (built on the first request)."""
    return runtime.current().flow


def branding() -> pages.Branding:
    """The integrating app's name, support contact and default return URL for
    the handler's own pages; none of them when the settings do not load."""
    try:
        settings = runtime.current().settings
    except SettingsError:
        return pages.Branding()
    return pages.Branding(settings.app_name, settings.support_contact, settings.default_return_url)


def error_response(status: int, message: messages.Message, ref: str) -> Response:
    return to_response(pages.error_page(status, message.title, message.text, ref, branding=branding()))


def reference(app: APIGatewayHttpResolver) -> str:
    """API Gateway's request id: what a user quotes and what the logs carry."""
    return app.current_event.request_context.request_id or uuid.uuid4().hex


def request_query(app: APIGatewayHttpResolver) -> dict[str, list[str]]:
    return parse_query(app.current_event.raw_query_string)


def request_cookies(app: APIGatewayHttpResolver) -> dict[str, str]:
    return parse_cookies(app.current_event.cookies or [])


def report(app: APIGatewayHttpResolver) -> FlowReport:
    """This request's report (see :func:`resolve`)."""
    found = app.context.get(_REPORT)
    return found if isinstance(found, FlowReport) else FlowReport()


def resolve(app: APIGatewayHttpResolver, logger: Logger, metrics: Metrics, event: Any, context: Any) -> Any:
    """Resolve one API Gateway event; then count what it came to (ConnectStarted,
    ConnectFailed by reason, Connected, Reconnected).

    The invocation writes one EMF document at most. The flush here stands in
    for ``@metrics.log_metrics``: a failure has gone out on its own with its
    ``reason`` dimension, and a request that counts nothing (the outcome
    page, a 404) writes no empty document and no "no metrics" warning.
    """
    flow_report = FlowReport(on_connection_id=lambda connection_id: logger.append_keys(connection_id=connection_id))
    app.append_context(**{_REPORT: flow_report})
    try:
        return app.resolve(event, context)
    finally:
        observability.count_flow(metrics, flow_report)
        if metrics.metric_set:
            metrics.flush_metrics()


def install(app: APIGatewayHttpResolver, logger: Logger) -> None:
    """Route the package's own log records through the handler's JSON logger
    and turn unexpected exceptions into a plain 500 page."""
    use_handler_logger(logger)

    @app.not_found
    def _not_found(exc: Exception) -> Response:
        return error_response(404, messages.not_found(), reference(app))

    @app.exception_handler([SettingsError, SecretError])
    def _not_configured(exc: Exception) -> Response:
        report(app).fail("not_configured")
        ref = reference(app)
        # These messages name the variable or secret at fault, never a value.
        logger.error("not configured", extra={"error": str(exc), "reference": ref})
        return error_response(503, messages.not_configured(), ref)

    @app.exception_handler(Exception)
    def _unexpected(exc: Exception) -> Response:
        report(app).fail("unexpected")  # unless the flow said what failed (store_failed)
        ref = reference(app)
        # The exception type only: messages of AWS or HTTP errors can quote
        # request data.
        logger.error("unexpected error", extra={"error_type": type(exc).__name__, "reference": ref})
        return error_response(500, messages.unexpected(), ref)
