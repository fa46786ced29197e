"""The metrics each handler emits, path by path, read back from the EMF
documents it prints (namespace, names, values, dimensions).

The contract (template.yaml's alarms and dashboards use these names):
ConnectStarted; ConnectFailed with a ``reason`` dimension (and only it);
Connected and Reconnected; Refresh<Outcome> per outcome, RefreshFailed and
RefreshPermanentFailure; TokenReads and TokenCacheMisses. Every metric is a
Count in the InvoicedConnect namespace with the ``service`` dimension, and
every invocation writes at most one EMF document.
"""

from __future__ import annotations

import json
import time
import uuid
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from invoiced_connect.connect.links import LinkClaims, sign_link_token
from invoiced_connect.core.metrics import CONNECT_FAILURE_REASONS
from local.seed import connect as seed_connection
from local.seed import invoiced_client, make_due, stored_tokens
from tests.support.handlers import Capture, Handlers, Metric
from tests.support.overrides import bad_setting, client_secret, private_refresh_queue

NAMESPACE = "InvoicedConnect"
SERVICE = {"service": "invoiced-connect"}


@pytest.fixture
def handlers(stack, invoiced, capfd) -> Handlers:
    assert stack.wait_for_queues(30)
    return Handlers(stack, Capture(capfd))


def emitted(handlers: Handlers) -> list[Metric]:
    """The last invocation's metrics, after checking what every metric must be."""
    written = handlers.last
    assert written is not None
    assert len(written.emf()) <= 1, f"{written.label}: more than one EMF document: {written.emf()}"
    metrics = written.metrics()
    for metric in metrics:
        assert metric.namespace == NAMESPACE and metric.unit == "Count", metric
        expected = {**SERVICE, "reason": metric.dims.get("reason")} if metric.name == "ConnectFailed" else SERVICE
        assert metric.dims == expected, metric
    return metrics


def counts(handlers: Handlers) -> dict[str, float]:
    found: dict[str, float] = {}
    for metric in emitted(handlers):
        found[metric.name] = found.get(metric.name, 0) + metric.value
    return found


def failure_reason(handlers: Handlers) -> str:
    """The reason of the last invocation's one and only metric, ConnectFailed."""
    (metric,) = emitted(handlers)
    assert metric.name == "ConnectFailed" and metric.value == 1
    assert metric.dims["reason"] in CONNECT_FAILURE_REASONS
    return metric.dims["reason"]


def consent(stack, location: str, **kwargs) -> str:
    return urlsplit(stack.invoiced.consent(location, **kwargs)).query


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def signing_key(stack) -> str:
    from invoiced_connect import runtime

    return runtime.current().secrets.get_field(stack.env["LINK_SIGNING_SECRET_ARN"], "current")


# ------------------------------------------------------------------ /connect
def test_connect_counts_started_and_each_failure_by_reason(stack, handlers, monkeypatch):
    started = handlers.start(new_id("m-connect"))
    assert counts(handlers) == {"ConnectStarted": 1}

    version, body, signature = started.link.split(".")
    handlers.connect(f"{version}.{body}.{'A' * len(signature)}")
    assert failure_reason(handlers) == "link_invalid"
    handlers.get("connect", "/connect")
    assert failure_reason(handlers) == "link_invalid"
    handlers.get("connect", "/connect", query=[("link", started.link), ("link", started.link)])
    assert failure_reason(handlers) == "bad_request"

    expired = sign_link_token(LinkClaims(new_id("m-expired"), None, int(time.time()) - 10), signing_key(stack))
    handlers.connect(expired)
    assert failure_reason(handlers) == "link_invalid"
    elsewhere = sign_link_token(LinkClaims(new_id("m-elsewhere"), "https://elsewhere.example/x",
                                           int(time.time()) + 600), signing_key(stack))
    handlers.connect(elsewhere)
    assert failure_reason(handlers) == "return_url_refused"

    with bad_setting(monkeypatch):
        assert handlers.connect(started.link)["statusCode"] == 503
        assert failure_reason(handlers) == "not_configured"

    from invoiced_connect.entry import web

    class Exploding:
        def start(self, *args):
            raise RuntimeError("boom")

    with monkeypatch.context() as patch:
        patch.setattr(web, "flow", lambda: Exploding())
        assert handlers.connect(started.link)["statusCode"] == 500
        assert failure_reason(handlers) == "unexpected"

    handlers.get("connect", "/elsewhere")  # a 404 counts nothing
    assert counts(handlers) == {}


