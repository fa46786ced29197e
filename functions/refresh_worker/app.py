"""SQS: refresh each queued connection under its lease (see invoiced_connect.lifecycle.worker).

Log lines carry the invocation's request id as their correlation id, and
``message_id`` / ``connection_id`` while a record is handled; each record is
a trace subsegment annotated with its connection id and outcome. A lost
answer is queued again for its probe (delayed; sqs:SendMessage on its own queue).
"""

from aws_lambda_powertools import Logger, Metrics, Tracer

from invoiced_connect.cloud import aws
from invoiced_connect.core.settings import get_settings
from invoiced_connect.entry import observability
from invoiced_connect.entry.connections import shared_refresher
from invoiced_connect.entry.logs import use_handler_logger
from invoiced_connect.lifecycle.worker import process_batch, queue_settle_checks

logger = Logger()
metrics = Metrics()
tracer = Tracer(patch_modules=("botocore", "requests"))  # AWS calls and Invoiced's token endpoint, URLs without query
use_handler_logger(logger)


@logger.inject_lambda_context(clear_state=True, log_event=False)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def handler(event, context):
    observability.correlate(logger, context)
    shared = shared_refresher()
    report = process_batch(
        event.get("Records", []),
        shared,
        lambda: context.get_remaining_time_in_millis() / 1000,
        reserve_seconds=shared.policy.lease_seconds / 2,
        record_scope=observability.record_scope(logger, tracer),
    )
    if report.settle_checks and get_settings().refresh_queue_url:  # lost answers: back for their probe
        queue_settle_checks(aws.client("sqs"), get_settings().refresh_queue_url, report.settle_checks)
    observability.add_counts(metrics, {**report.metrics(), **report.aggregates()})
    return report.response()
