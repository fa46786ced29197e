"""The lifecycle's plain rules: when to refresh, how long to back off, what a
request or a message must look like, what an event carries."""

from __future__ import annotations

import dataclasses
import json

import pytest
from botocore.exceptions import ClientError

from invoiced_connect import runtime
from invoiced_connect.cloud import events
from invoiced_connect.core.lifetimes import max_min_validity, min_validity, rotation_margin, scaled
from invoiced_connect.core.models import Connection, ConnectionStatus
from invoiced_connect.entry import connections as operations
from invoiced_connect.lifecycle.refresh import BACKOFF_CAP_SECONDS, RefreshOutcome, RefreshPolicy
from invoiced_connect.lifecycle.worker import BatchReport, parse_message
from invoiced_connect.sdk.tokens import MIN_VALIDITY_SECONDS, ROTATION_MARGIN_SECONDS, TokenReader

NOW = 1_800_000_000


def connection(**changes) -> Connection:
    values = dict(connection_id="acme-1", tenant_id="167", company_name="Acme", scopes=("read_write",),
                  issuer="https://invoiced.com", status=ConnectionStatus.ACTIVE, expires_at=NOW + 3600, version=3,
                  created_at=NOW - 86400, updated_at=NOW)
    values.update(changes)
    return Connection(**values)


# ------------------------------------------------------------------ policy
def test_connections_in_active_use_are_refreshed_ahead_of_expiry():
    policy = RefreshPolicy()
    assert policy.next_refresh_at(expires_at=NOW + 3600, now=NOW, active_until=NOW + 86400) == NOW + 3600


def test_idle_connections_are_scheduled_only_for_keep_alive():
    policy = RefreshPolicy(keepalive_seconds=30 * 86400)
    assert policy.next_refresh_at(expires_at=NOW + 3600, now=NOW, active_until=0) == NOW + 30 * 86400
    # Active use ending before the token would be refreshed counts as idle.
    assert policy.next_refresh_at(expires_at=NOW + 3600, now=NOW, active_until=NOW + 600) == NOW + 30 * 86400


@pytest.mark.parametrize("failures", range(1, 12))
def test_backoff_grows_is_jittered_and_capped(failures):
    policy = RefreshPolicy()
    low, high = policy.backoff(failures, rng=lambda: 0.0), policy.backoff(failures, rng=lambda: 0.999999)
    ceiling = min(BACKOFF_CAP_SECONDS, 30 * 2 ** (failures - 1))
    assert low == ceiling // 2 and ceiling - 1 <= high <= ceiling
    assert policy.backoff(failures + 1, rng=lambda: 0.0) >= low


def test_the_lease_outlasts_two_token_requests_and_the_commit():
    from invoiced_connect.core.settings import load_settings

    settings = load_settings({"TABLE_NAME": "t", "KMS_KEY_ID": "k", "HTTP_TIMEOUT_SECONDS": "25"})
    assert RefreshPolicy.from_settings(settings).lease_seconds >= 2 * (25 + 3.05) + 10


def test_outcome_metric_names():
    assert RefreshOutcome.UNKNOWN_OUTCOME.metric_name == "RefreshUnknownOutcome"
    assert RefreshOutcome.KEPT_ASIDE.metric_name == "RefreshKeptAside"
    assert len({outcome.metric_name for outcome in RefreshOutcome}) == len(RefreshOutcome)


# ------------------------------------------------------------------ requests and messages
class NoRefresher:
    def refresh(self, *args, **kwargs):
        raise AssertionError("bad input must not reach the refresher")


@pytest.mark.parametrize("event", [
    None, [], "refresh", {}, {"action": "delete", "connection_id": "a"}, {"action": "refresh"},
    {"action": "refresh", "connection_id": "../x"}, {"action": "refresh", "connection_id": "a", "stale_version": -1},
    {"action": "refresh", "connection_id": "a", "stale_version": True},
    {"action": "refresh", "connection_id": "a", "force": "yes"},
    {"action": "refresh", "connection_id": "a", "wait_seconds": -1},
    {"action": "refresh", "connection_id": "a", "wait_seconds": "10"},
])
def test_bad_requests_to_the_connections_function_get_a_clear_answer(event):
    answer = operations.handle(event, 60, refresher=NoRefresher())
    assert answer["error"] == "bad_request" and answer["message"]
    assert operations.metric_name(answer) == "BadRequests"