def test_a_used_link_is_counted_at_connect_and_at_callback(stack, handlers):
    connection_id = new_id("m-used")
    first = handlers.start(connection_id)
    link = first.link
    second = handlers.connect(link)  # the same link, opened twice before either finished
    second_cookie = [c.split(";")[0].split("=", 1)[1] for c in second["cookies"]
                     if c.startswith("__Host-invoiced-connect=")][0]
    handlers.callback(consent(stack, first.location), first.cookie)
    assert counts(handlers) == {"Connected": 1}

    handlers.callback(consent(stack, second["headers"]["Location"]), second_cookie)
    assert failure_reason(handlers) == "link_used"
    handlers.connect(link)
    assert failure_reason(handlers) == "link_used"


# ------------------------------------------------------------------ /callback
def test_callback_counts_connected_reconnected_and_nothing_for_the_outcome_page(stack, handlers):
    connection_id = new_id("m-cb")
    started = handlers.start(connection_id)
    response = handlers.callback(consent(stack, started.location), started.cookie)
    assert counts(handlers) == {"Connected": 1}
    handlers.outcome_page(response)
    assert counts(handlers) == {}

    again = handlers.start(connection_id)
    handlers.callback(consent(stack, again.location), again.cookie)
    assert counts(handlers) == {"Reconnected": 1, "ReplacedGrantRevoked": 1}

    other = handlers.start(connection_id)
    handlers.callback(consent(stack, other.location, company_id=168), other.cookie)
    assert counts(handlers) == {"ConnectFailed": 1}  # another company: refused
    assert failure_reason(handlers) == "company_mismatch"


def test_a_reconnect_whose_old_grant_cannot_be_revoked_counts_it_and_still_connects(stack, handlers, invoiced):
    connection_id = new_id("m-rv")
    started = handlers.start(connection_id)
    handlers.callback(consent(stack, started.location), started.cookie)
    counts(handlers)
    again = handlers.start(connection_id)
    invoiced.faults.set(revoke_error_next=1)
    handlers.callback(consent(stack, again.location), again.cookie)
    assert counts(handlers) == {"Reconnected": 1, "ReplacedGrantRevokeFailed": 1}


def test_callback_counts_each_failure_by_reason(stack, handlers, invoiced, monkeypatch):
    started = handlers.start(new_id("m-denied"))
    handlers.callback(consent(stack, started.location, approve=False), started.cookie)
    assert failure_reason(handlers) == "denied"

    started = handlers.start(new_id("m-scope"))
    handlers.callback(urlencode({"state": started.state, "error": "invalid_scope"}), started.cookie)
    assert failure_reason(handlers) == "authorize_error"

    started = handlers.start(new_id("m-replay"))
    query = consent(stack, started.location)
    handlers.callback(query, started.cookie)
    assert counts(handlers) == {"Connected": 1}
    handlers.callback(query, started.cookie)
    assert failure_reason(handlers) == "state_rejected"
    handlers.callback(query, None)
    assert failure_reason(handlers) == "state_rejected"
    handlers.callback("code=abc", started.cookie)
    assert failure_reason(handlers) == "bad_request"

    started = handlers.start(new_id("m-code"))
    state = parse_qs(consent(stack, started.location))["state"][0]
    handlers.callback(urlencode({"code": "def50200" + "0" * 64, "state": state}), started.cookie)
    assert failure_reason(handlers) == "code_rejected"

    started = handlers.start(new_id("m-5xx"))
    query = consent(stack, started.location)
    invoiced.faults.server_error_next = 1
    handlers.callback(query, started.cookie)
    assert failure_reason(handlers) == "exchange_failed"

    started = handlers.start(new_id("m-secret"))
    query = consent(stack, started.location)
    with client_secret(stack, "not-the-client-secret-" + "x" * 20):
        handlers.callback(query, started.cookie)
    assert failure_reason(handlers) == "client_auth_failed"

    from botocore.exceptions import ClientError

    from invoiced_connect.entry import web

    def kms_down(*args, **kwargs):
        raise ClientError({"Error": {"Code": "KMSInternalException", "Message": "down"}}, "Encrypt")

    started = handlers.start(new_id("m-store"))
    query = consent(stack, started.location)
    with monkeypatch.context() as patch:
        patch.setattr(web.flow().cipher, "encrypt", kms_down)
        assert handlers.callback(query, started.cookie)["statusCode"] == 500
    assert failure_reason(handlers) == "store_failed"

    started = handlers.start(new_id("m-config"))
    query = consent(stack, started.location)
    with bad_setting(monkeypatch):
        handlers.callback(query, started.cookie)
        assert failure_reason(handlers) == "not_configured"


