"""Invoked by the app (LinkIssuerPolicyArn): make a signed connect link (see invoiced_connect.app_api.service).

The answer holds the link, a bearer credential for one connection: it is
never logged; the log line says the outcome and the connection id only.
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
    return observability.serve_app_api("Link", event, context, logger=logger, metrics=metrics,
                                       call=app_api.handle_create_link)
