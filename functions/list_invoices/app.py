"""Example consumer: list a connection's invoices through the layer's SDK.

Event: ``{"connection_id": "...", "status"?: "past_due", "max_pages"?: 3}``.
The logic lives in ``invoiced_connect.list_invoices``; only the (validated)
connection id is logged, never a token.
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from invoiced_connect.list_invoices import handle_list_invoices, loggable_connection_id
from invoiced_connect.logs import use_handler_logger

logger = Logger()
use_handler_logger(logger)  # the SDK's own records (retries, token refreshes) as this handler's JSON lines


@logger.inject_lambda_context(clear_state=True)
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    logger.append_keys(connection_id=loggable_connection_id(event))
    result = handle_list_invoices(event)
    logger.info("list invoices finished", extra={"outcome": result.get("error", "ok"), "count": result.get("count")})
    return result