# ------------------------------------------------------------------ the token lifecycle
def test_the_worker_counts_each_outcome_and_the_failures(stack, handlers, invoiced):
    tag = uuid.uuid4().hex[:6]
    transient, refreshed, dead, lost = (f"m-wk-{kind}-{tag}" for kind in ("transient", "ok", "dead", "lost"))
    for connection_id in (transient, refreshed, dead, lost):
        seed_connection(stack, connection_id)
        make_due(stack, connection_id)
    invoiced_client(stack).revoke(stored_tokens(stack, dead)[0])

    def record(connection_id: str | None) -> dict:
        body = json.dumps({"connection_id": connection_id, "kind": "refresh"}) if connection_id else "{not json"
        return handlers.sqs_record(body)

    invoiced.faults.server_error_next = 1
    handlers.invoke("worker", {"Records": [record(transient), record(refreshed), record(dead), record(None)]})
    assert counts(handlers) == {"RefreshTransient": 1, "RefreshRefreshed": 1, "RefreshNeedsReauth": 1,
                                "RefreshMalformed": 1, "RefreshFailed": 2, "RefreshPermanentFailure": 1}

    invoiced.faults.truncate_next = 1
    handlers.invoke("worker", {"Records": [record(lost)]})
    assert counts(handlers) == {"RefreshUnknownOutcome": 1, "RefreshFailed": 1, "RefreshPermanentFailure": 0}


def test_the_connections_function_counts_refreshes_and_disconnects(stack, handlers):
    connection_id = new_id("m-conn")
    seed_connection(stack, connection_id)
    handlers.invoke("connections", {"action": "refresh", "connection_id": connection_id, "force": True})
    assert counts(handlers) == {"RefreshRefreshed": 1, "RefreshFailed": 0, "RefreshPermanentFailure": 0}
    handlers.invoke("connections", {"action": "disconnect", "connection_id": connection_id})
    assert counts(handlers) == {"DisconnectDisconnected": 1}
    handlers.invoke("connections", {"action": "refresh", "connection_id": connection_id + "-nobody"})
    assert counts(handlers) == {"RefreshNotFound": 1, "RefreshFailed": 0, "RefreshPermanentFailure": 0}
    handlers.invoke("connections", {"action": "disconnect", "connection_id": connection_id + "-nobody"})
    assert counts(handlers) == {"DisconnectNotFound": 1}
    handlers.invoke("connections", {"action": "refresh"})
    assert counts(handlers) == {"BadRequests": 1}


def test_the_scheduler_counts_what_is_due_and_queued(stack, handlers, monkeypatch):
    connection_id = new_id("m-sched")
    seed_connection(stack, connection_id)
    make_due(stack, connection_id)
    with private_refresh_queue(monkeypatch):
        result = handlers.invoke("scheduler", handlers.scheduled_event(str(uuid.uuid4())))
    found = counts(handlers)
    assert set(found) == {"ConnectionsDue", "ConnectionsQueued"}
    assert found["ConnectionsDue"] == result["due"] >= 1 and found["ConnectionsQueued"] == result["queued"] >= 1


def test_the_example_consumer_counts_token_reads_and_cache_misses(stack, handlers):
    from invoiced_connect import runtime

    connection_id = new_id("m-reads")
    seed_connection(stack, connection_id)
    runtime.current().read_counts.take()  # what other tests' readers counted in this process
    assert handlers.invoke("list_invoices", {"connection_id": connection_id, "max_pages": 1})["count"] > 0
    assert counts(handlers) == {"TokenReads": 1, "TokenCacheMisses": 1}
    handlers.invoke("list_invoices", {"connection_id": connection_id, "max_pages": 1})
    assert counts(handlers) == {"TokenReads": 1, "TokenCacheMisses": 0}  # from the reader's cache
    handlers.invoke("list_invoices", {"connection_id": connection_id + "-nobody"})
    assert counts(handlers) == {"TokenReads": 1, "TokenCacheMisses": 1}
    handlers.invoke("list_invoices", {"connection_id": "not an id"})
    assert counts(handlers) == {"TokenReads": 0, "TokenCacheMisses": 0}


def test_no_metric_but_connect_failed_has_a_reason_dimension(stack, handlers):
    """One EMF document with every kind of metric in it would still keep ``reason`` on ConnectFailed only."""
    started = handlers.start(new_id("m-dims"))
    handlers.connect(started.link[:-3] + "AAA")
    handlers.callback(consent(stack, started.location), started.cookie)
    seen = [metric for written in handlers.capture.written for metric in written.metrics()]  # type: ignore[union-attr]
    assert {metric.name for metric in seen} >= {"ConnectStarted", "ConnectFailed", "Connected"}
    for metric in seen:
        assert ("reason" in metric.dims) == (metric.name == "ConnectFailed"), metric

