"""The example clients of the app API (examples/node, examples/python), run as a
consumer runs them: a separate process that reaches the functions only through
Lambda's Invoke API (``AWS_ENDPOINT_URL_LAMBDA``), with its own credentials and
the three function names.

First against stand-in functions on a local Invoke API, for what the real ones
rarely do (error answers, a failed invocation, a 401 from Invoiced); then the
whole loop on the local stack: make a link, open it as a browser would, approve
on the local Invoiced, and call Invoiced's API with the vended token. Neither
client ever prints a token.
"""

from __future__ import annotations

import html
import json
import os
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from local.lambda_api import LambdaApi
from local.lambda_runtime import LocalFunction
from local.template import FunctionSpec
from tests.support.browser import COOKIE_RE, callback
from tests.support.lifecycle import stored_tokens

ROOT = Path(__file__).resolve().parents[2]
NODE_CLIENT = ROOT / "examples" / "node"
PYTHON_CLIENT = ROOT / "examples" / "python" / "app_client.py"
CLIENTS = ("node", "python")
REGION = "us-east-1"


# ---------------------------------------------------------------- running a client
def _node_or_skip() -> str:
    """The node executable, once examples/node is installed; in CI a missing one fails."""
    node = shutil.which("node")
    problem = None
    if node is None:
        problem = "no node on this machine (the Node example needs Node.js >= 20)"
    elif not (NODE_CLIENT / "node_modules" / "@aws-sdk" / "client-lambda").is_dir():
        problem = "examples/node is not installed: npm ci --prefix examples/node (make test runs it)"
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the Node example: {problem}")
        pytest.skip(problem)
    return node


@pytest.fixture(params=CLIENTS)
def command(request) -> list[str]:
    """How to start the client under test, before its arguments."""
    if request.param == "node":
        return [_node_or_skip(), str(NODE_CLIENT / "cli.mjs")]
    return [sys.executable, str(PYTHON_CLIENT)]


def consumer_env(lambda_url: str, stack_name: str) -> dict[str, str]:
    """A consumer's environment: the Invoke endpoint, a region, credentials and the three names; nothing else."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "AWS_ENDPOINT_URL_LAMBDA": lambda_url,
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED": "true",
        "LINKS_FUNCTION_NAME": f"{stack_name}-links",
        "TOKENS_FUNCTION_NAME": f"{stack_name}-tokens",
        "CONNECTION_STATE_FUNCTION_NAME": f"{stack_name}-connection-state",
    }


def run_client(command: list[str], env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*command, *args], env=env, capture_output=True, text=True, timeout=60, check=False)


def answer_of(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr}"
    return json.loads(result.stdout)


def error_of(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The one-line JSON error report a failing command prints on stderr."""
    assert result.returncode == 1, f"exit {result.returncode}: {result.stdout}{result.stderr}"
    assert not result.stdout
    lines = [line for line in result.stderr.splitlines() if line.startswith("{")]
    assert len(lines) == 1, result.stderr
    return json.loads(lines[0])


# ---------------------------------------------------------------- stand-in functions
STAND_IN_STACK = "stand-in"
OLD_TOKEN = "OLDaccess" + "o" * 24
NEW_TOKEN = "NEWaccess" + "n" * 24
SECRET_IN_EXCEPTION = "SECRETinException" + "s" * 16


class StandIn(LocalFunction):
    """A function whose handler is a Python callable; remembers every request."""

    def __init__(self, suffix: str, handler: Callable[[dict[str, Any]], Any]) -> None:
        name = f"{STAND_IN_STACK}-{suffix}"
        super().__init__(FunctionSpec(suffix, ROOT, "stand_in.handler", 128, 10.0, {}), function_name=name,
                         arn=f"arn:aws:lambda:{REGION}:123456789012:function:{name}")
        self.handler = handler
        self.requests: list[dict[str, Any]] = []

    def invoke(self, event: Any, *, request_id: str | None = None) -> Any:
        self.requests.append(event)
        return json.loads(json.dumps(self.handler(event)))


