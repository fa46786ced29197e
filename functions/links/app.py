"""Invoked by the app (LinkIssuerPolicyArn): make a signed connect link (see invoiced_connect.app_api).

The answer holds the link, a bearer credential for one connection: it is
never logged; the log line says the outcome and the connection id only.
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
    answer = app_api.handle_create_link(event)
    observability.add_counts(metrics, observability.app_api_counts("Link", answer))
    logger.info("link request handled", extra={"outcome": answer.get("error", "ok")})
    return answer
