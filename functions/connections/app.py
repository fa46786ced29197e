"""Invoked: a locked refresh or a disconnect of one connection (see invoiced_connect.entry.connections).

Log lines carry the invocation's request id as their correlation id and the
(valid) connection id; the trace is annotated with both and the outcome.
"""

from aws_lambda_powertools import Logger, Metrics, Tracer

from invoiced_connect.entry import connections, observability
from invoiced_connect.entry.logs import use_handler_logger

logger = Logger()
metrics = Metrics()
tracer = Tracer(patch_modules=("botocore", "requests"))  # AWS calls and Invoiced, URLs without query
use_handler_logger(logger)


@logger.inject_lambda_context(clear_state=True, log_event=False)
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def handler(event, context):
    observability.correlate(logger, context)
    action = connections.requested_action(event)
    connection_id = observability.event_connection_id(event)
    if connection_id:
        logger.append_keys(connection_id=connection_id)
        tracer.put_annotation(key="connection_id", value=connection_id)
    answer = connections.handle(event, context.get_remaining_time_in_millis() / 1000)
    outcome = str(answer.get("outcome") or answer.get("error"))
    tracer.put_annotation(key="outcome", value=outcome)
    observability.add_counts(metrics, connections.metric_counts(answer, action))
    logger.info("request handled", extra={"action": action, "outcome": outcome})
    return answer
