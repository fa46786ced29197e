"""Example consumer: list a connection's invoices through the layer's SDK.

Event: ``{"connection_id": "...", "status"?: "past_due", "max_pages"?: 3}``.
The logic lives in ``invoiced_connect.entry.list_invoices``; only the (validated)
connection id is logged, never a token. Shows how a Lambda of yours emits
the SDK's TokenReads and TokenCacheMisses metrics.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.utilities.typing import LambdaContext

from invoiced_connect.entry import observability
from invoiced_connect.entry.list_invoices import handle_list_invoices
from invoiced_connect.entry.logs import use_handler_logger

logger = Logger()
metrics = Metrics()
tracer = Tracer(patch_modules=("botocore", "requests"))  # the token read, Invoiced's API; URLs without query
use_handler_logger(logger)  # the SDK's own records (retries, token refreshes) as this handler's JSON lines


@logger.inject_lambda_context(clear_state=True, log_event=False)
@tracer.capture_lambda_handler(capture_response=False)  # the answer holds the customer's invoices
@metrics.log_metrics
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    observability.correlate(logger, context)
    connection_id = observability.event_connection_id(event)
    if connection_id:
        logger.append_keys(connection_id=connection_id)
        tracer.put_annotation(key="connection_id", value=connection_id)
    try:
        result = handle_list_invoices(event)
    finally:
        observability.add_token_metrics(metrics)  # TokenReads, TokenCacheMisses: counters, no I/O
    outcome = result.get("error", "ok")
    tracer.put_annotation(key="outcome", value=outcome)
    logger.info("list invoices finished", extra={"outcome": outcome, "count": result.get("count")})
    return result