class RecordingRefresher:
    def __init__(self) -> None:
        self.calls = []

    def refresh(self, connection_id, **kwargs):
        from invoiced_connect.lifecycle.refresh import RefreshResult

        self.calls.append((connection_id, kwargs))
        return RefreshResult(connection_id, RefreshOutcome.ALREADY_FRESH, "active", 3)


def test_a_refresh_request_waits_as_asked_within_the_invocation():
    from invoiced_connect.lifecycle.refresh import Mode

    refresher = RecordingRefresher()
    answer = operations.handle({"action": "refresh", "connection_id": "acme-1", "stale_version": 2,
                                "wait_seconds": 20}, 60, refresher=refresher)
    assert answer["outcome"] == "already_fresh"
    assert refresher.calls == [("acme-1", {"mode": Mode.ON_DEMAND, "stale_version": 2, "wait_seconds": 20.0})]
    operations.handle({"action": "refresh", "connection_id": "acme-1", "wait_seconds": 20}, 35, refresher=refresher)
    assert refresher.calls[-1][1]["wait_seconds"] == 5.0  # 35 s left, 30 kept for the refresh itself
    operations.handle({"action": "refresh", "connection_id": "acme-1", "force": True}, 60, refresher=refresher)
    assert refresher.calls[-1][1]["mode"] is Mode.FORCED


def test_messages_are_parsed_strictly():
    assert parse_message('{"connection_id": "acme-1", "kind": "recover"}') == ("acme-1", "recover")
    assert parse_message('{"connection_id": "acme-1"}') == ("acme-1", "refresh")
    for body in ("[]", '{"connection_id": "acme-1", "kind": "drop"}', '{"connection_id": ""}', "nope"):
        with pytest.raises(ValueError):
            parse_message(body)


def test_batch_report_metrics_and_partial_failure_response():
    report = BatchReport()
    report.outcomes.update({"refreshed": 3, "unknown_outcome": 1, "malformed": 1})
    report.failed_ids.append("m-2")
    assert report.metrics() == {"RefreshRefreshed": 3, "RefreshUnknownOutcome": 1, "RefreshMalformed": 1}
    assert report.response() == {"batchItemFailures": [{"itemIdentifier": "m-2"}]}


# ------------------------------------------------------------------ events
class FakeEvents:
    def __init__(self, answer=None, error=None) -> None:
        self.answer, self.error, self.entries = answer or {"FailedEntryCount": 0}, error, []

    def put_events(self, Entries):  # noqa: N803 - boto3's spelling
        self.entries.extend(Entries)
        if self.error:
            raise self.error
        return self.answer


def test_an_event_names_the_connection_and_never_carries_tokens():
    client = FakeEvents()
    publisher = events.EventPublisher("bus", client_factory=lambda: client)
    assert publisher.publish(events.CONNECTION_NEEDS_REAUTH, connection(), reason="refresh_token_invalid")
    (entry,) = client.entries
    assert (entry["Source"], entry["DetailType"], entry["EventBusName"]) == (
        "invoiced-connect", "Connection Needs Reauthorization", "bus")
    detail = json.loads(entry["Detail"])
    assert set(detail) == {"connection_id", "tenant_id", "company_name", "status", "version", "reason", "occurred_at"}
    assert detail["connection_id"] == "acme-1" and detail["reason"] == "refresh_token_invalid"


def test_an_event_may_add_the_other_company_and_nothing_else():
    client = FakeEvents()
    publisher = events.EventPublisher("bus", client_factory=lambda: client)
    extra = {"previous_tenant_id": "99", "previous_company_name": None}
    assert publisher.publish(events.CONNECTION_RECONNECTED, connection(), extra=extra)
    detail = json.loads(client.entries[0]["Detail"])
    assert (detail["previous_tenant_id"], detail["previous_company_name"], detail["tenant_id"]) == ("99", None, "167")
    assert events.event_detail(connection(), extra={"chosen_tenant_id": "5", "chosen_company_name": "B"})[
        "chosen_company_name"] == "B"
    with pytest.raises(ValueError, match=r"^unknown detail keys \['access_token', 'zz'\]$"):
        publisher.publish(events.CONNECTION_RECONNECTED, connection(), extra={"zz": "1", "access_token": "x"})
    assert len(client.entries) == 1


