"""Scheduled: queue the connections that are due a refresh (see invoiced_connect.scheduler)."""

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

from invoiced_connect.logs import use_handler_logger
from invoiced_connect.scheduler import default_scheduler

logger = Logger()
metrics = Metrics()
use_handler_logger(logger)


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def handler(event, context):
    report = default_scheduler().run(lambda: context.get_remaining_time_in_millis() / 1000)
    metrics.add_metric(name="ConnectionsDue", unit=MetricUnit.Count, value=report.due)
    metrics.add_metric(name="ConnectionsQueued", unit=MetricUnit.Count, value=report.queued)
    return report.as_dict()
