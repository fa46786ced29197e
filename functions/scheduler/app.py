"""Scheduled: queue the connections that are due a refresh (see invoiced_connect.lifecycle.scheduler).

Log lines carry the EventBridge event's id as their correlation id.
"""

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.logging import correlation_paths

from invoiced_connect.entry import observability
from invoiced_connect.entry.logs import use_handler_logger
from invoiced_connect.entry.pipeline import run_schedule

logger = Logger()
metrics = Metrics()
tracer = Tracer(patch_modules=("botocore",))  # DynamoDB queries and SQS sends; never their payloads
use_handler_logger(logger)


@logger.inject_lambda_context(correlation_id_path=correlation_paths.EVENT_BRIDGE, clear_state=True, log_event=False)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def handler(event, context):
    observability.correlate(logger, context)
    report = run_schedule(lambda: context.get_remaining_time_in_millis() / 1000)
    observability.add_counts(metrics, report.metrics())
    tracer.put_annotation(key="queued", value=report.queued)
    return report.as_dict()