def test_the_new_event_types_are_publishable():
    assert events.CONNECTION_RECOVERED == "Connection Recovered"
    assert events.CONNECTION_RECONNECT_REFUSED == "Connection Reconnect Refused"
    client = FakeEvents()
    publisher = events.EventPublisher("bus", client_factory=lambda: client)
    assert publisher.publish(events.CONNECTION_RECOVERED, connection(), reason="needs_reauth")
    assert publisher.publish(events.CONNECTION_RECONNECT_REFUSED, connection(), reason="company_mismatch")
    assert [e["DetailType"] for e in client.entries] == ["Connection Recovered", "Connection Reconnect Refused"]


@pytest.mark.parametrize(("changes", "trouble"), [
    ({}, None),
    ({"status": ConnectionStatus.NEEDS_REAUTH, "failure_count": 3}, "needs_reauth"),
    ({"outcome_unknown_at": 7, "failure_count": 1}, "outcome_unknown"),
    ({"failure_count": 1}, "refresh_failing"),
    ({"status": ConnectionStatus.REVOKED, "failure_count": 2, "outcome_unknown_at": 7}, None),
])
def test_what_keeps_a_connection_from_being_healthy(changes, trouble):
    assert dataclasses.replace(connection(), **changes).trouble == trouble


def test_publishing_is_best_effort():
    failing = FakeEvents(error=ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "PutEvents"))
    assert not events.EventPublisher("bus", client_factory=lambda: failing).publish(events.CONNECTION_CREATED,
                                                                                 connection())
    refused = FakeEvents(answer={"FailedEntryCount": 1, "Entries": [{"ErrorCode": "InternalFailure"}]})
    assert not events.EventPublisher("bus", client_factory=lambda: refused).publish(events.CONNECTION_CREATED,
                                                                                 connection())
    assert not events.EventPublisher(None).publish(events.CONNECTION_CREATED, connection())
    with pytest.raises(ValueError):
        events.EventPublisher("bus", client_factory=lambda: FakeEvents()).publish("Token Leaked", connection())


# ------------------------------------------------------------------ the reader's cache
def test_the_cache_never_outlives_the_earliest_possible_rotation_or_the_expiry():
    reader = TokenReader(store=None, cipher=None, invoke=lambda payload: {}, window_seconds=900)
    active = connection(refresh_at=NOW + 3600)
    assert reader._good_until(active) == NOW + 3600 - 900 - ROTATION_MARGIN_SECONDS
    idle = connection(refresh_at=NOW + 30 * 86400)
    assert reader._good_until(idle) == NOW + 3600 - MIN_VALIDITY_SECONDS


def test_the_lambda_client_waits_as_long_as_a_locked_refresh_may_take(monkeypatch):
    from invoiced_connect.cloud import aws

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    # The connections function runs up to 60 s (it may wait for a lease):
    # a shorter read timeout would make boto3 retry, i.e. invoke it again.
    assert aws.new_client("lambda").meta.config.read_timeout > 60
    assert aws.new_client("dynamodb").meta.config.read_timeout == 10
    clients = runtime.Runtime()
    assert clients.client("lambda").meta.config.read_timeout > 60  # the runtime's clients are the same
    assert clients.client("lambda") is clients.client("lambda")


# ------------------------------------------------------------------ margins by lifetime
@pytest.mark.parametrize(("lifetime", "expected"), [
    (3600, (300, 1800, 600, 900)), (7200, (300, 1800, 600, 900)), (3599, (300, 1800, 600, 900)),
    (1800, (150, 900, 300, 450)), (90, (8, 45, 15, 23)), (1, (1, 1, 1, 1)), (0, (1, 1, 1, 1)),
])
def test_margins_are_the_one_hour_values_scaled_down_for_shorter_tokens(lifetime, expected):
    assert (min_validity(lifetime), max_min_validity(lifetime), rotation_margin(lifetime),
            scaled(900, lifetime)) == expected
