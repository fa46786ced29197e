"""Invoked by the app (TokenVendingPolicyArn) and the SDK's readers: a valid access token.

A warm function answers from its cache with no AWS call; an expiring token
is refreshed here under the connection's lease (see invoiced_connect.app_api).
The answer holds a token: it is never logged, traced or put in a metric.
"""

from aws_lambda_powertools import Logger, Metrics

from invoiced_connect import app_api, observability
from invoiced_connect.logs import use_handler_logger

logger = Logger()
metrics = Metrics()
use_handler_logger(logger)


@logger.inject_lambda_context(clear_state=True, log_event=False)
@metrics.log_metrics
def handler(event, context):
    observability.correlate(logger, context)
    connection_id = observability.event_connection_id(event)
    if connection_id:
        logger.append_keys(connection_id=connection_id)
    try:
        answer = app_api.handle_get_token(event, context.get_remaining_time_in_millis() / 1000)
    finally:
        observability.add_token_metrics(metrics)  # TokenReads, TokenCacheMisses: counters, no I/O
    observability.add_counts(metrics, observability.app_api_counts("Token", answer))
    logger.info("token request handled", extra={"outcome": answer.get("error", "ok")})
    return answer
