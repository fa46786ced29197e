"""Log hygiene, across every handler: nothing secret is ever written.

Each of the functions' handlers (imported from ``functions/<name>/app.py``
as the Lambda runtime does) runs through its success and failure paths
against the local stack, at DEBUG everywhere (``LOG_LEVEL`` and
``POWERTOOLS_LOG_LEVEL``, the root logger, the handlers' loggers), with
Powertools told by environment to log events and print them
(``POWERTOOLS_LOGGER_LOG_EVENT``, ``POWERTOOLS_EVENT_HANDLER_DEBUG``).
Canaries are planted or collected: the OAuth client secret (and a wrong
one), the link signing key, the connect links, every access and refresh
token the local Invoiced issues, the authorization codes, the states, the
PKCE verifiers, the binding cookies, a foreign cookie, an Authorization
header and a field of every event. None may appear, in any spelling (raw,
URL-encoded, JSON-escaped, base64 at any alignment: botocore at DEBUG would
log the base64 plaintext sent to KMS), in stdout, stderr, the EMF output or
any log record. And so that nothing passes by logging nothing, the handlers'
log lines must be JSON with a correlation id and, once known, the connection
id.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import parse_qs, urlencode, urlsplit

import boto3
import pytest

from invoiced_connect import runtime
from invoiced_connect.connect import flow as flow_module
from local.seed import connect as seed_connection
from local.seed import expire, invoiced_client, make_due, stored_tokens
from tests.support.handlers import Canaries, Capture, Handlers, Written
from tests.support.overrides import client_secret, private_refresh_queue

AUTH_HEADER_CANARY = "Bearer CANARYauthorizationHeader" + "a" * 16
COOKIE_CANARY = "CANARYforeignCookieValue" + "c" * 16
EVENT_CANARY = "CANARYeventFieldValue" + "e" * 16
WRONG_SECRET_CANARY = "CANARYwrongClientSecret" + "w" * 16
BROWSER = {"headers": {"Authorization": AUTH_HEADER_CANARY, "User-Agent": "hygiene"}}
FOREIGN_COOKIES = {"session": COOKIE_CANARY}


@dataclass
class Hygiene:
    stack: object
    handlers: Handlers
    canaries: Canaries
    capture: Capture

    # ------------------------------------------------------------ the checks
    def assert_clean(self) -> None:
        self.capture.take("end")
        leaks = self.canaries.found_in(self.capture.everything)
        assert not leaks, f"secrets written: {leaks}"
        assert len(self.canaries.values) >= 8

    def assert_structured(self, written: Written | None, *, correlation_id: str, connection_id: str | None = None,
                          expect_lines: bool = True) -> list[dict]:
        assert written is not None
        logs = written.logs()
        if expect_lines:
            assert logs, f"{written.label}: no log line at all"
        for line in logs:
            assert {"level", "message", "timestamp", "service", "function_request_id"} <= set(line), line
            assert line.get("correlation_id") == correlation_id, line
        if connection_id is not None:
            assert any(line.get("connection_id") == connection_id for line in logs), logs
            assert all(line.get("connection_id") in (None, connection_id) for line in logs), logs
        return logs

    # ------------------------------------------------------------ the browser and Invoiced
    def consent(self, location: str, *, approve: bool = True) -> str:
        """Approve (or deny) on the local Invoiced; the callback query it redirects with."""
        query = urlsplit(self.stack.invoiced.consent(location, approve=approve)).query
        self.canaries.add("authorization code", parse_qs(query).get("code", [None])[0])
        return query

    def start(self, connection_id: str):
        started = self.handlers.start(connection_id, cookies=FOREIGN_COOKIES, **BROWSER)
        self.canaries.add("connect link", started.link)
        self.canaries.add("binding cookie", started.cookie)
        return started

    def callback(self, query: str, cookie: str | None) -> dict:
        return self.handlers.callback(query, cookie, extra_cookies=FOREIGN_COOKIES, **BROWSER)


@pytest.fixture
def hygiene(stack, invoiced, capfd, monkeypatch) -> Iterator[Hygiene]:
    assert stack.wait_for_queues(30)
    canaries = Canaries()
    from invoiced_connect import runtime

    canaries.add("client secret", stack.client_secret)
    canaries.add("wrong client secret", WRONG_SECRET_CANARY)
    canaries.add("link signing key", runtime.current().secrets.get_field(stack.env["LINK_SIGNING_SECRET_ARN"], "current"))
    canaries.add("authorization header", AUTH_HEADER_CANARY.split(" ", 1)[1])
    canaries.add("foreign cookie", COOKIE_CANARY)
    canaries.add("event field", EVENT_CANARY)

    # Every token the local Invoiced issues, every state, binding and verifier the flow makes.
    oauth = stack.invoiced._oauth
    issue = oauth._issue_locked

    def recording_issue(*args, **kwargs):
        issued = issue(*args, **kwargs)
        canaries.add("access token", issued.access_token)
        canaries.add("refresh token", issued.refresh_token)
        return issued

    monkeypatch.setattr(oauth, "_issue_locked", recording_issue)
    random_token, new_verifier = flow_module.random_token, flow_module.new_verifier

    def recording_random_token(*args, **kwargs):
        value = random_token(*args, **kwargs)
        canaries.add("state or binding", value)
        return value

    def recording_new_verifier(*args, **kwargs):
        value = new_verifier(*args, **kwargs)
        canaries.add("PKCE verifier", value)
        return value

    monkeypatch.setattr(flow_module, "random_token", recording_random_token)
    monkeypatch.setattr(flow_module, "new_verifier", recording_new_verifier)

    for name in ("LOG_LEVEL", "POWERTOOLS_LOG_LEVEL"):
        monkeypatch.setenv(name, "DEBUG")
    monkeypatch.setenv("POWERTOOLS_LOGGER_LOG_EVENT", "true")  # the handlers say log_event=False
    monkeypatch.setenv("POWERTOOLS_EVENT_HANDLER_DEBUG", "true")  # the resolvers say debug=False
    capture = Capture(capfd)
    handlers = Handlers(stack, capture)  # imported now, with the environment above
    with capture.active():
        yield Hygiene(stack, handlers, canaries, capture)


# ------------------------------------------------------------------ /connect
def test_connect_writes_no_secret_and_logs_json_with_the_request_and_connection_ids(hygiene):
    handlers = hygiene.handlers
    connection_id = f"hyg-connect-{uuid.uuid4().hex[:6]}"
    started = hygiene.start(connection_id)
    logs = hygiene.assert_structured(handlers.last, correlation_id=handlers.last_request_id,
                                     connection_id=connection_id)
    assert any(line["message"] == "connect started" for line in logs)

    version, body, signature = started.link.split(".")
    tampered = f"{version}.{body}.{signature[:-4]}{'AAAA' if signature[-4:] != 'AAAA' else 'BBBB'}"
    hygiene.canaries.add("tampered link", tampered)
    response = handlers.connect(tampered, cookies=FOREIGN_COOKIES, **BROWSER)
    assert response["statusCode"] == 403
    logs = hygiene.assert_structured(handlers.last, correlation_id=handlers.last_request_id)
    assert [line["reason"] for line in logs if line["message"] == "connect refused"] == ["bad_signature"]
    assert all("connection_id" not in line for line in logs)  # an unverified link names nobody

    response = handlers.connect(started.link, cookies=FOREIGN_COOKIES, **BROWSER)  # not used yet: starts again
    assert response["statusCode"] == 302
    hygiene.assert_clean()


# ------------------------------------------------------------------ /callback
def test_callback_writes_no_secret_on_any_path(hygiene, invoiced):
    handlers = hygiene.handlers
    connection_id = f"hyg-callback-{uuid.uuid4().hex[:6]}"

    # Connected, then shown.
    started = hygiene.start(connection_id)
    query = hygiene.consent(started.location)
    response = hygiene.callback(query, started.cookie)
    assert response["statusCode"] == 303
    logs = hygiene.assert_structured(handlers.last, correlation_id=handlers.last_request_id,
                                     connection_id=connection_id)
    assert any(line["message"] == "connection saved" for line in logs)
    page = handlers.outcome_page(response)
    assert page["statusCode"] == 200 and "Connected to" in page["body"]
    hygiene.assert_structured(handlers.last, correlation_id=handlers.last_request_id, expect_lines=False)

    # The same callback again: the state is spent.
    response = hygiene.callback(query, started.cookie)
    logs = hygiene.assert_structured(handlers.last, correlation_id=handlers.last_request_id)
    assert [line["reason"] for line in logs if line["message"] == "callback refused"] == ["state_rejected"]
    assert handlers.outcome_page(response)["statusCode"] == 400

    # Reconnected.
    again = hygiene.start(connection_id)
    response = hygiene.callback(hygiene.consent(again.location), again.cookie)
    hygiene.assert_structured(handlers.last, correlation_id=handlers.last_request_id, connection_id=connection_id)
    assert handlers.outcome_page(response)["statusCode"] == 200

    # Denied on Invoiced.
    denied_id = f"{connection_id}-denied"
    denied = hygiene.start(denied_id)
    response = hygiene.callback(hygiene.consent(denied.location, approve=False), denied.cookie)
    logs = hygiene.assert_structured(handlers.last, correlation_id=handlers.last_request_id, connection_id=denied_id)
    assert any(line["message"] == "authorization not granted" for line in logs)

    # A code Invoiced does not know.
    bad_code_id = f"{connection_id}-badcode"
    bad = hygiene.start(bad_code_id)
    params = parse_qs(hygiene.consent(bad.location))
    wrong_code = params["code"][0][:-6] + ("000000" if not params["code"][0].endswith("000000") else "111111")
    hygiene.canaries.add("wrong authorization code", wrong_code)
    response = hygiene.callback(urlencode({"code": wrong_code, "state": params["state"][0]}), bad.cookie)
    logs = hygiene.assert_structured(handlers.last, correlation_id=handlers.last_request_id,
                                     connection_id=bad_code_id)
    assert [line["reason"] for line in logs if line["message"] == "callback refused"] == ["code_invalid"]

    # Invoiced's token endpoint failing.
    failing_id = f"{connection_id}-5xx"
    failing = hygiene.start(failing_id)
    query = hygiene.consent(failing.location)
    invoiced.faults.server_error_next = 1
    response = hygiene.callback(query, failing.cookie)
    logs = hygiene.assert_structured(handlers.last, correlation_id=handlers.last_request_id, connection_id=failing_id)
    assert any(line["message"] == "code exchange failed" for line in logs)
    assert handlers.outcome_page(response)["statusCode"] == 502

    # The client secret refused (a wrong one stored).
    refused_id = f"{connection_id}-secret"
    refused = hygiene.start(refused_id)
    query = hygiene.consent(refused.location)
    with client_secret(hygiene.stack, WRONG_SECRET_CANARY):
        response = hygiene.callback(query, refused.cookie)
    logs = hygiene.assert_structured(handlers.last, correlation_id=handlers.last_request_id, connection_id=refused_id)
    assert [line["reason"] for line in logs if line["message"] == "code exchange failed"] == ["invalid_client"]

    # No cookie, no state.
    hygiene.callback(query, None)
    hygiene.assert_structured(handlers.last, correlation_id=handlers.last_request_id)
    hygiene.callback("code=" + params["code"][0], refused.cookie)
    hygiene.assert_structured(handlers.last, correlation_id=handlers.last_request_id)
    hygiene.assert_clean()


# ------------------------------------------------------------------ background functions
def test_scheduler_writes_no_secret(hygiene, monkeypatch):
    stack, handlers = hygiene.stack, hygiene.handlers
    connection_id = f"hyg-sched-{uuid.uuid4().hex[:6]}"
    seed_connection(stack, connection_id)
    make_due(stack, connection_id)
    event_id = str(uuid.uuid4())
    with private_refresh_queue(monkeypatch) as queue_url:
        result = handlers.invoke("scheduler", handlers.scheduled_event(event_id, {"note": EVENT_CANARY}))
        bodies = [json.loads(m["Body"]) for m in boto3.client("sqs").receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages", [])]
    assert result["queued"] >= 1 and {"connection_id": connection_id, "kind": "refresh"} in bodies
    logs = hygiene.assert_structured(handlers.last, correlation_id=event_id)  # the EventBridge event's id
    assert any(line["message"] == "schedule run" for line in logs)
    hygiene.assert_clean()


def test_refresh_worker_writes_no_secret_on_any_outcome(hygiene, invoiced):
    stack, handlers = hygiene.stack, hygiene.handlers
    tag = uuid.uuid4().hex[:6]
    transient, refreshed, dead, unknown = (f"hyg-wk-{kind}-{tag}" for kind in ("transient", "ok", "dead", "lost"))
    for connection_id in (transient, refreshed, dead, unknown):
        seed_connection(stack, connection_id)
        make_due(stack, connection_id)
    invoiced_client(stack).revoke(stored_tokens(stack, dead)[0])  # Invoiced forgets the grant: needs re-auth

    def message(connection_id: str) -> str:
        return json.dumps({"connection_id": connection_id, "kind": "refresh", "note": EVENT_CANARY})

    records = [handlers.sqs_record(message(transient)), handlers.sqs_record(message(refreshed)),
               handlers.sqs_record(message(dead)), handlers.sqs_record(json.dumps({"note": EVENT_CANARY}))]
    invoiced.faults.server_error_next = 1  # the first token request of the batch
    request_id = str(uuid.uuid4())
    assert handlers.invoke("worker", {"Records": records}, request_id=request_id) == {"batchItemFailures": []}
    logs = hygiene.assert_structured(handlers.last, correlation_id=request_id)
    (batch,) = [line for line in logs if line["message"] == "refresh batch"]
    assert batch["outcomes"] == {"transient": 1, "refreshed": 1, "needs_reauth": 1, "malformed": 1}
    by_message = {record["messageId"]: connection_id
                  for record, connection_id in zip(records, (transient, refreshed, dead, None), strict=True)}
    keyed = [line for line in logs if "message_id" in line]
    assert keyed, "per-message lines carry the message id"
    for line in keyed:
        assert line.get("connection_id") == by_message[line["message_id"]], line
    assert {line["connection_id"] for line in keyed if "connection_id" in line} == {transient, dead}  # they log
    assert "message_id" not in batch and "connection_id" not in batch  # the per-record keys are gone again

    invoiced.faults.truncate_next = 1  # Invoiced rotates, the answer is cut: unknown outcome
    request_id = str(uuid.uuid4())
    handlers.invoke("worker", {"Records": [handlers.sqs_record(message(unknown))]}, request_id=request_id)
    logs = hygiene.assert_structured(handlers.last, correlation_id=request_id, connection_id=unknown)
    assert any(line.get("alarm") == "unknown_outcome" for line in logs)
    hygiene.assert_clean()


def test_connections_function_writes_no_secret(hygiene):
    stack, handlers = hygiene.stack, hygiene.handlers
    connection_id = f"hyg-conn-{uuid.uuid4().hex[:6]}"
    seed_connection(stack, connection_id)

    for event, outcome in (
        ({"action": "refresh", "connection_id": connection_id, "force": True, "note": EVENT_CANARY}, "refreshed"),
        ({"action": "disconnect", "connection_id": connection_id, "note": EVENT_CANARY}, "disconnected"),
        ({"action": "refresh", "connection_id": connection_id, "note": EVENT_CANARY}, "not_active"),
    ):
        request_id = str(uuid.uuid4())
        answer = handlers.invoke("connections", event, request_id=request_id)
        assert answer["outcome"] == outcome
        logs = hygiene.assert_structured(handlers.last, correlation_id=request_id, connection_id=connection_id)
        assert [line["outcome"] for line in logs if line["message"] == "request handled"] == [outcome]

    request_id = str(uuid.uuid4())
    answer = handlers.invoke("connections", {"action": "drop", "connection_id": EVENT_CANARY + " x"},
                             request_id=request_id)
    assert answer["error"] == "bad_request"
    logs = hygiene.assert_structured(handlers.last, correlation_id=request_id)
    assert all("connection_id" not in line for line in logs)  # an invalid id is never logged
    hygiene.assert_clean()


def test_list_invoices_writes_no_secret(hygiene):
    stack, handlers = hygiene.stack, hygiene.handlers
    connection_id = f"hyg-list-{uuid.uuid4().hex[:6]}"
    seed_connection(stack, connection_id)

    request_id = str(uuid.uuid4())
    result = handlers.invoke("list_invoices", {"connection_id": connection_id, "max_pages": 1, "note": EVENT_CANARY},
                             request_id=request_id)
    assert result["count"] > 0
    hygiene.assert_structured(handlers.last, correlation_id=request_id, connection_id=connection_id)

    request_id = str(uuid.uuid4())
    result = handlers.invoke("list_invoices", {"connection_id": f"{connection_id}-nobody", "note": EVENT_CANARY},
                             request_id=request_id)
    assert result["error"] == "not_found"
    hygiene.assert_structured(handlers.last, correlation_id=request_id, connection_id=f"{connection_id}-nobody")
    hygiene.assert_clean()


def test_the_app_api_functions_write_no_secret(hygiene):
    stack, handlers = hygiene.stack, hygiene.handlers
    connection_id = f"hyg-app-{uuid.uuid4().hex[:6]}"
    seed_connection(stack, connection_id)

    request_id = str(uuid.uuid4())
    link = handlers.invoke("links", {"connection_id": connection_id}, request_id=request_id)
    hygiene.canaries.add("link from the links function", link["url"])
    hygiene.assert_structured(handlers.last, correlation_id=request_id, connection_id=connection_id)

    for expiring in (False, True):
        if expiring:  # a cold function and an expiring token: a refresh, so more tokens are issued
            runtime.current().override(vendor=None)
            expire(stack, connection_id)
        request_id = str(uuid.uuid4())
        token = handlers.invoke("tokens", {"connection_id": connection_id}, request_id=request_id)
        assert token["connection_id"] == connection_id and token["version"] == (2 if expiring else 1)
        hygiene.assert_structured(handlers.last, correlation_id=request_id, connection_id=connection_id)
    request_id = str(uuid.uuid4())
    refused = handlers.invoke("tokens", {"connection_id": connection_id, "note": EVENT_CANARY}, request_id=request_id)
    assert refused["error"] == "bad_request" and EVENT_CANARY not in refused["message"]

    request_id = str(uuid.uuid4())
    state = handlers.invoke("connection_state", {"action": "get", "connection_id": connection_id},
                            request_id=request_id)
    assert state["connection"]["version"] == 2
    hygiene.assert_structured(handlers.last, correlation_id=request_id, connection_id=connection_id)
    hygiene.assert_clean()


# ------------------------------------------------------------------ the checks themselves
def test_the_check_catches_a_logged_token_in_any_spelling(hygiene):
    """A token logged as such, or base64-encoded in a botocore-style DEBUG record, is found."""
    stack = hygiene.stack
    connection_id = f"hyg-self-{uuid.uuid4().hex[:6]}"
    seed_connection(stack, connection_id)
    access, refresh = stored_tokens(stack, connection_id)
    logging.getLogger("invoiced_connect.connect.flow").warning("oops", extra={"token": access})
    hygiene.capture.take("planted")
    assert any(label.startswith("access token") for label in hygiene.canaries.found_in(hygiene.capture.everything))

    import base64

    body = json.dumps({"Plaintext": base64.b64encode(json.dumps({"access_token": access,
                                                                  "refresh_token": refresh}).encode()).decode()})
    written = Written("planted", "", "", f"botocore.endpoint DEBUG Making request with params: {{'body': {body!r}}}")
    found = hygiene.canaries.found_in(written.text)
    assert any(label.startswith("access token") for label in found)
    assert any(label.startswith("refresh token") for label in found)
    hygiene.capture.written.clear()  # planted on purpose; nothing else was run


def test_botocore_stays_quiet_at_debug(hygiene):
    """The handlers hold botocore (and urllib3, requests, the X-Ray SDK) at WARNING whatever the log level."""
    for name in ("botocore", "boto3", "urllib3", "requests", "aws_xray_sdk"):
        assert logging.getLogger(name).getEffectiveLevel() >= logging.WARNING, name
    assert logging.getLogger().getEffectiveLevel() == logging.DEBUG
