"""The sample events in events/ (also for `sam local invoke`) drive the real
handlers, loaded from template.yaml, against the local AWS."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from local.lambda_runtime import load_handler

ROOT = Path(__file__).resolve().parents[2]


def load_event(name: str) -> dict:
    return json.loads((ROOT / "events" / name).read_text())


@pytest.mark.usefixtures("stack")
def test_connect_event_with_a_badly_signed_link_gets_the_403_page():
    handler = load_handler(ROOT / "template.yaml", "ConnectFunction")
    response = handler(load_event("connect.json"))
    assert response["statusCode"] == 403
    assert response["headers"]["Content-Type"].startswith("text/html")
    assert response["headers"]["Cache-Control"] == "no-store"
    assert "sample-connect-request" in response["body"]  # the reference id
    assert not response.get("cookies")


def test_callback_event_for_an_unknown_state_redirects_to_the_400_outcome_page(stack):
    handler = load_handler(ROOT / "template.yaml", "CallbackFunction")
    response = handler(load_event("callback.json"))
    assert response["statusCode"] == 303
    assert response["headers"]["Location"] == stack.callback_url
    assert any(c.startswith("__Host-invoiced-connect=;") and "Max-Age=0" in c for c in response["cookies"])
    (result,) = [c.split(";")[0] for c in response["cookies"] if c.startswith("__Host-invoiced-connect-result=")]

    follow = load_event("callback.json")
    follow["rawQueryString"], follow["queryStringParameters"], follow["cookies"] = "", None, [result]
    page = handler(follow)
    assert page["statusCode"] == 400
    assert "<h1>Sign-in expired</h1>" in page["body"]
    assert "sample-callback-request" in page["body"]


@pytest.mark.usefixtures("stack")
def test_unknown_route_on_a_handler_is_a_404_not_a_crash():
    handler = load_handler(ROOT / "template.yaml", "ConnectFunction")
    event = load_event("connect.json")
    event["rawPath"] = event["requestContext"]["http"]["path"] = "/elsewhere"
    event["routeKey"] = event["requestContext"]["routeKey"] = "GET /elsewhere"
    assert handler(event)["statusCode"] == 404


@pytest.mark.usefixtures("stack")
def test_unexpected_error_is_a_plain_500_page_that_leaks_nothing(monkeypatch, capfd):
    from invoiced_connect.entry import web

    canary = "CANARY-in-an-exception-message"

    class Exploding:
        def start(self, *args):
            raise RuntimeError(canary)

    monkeypatch.setattr(web, "flow", lambda: Exploding())
    handler = load_handler(ROOT / "template.yaml", "ConnectFunction")
    response = handler(load_event("connect.json"))
    assert response["statusCode"] == 500
    assert "Something went wrong" in response["body"] and "sample-connect-request" in response["body"]
    assert canary not in response["body"]
    logs = "".join(capfd.readouterr())
    assert "unexpected error" in logs and "RuntimeError" in logs
    assert canary not in logs


@pytest.mark.usefixtures("stack")
def test_a_configuration_error_is_a_503_page_and_a_log_line_naming_the_variable(monkeypatch, capfd):
    from invoiced_connect import runtime

    monkeypatch.setenv("RETURN_URL_ALLOWLIST", "app.example.com/settings")  # no scheme
    runtime.reset()
    try:
        handler = load_handler(ROOT / "template.yaml", "ConnectFunction")
        response = handler(load_event("connect.json"))
    finally:
        monkeypatch.undo()
        runtime.reset()
    assert response["statusCode"] == 503
    assert "not set up yet" in response["body"]
    assert "RETURN_URL_ALLOWLIST entry" in "".join(capfd.readouterr())
