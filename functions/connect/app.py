"""GET /connect: verify the signed connect link and send the browser to Invoiced.

Traced by Lambda's active tracing only: no Powertools Tracer here, since
building one imports the X-Ray SDK, which costs more at cold start than the
whole request. Metrics: ConnectStarted, or ConnectFailed by reason.
"""

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver
from aws_lambda_powertools.logging import correlation_paths

from invoiced_connect.entry import web

logger = Logger()
metrics = Metrics()
app = APIGatewayHttpResolver(debug=False)  # its debug mode prints whole events: the link, cookies, headers
web.install(app, logger)
web.preload_for_snapshot("boto3")  # with SnapStart only: the first request's imports


@app.get("/connect")
def connect():
    return web.to_response(web.flow().start(web.request_query(app), web.reference(app), web.report(app)))


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP, clear_state=True,
                              log_event=False)
def handler(event, context):
    return web.resolve(app, logger, metrics, event, context)  # also flushes the metrics
