"""SQS: refresh each queued connection under its lease (see invoiced_connect.lifecycle.worker).

Log lines carry the invocation's request id as their correlation id, and
``message_id`` / ``connection_id`` while a record is handled; each record is
a trace subsegment annotated with its connection id and outcome. A lost
answer is queued again for its probe (delayed; sqs:SendMessage on its own queue).
"""

from aws_lambda_powertools import Logger, Metrics, Tracer

from invoiced_connect.entry import observability
from invoiced_connect.entry.logs import use_handler_logger
from invoiced_connect.entry.pipeline import refresh_batch

logger = Logger()
metrics = Metrics()
tracer = Tracer(patch_modules=("botocore", "requests"))  # AWS calls and Invoiced's token endpoint, URLs without query
use_handler_logger(logger)


@logger.inject_lambda_context(clear_state=True, log_event=False)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def handler(event, context):
    observability.correlate(logger, context)
    report = refresh_batch(event.get("Records", []), lambda: context.get_remaining_time_in_millis() / 1000,
                           observability.record_scope(logger, tracer))
    observability.add_counts(metrics, {**report.metrics(), **report.aggregates()})
    return report.response()
