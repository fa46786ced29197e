"""SQS: refresh each queued connection under its lease (see invoiced_connect.worker)."""

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit

from invoiced_connect.logs import use_handler_logger
from invoiced_connect.operations import shared_refresher
from invoiced_connect.worker import process_batch

logger = Logger()
metrics = Metrics()
use_handler_logger(logger)


@logger.inject_lambda_context(clear_state=True)
@metrics.log_metrics
def handler(event, context):
    shared = shared_refresher()
    report = process_batch(
        event.get("Records", []),
        shared,
        lambda: context.get_remaining_time_in_millis() / 1000,
        reserve_seconds=shared.policy.lease_seconds / 2,
    )
    for name, count in report.metrics().items():
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=count)
    return report.response()
