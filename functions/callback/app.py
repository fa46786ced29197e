"""GET /callback: finish the flow, exchange the code once, store the tokens encrypted.

Traced by Lambda's active tracing only (see functions/connect/app.py).
Metrics: Connected, Reconnected, or ConnectFailed by reason.
"""

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver
from aws_lambda_powertools.logging import correlation_paths

from invoiced_connect.entry import web

logger = Logger()
metrics = Metrics()
app = APIGatewayHttpResolver(debug=False)  # its debug mode prints whole events: the code, state, cookies
web.install(app, logger)
web.preload_for_snapshot("boto3", "requests")  # with SnapStart only: the first request's imports


@app.get("/callback")
def callback():
    return web.to_response(
        web.flow().callback(web.request_query(app), web.request_cookies(app), web.reference(app), web.report(app))
    )


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP, clear_state=True,
                              log_event=False)
def handler(event, context):
    return web.resolve(app, logger, metrics, event, context)  # also flushes the metrics