class FakeInvoicedApi(BaseHTTPRequestHandler):
    """``GET /companies/current``: 401 for the old token, the company for the new one."""

    seen: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        token = self.headers.get("Authorization", "").removeprefix("Bearer ")
        FakeInvoicedApi.seen.append(token)
        if self.path != "/companies/current" or token != NEW_TOKEN:
            status, body = 401, {"type": "authentication_error", "message": "Unauthorized"}
        else:
            status, body = 200, {"id": 4242, "object": "company", "name": "Stand-in Co", "email": "x@example.test"}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def fake_api() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeInvoicedApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def _token_answer(event: dict[str, Any], api_url: str) -> dict[str, Any]:
    connection_id = event["connection_id"]
    if connection_id == "cooling":
        return {"error": "unavailable", "message": "no valid token right now", "retry_at": 1767225600}
    if connection_id == "gone":
        return {"error": "needs_reauth", "message": "the customer must reconnect"}
    if connection_id == "broken":
        raise RuntimeError(f"failed while holding {SECRET_IN_EXCEPTION}")
    rotated = event.get("rejected_version") == 1
    return {"api_version": 1, "connection_id": connection_id, "access_token": NEW_TOKEN if rotated else OLD_TOKEN,
            "token_type": "Bearer", "expires_at": 1767225600, "api_url": api_url, "tenant_id": "4242",
            "version": 2 if rotated else 1}


@dataclass
class StandInStack:
    url: str
    functions: dict[str, StandIn]


@pytest.fixture(scope="module")
def stand_in_stack(fake_api) -> Iterator[StandInStack]:
    functions = {
        "links": StandIn("links", lambda event: {
            "api_version": 1, "connection_id": event["connection_id"],
            "url": "http://127.0.0.1:1/connect?link=v1.stand-in", "expires_at": 1767225600}),
        "tokens": StandIn("tokens", lambda event: _token_answer(event, fake_api)),
        "connection-state": StandIn("connection-state", lambda event: {
            "api_version": 1, "connection": {"connection_id": event["connection_id"], "status": "active",
                                             "attention": None, "retry_at": None}}),
    }
    with LambdaApi({f.spec.logical_id: f for f in functions.values()}, host="127.0.0.1") as api:
        yield StandInStack(api.url, functions)


@pytest.fixture
def stand_in(stand_in_stack) -> dict[str, StandIn]:
    for function in stand_in_stack.functions.values():
        function.requests.clear()
    return stand_in_stack.functions


@pytest.fixture
def stand_in_env(stand_in_stack, stand_in) -> dict[str, str]:
    return consumer_env(stand_in_stack.url, STAND_IN_STACK)


def test_link_sends_exactly_the_given_options_through_the_endpoint_variable(command, stand_in, stand_in_env):
    answer = answer_of(run_client(command, stand_in_env, "link", "acme-7", "--return-to",
                                  "https://app.example.test/done", "--ttl", "120"))
    assert answer == {"api_version": 1, "connection_id": "acme-7",
                      "url": "http://127.0.0.1:1/connect?link=v1.stand-in", "expires_at": 1767225600}
    answer_of(run_client(command, stand_in_env, "link", "acme-8"))
    assert stand_in["links"].requests == [
        {"api_version": 1, "connection_id": "acme-7", "return_to": "https://app.example.test/done",
         "ttl_seconds": 120},
        {"api_version": 1, "connection_id": "acme-8"},  # no nulls for absent options
    ]


def test_state_asks_for_one_connection(command, stand_in, stand_in_env):
    answer = answer_of(run_client(command, stand_in_env, "state", "acme-7"))
    assert answer["connection"]["status"] == "active"
    assert stand_in["connection-state"].requests == [{"api_version": 1, "action": "get", "connection_id": "acme-7"}]


def test_token_is_printed_redacted(command, stand_in_env):
    result = run_client(command, stand_in_env, "token", "acme-7")
    answer = answer_of(result)
    assert answer["access_token"] == "[redacted]"
    assert answer["version"] == 1 and answer["token_type"] == "Bearer"
    assert OLD_TOKEN not in result.stdout + result.stderr


@pytest.mark.parametrize(("connection_id", "expected"), [
    ("cooling", {"error": "unavailable", "message": "no valid token right now", "retry_at": 1767225600}),
    ("gone", {"error": "needs_reauth", "message": "the customer must reconnect"}),
])
def test_an_error_answer_is_reported_with_its_code_and_retry_at(command, stand_in_env, connection_id, expected):
    assert error_of(run_client(command, stand_in_env, "token", connection_id)) == expected


