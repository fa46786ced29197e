"""The refresh worker's batch, run by Powertools' BatchProcessor: what fails a
message, what the partial batch response holds, what the record scope sees.
(With the local stack and real refreshes: tests/integration/test_scheduler_worker.py.)"""

from __future__ import annotations

import contextlib
import json

from invoiced_connect.lifecycle.refresh import RefreshOutcome, RefreshResult
from invoiced_connect.lifecycle.worker import process_batch


class Refresher:
    """Refreshes as told per connection id: an outcome, or an exception to raise."""

    def __init__(self, **answers) -> None:
        self.answers, self.calls = answers, []

    def refresh(self, connection_id, mode):
        self.calls.append(connection_id)
        answer = self.answers.get(connection_id, RefreshOutcome.REFRESHED)
        if isinstance(answer, Exception):
            raise answer
        return RefreshResult(connection_id, answer, "active", 2)


def record(message_id: str, connection_id: str | None = None) -> dict:
    body = json.dumps({"connection_id": connection_id, "kind": "refresh"}) if connection_id else "{not json"
    return {"messageId": message_id, "body": body}


def test_a_batch_whose_every_message_fails_is_answered_not_raised():
    refresher = Refresher(**{"acme-1": RuntimeError("DynamoDB unavailable")})
    report = process_batch([record("m-1", "acme-1")], refresher, lambda: 100.0, reserve_seconds=30)
    assert report.response() == {"batchItemFailures": [{"itemIdentifier": "m-1"}]}
    assert report.outcomes == {"error": 1}


def test_a_batch_with_no_time_left_hands_every_message_back_without_starting_one():
    refresher = Refresher()
    report = process_batch([record("m-1", "acme-1"), record("m-2", "acme-2")], refresher, lambda: 5.0,
                           reserve_seconds=30)
    assert report.failed_ids == ["m-1", "m-2"] and report.deferred == 2
    assert refresher.calls == [] and report.outcomes == {}
    assert report.metrics() == {"RefreshDeferred": 2}


def test_an_empty_batch_fails_nothing():
    report = process_batch([], Refresher(), lambda: 100.0, reserve_seconds=30)
    assert report.response() == {"batchItemFailures": []}


def test_failures_are_reported_in_the_batchs_order_and_only_errors_and_deferrals_fail():
    refresher = Refresher(**{"acme-2": RuntimeError("boom"), "acme-3": RefreshOutcome.TRANSIENT,
                             "acme-4": RefreshOutcome.NEEDS_REAUTH})
    remaining = iter([100.0, 100.0, 100.0, 100.0, 100.0, 1.0])
    records = [record("m-1", "acme-1"), record("m-2", "acme-2"), record("m-3", "acme-3"), record("m-4", "acme-4"),
               record("m-5"), record("m-6", "acme-6")]
    report = process_batch(records, refresher, lambda: next(remaining), reserve_seconds=30)
    assert report.failed_ids == ["m-2", "m-6"]
    assert report.outcomes == {"refreshed": 1, "error": 1, "transient": 1, "needs_reauth": 1, "malformed": 1}
    assert report.deferred == 1


def test_the_record_scope_gets_each_outcome_and_never_the_redelivery():
    seen = []

    @contextlib.contextmanager
    def scope(message_id, connection_id):
        facts: dict[str, str] = {}
        try:
            yield facts
        except BaseException as exc:
            seen.append((message_id, connection_id, "raised", type(exc).__name__))
            raise
        seen.append((message_id, connection_id, facts.get("outcome")))

    refresher = Refresher(**{"acme-2": RuntimeError("boom")})
    report = process_batch([record("m-1", "acme-1"), record("m-2", "acme-2"), record("m-3")], refresher,
                           lambda: 100.0, reserve_seconds=30, record_scope=scope)
    assert seen == [("m-1", "acme-1", "refreshed"), ("m-2", "acme-2", "error"), ("m-3", None, "malformed")]
    assert report.failed_ids == ["m-2"]
