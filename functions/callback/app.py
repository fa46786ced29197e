"""GET /callback: finish the flow, exchange the code once, store the tokens encrypted."""

from aws_lambda_powertools import Logger
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver
from aws_lambda_powertools.logging import correlation_paths

from invoiced_connect import web

logger = Logger()
app = APIGatewayHttpResolver()
web.configure(app, logger)


@app.get("/callback")
def callback():
    return web.to_response(web.flow().callback(web.request_query(app), web.request_cookies(app), web.reference(app)))


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP, clear_state=True)
def handler(event, context):
    return app.resolve(event, context)
