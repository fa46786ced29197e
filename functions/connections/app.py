"""Invoked: a locked refresh or a disconnect of one connection (see invoiced_connect.operations)."""

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

from invoiced_connect import operations
from invoiced_connect.logs import use_handler_logger

logger = Logger()
metrics = Metrics()
use_handler_logger(logger)


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def handler(event, context):
    answer = operations.handle(event, context.get_remaining_time_in_millis() / 1000)
    name = operations.metric_name(answer)
    if name:
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=1)
    return answer
