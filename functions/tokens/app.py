"""Invoked by the app (TokenVendingPolicyArn) and the SDK's readers: a valid access token.

A warm function answers from its cache with no AWS call; an expiring token
is refreshed here under the connection's lease (see invoiced_connect.app_api.service).
The answer holds a token: it is never logged, traced or put in a metric.
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
    def get_token(request):
        return app_api.handle_get_token(request, context.get_remaining_time_in_millis() / 1000)

    return observability.serve_app_api("Token", event, context, logger=logger, metrics=metrics, call=get_token,
                                       token_metrics=True)
