"""Invoked by the app (ConnectionStatePolicyArn): a connection's state, or those needing attention.

Its role reads no ciphertext: DynamoDB is asked for the state attributes only
(see invoiced_connect.app_api.service and store.STATE_ATTRIBUTES).
"""

from aws_lambda_powertools import Logger, Metrics

from invoiced_connect.entry import app_api, observability
from invoiced_connect.entry.logs import use_handler_logger

logger = Logger()
metrics = Metrics()
use_handler_logger(logger)


@logger.inject_lambda_context(clear_state=True, log_event=False)
@metrics.log_metrics
def handler(event, context):
    return observability.serve_app_api("State", event, context, logger=logger, metrics=metrics,
                                       call=app_api.handle_connection_state)