def test_a_failed_invocation_is_a_function_error_without_the_exception_message(command, stand_in_env):
    result = run_client(command, stand_in_env, "token", "broken")
    report = error_of(result)
    assert report["error"] == "function_error"
    assert "RuntimeError" in report["message"]
    assert SECRET_IN_EXCEPTION not in result.stdout + result.stderr


def test_a_missing_function_name_is_not_configured(command, stand_in_env):
    env = {name: value for name, value in stand_in_env.items() if name != "TOKENS_FUNCTION_NAME"}
    assert error_of(run_client(command, env, "token", "acme-7"))["error"] == "not_configured"


def test_company_asks_for_a_new_token_once_after_a_401(command, stand_in, stand_in_env):
    FakeInvoicedApi.seen.clear()
    result = run_client(command, stand_in_env, "company", "acme-7")
    assert answer_of(result) == {"id": 4242, "name": "Stand-in Co"}
    assert FakeInvoicedApi.seen == [OLD_TOKEN, NEW_TOKEN]
    assert stand_in["tokens"].requests == [{"api_version": 1, "connection_id": "acme-7"},
                                           {"api_version": 1, "connection_id": "acme-7", "rejected_version": 1}]
    assert OLD_TOKEN not in result.stdout + result.stderr and NEW_TOKEN not in result.stdout + result.stderr


# ---------------------------------------------------------------- the local stack
def connect_as_browser(stack, link_url: str, company_id: int) -> requests.Response:
    """Open a connect link as a browser would, approve on the local Invoiced, land on the outcome page."""
    assert link_url.startswith(stack.connect_url + "?"), link_url
    start = requests.get(link_url, allow_redirects=False, timeout=30)
    assert start.status_code == 302, start.text
    assert start.headers["Location"].startswith(stack.invoiced.base_url)
    cookie = COOKIE_RE.search(start.headers["Set-Cookie"]).group(1)
    back = stack.invoiced.consent(start.headers["Location"], company_id=company_id)
    assert back.startswith(stack.callback_url + "?"), back
    return callback(back, cookie)


@pytest.mark.parametrize(("client", "company_index"), [("node", 0), ("python", 1)])
def test_link_consent_and_company_through_the_app_api(stack, invoiced, client, company_index):
    command = [_node_or_skip(), str(NODE_CLIENT / "cli.mjs")] if client == "node" else [sys.executable,
                                                                                        str(PYTHON_CLIENT)]
    env = consumer_env(stack.lambda_url, stack.stack_name)
    company = invoiced.companies[company_index]
    connection_id = f"app-{client}-{uuid.uuid4().hex[:8]}"

    link = answer_of(run_client(command, env, "link", connection_id))
    assert link["api_version"] == 1 and link["connection_id"] == connection_id
    page = connect_as_browser(stack, link["url"], company.id)
    assert page.status_code == 200, page.text
    assert f"Connected to {html.escape(company.name)}" in page.text

    assert answer_of(run_client(command, env, "company", connection_id)) == {"id": company.id, "name": company.name}

    token = run_client(command, env, "token", connection_id)
    answer = answer_of(token)
    assert answer["access_token"] == "[redacted]" and answer["tenant_id"] == str(company.id)
    assert answer["api_url"] == invoiced.api_url
    state = answer_of(run_client(command, env, "state", connection_id))["connection"]
    assert state["connection_id"] == connection_id and state["status"] == "active"
    assert state["company_name"] == company.name and state["tenant_id"] == str(company.id)
    access, refresh = stored_tokens(stack, connection_id)
    assert access not in token.stdout + token.stderr and refresh not in token.stdout + token.stderr


def test_an_unknown_connection_is_not_found_for_both_clients(stack, command):
    env = consumer_env(stack.lambda_url, stack.stack_name)
    missing = f"app-missing-{uuid.uuid4().hex[:8]}"
    assert error_of(run_client(command, env, "token", missing))["error"] == "not_found"
    assert error_of(run_client(command, env, "state", missing))["error"] == "not_found"
