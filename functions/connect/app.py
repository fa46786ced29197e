"""GET /connect: verify the signed connect link and send the browser to Invoiced."""

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver
from aws_lambda_powertools.logging import correlation_paths

from invoiced_connect import web

logger = Logger()
app = APIGatewayHttpResolver()
web.configure(app, logger)


@app.get("/connect")
def connect():
    return web.to_response(web.flow().start(web.request_query(app), web.reference(app)))


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP, clear_state=True)
def handler(event, context):
    return app.resolve(event, context)
