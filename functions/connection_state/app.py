"""Invoked by the app (ConnectionStatePolicyArn): a connection's state, or those needing attention.

Its role reads no ciphertext: DynamoDB is asked for the state attributes only
(see invoiced_connect.app_api and store.STATE_ATTRIBUTES).
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
    answer = app_api.handle_connection_state(event)
    observability.add_counts(metrics, observability.app_api_counts("State", answer))
    logger.info("state request handled", extra={"outcome": answer.get("error", "ok")})
    return answer
