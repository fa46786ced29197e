"""The refresh worker's rules, one message at a time: what a message says, which
refresher call it makes, when the batch stops calling Invoiced, which lost
answers are queued again for their probe, and how that queueing is sent.
(The partial batch response itself: test_worker_batch.py.)"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter

import pytest

from invoiced_connect.core.models import InvalidConnectionId
from invoiced_connect.lifecycle import worker
from invoiced_connect.lifecycle.refresh import Mode, RefreshOutcome, RefreshResult
from invoiced_connect.lifecycle.worker import BatchReport, parse_message, process_batch, queue_settle_checks


class Refresher:
    """Answers each call with the outcome (and retry time) told for the connection;
    records every call as ``(method, connection_id, mode)``."""

    def __init__(self, **answers: tuple[RefreshOutcome, int | None]) -> None:
        self.answers, self.calls = answers, []

    def _answer(self, connection_id: str) -> RefreshResult:
        outcome, retry_at = self.answers.get(connection_id, (RefreshOutcome.REFRESHED, None))
        return RefreshResult(connection_id, outcome, "active", 2, retry_at)

    def refresh(self, connection_id, *, mode):
        self.calls.append(("refresh", connection_id, mode))
        return self._answer(connection_id)

    def recover(self, connection_id):
        self.calls.append(("recover", connection_id, None))
        return self._answer(connection_id)


def message(message_id: str, connection_id: str, kind: str = "refresh") -> dict:
    return {"messageId": message_id, "body": json.dumps({"connection_id": connection_id, "kind": kind})}


def run(records, refresher, remaining: float = 100.0, reserve: float = 30) -> BatchReport:
    return process_batch(records, refresher, lambda: remaining, reserve_seconds=reserve)


# ---------------------------------------------------------------- parse_message
def test_a_message_names_a_connection_and_a_kind_refresh_by_default():
    assert parse_message('{"connection_id": "acme-1"}') == ("acme-1", "refresh")
    assert parse_message('{"connection_id": "acme-1", "kind": "refresh"}') == ("acme-1", "refresh")
    assert parse_message('{"connection_id": "acme-1", "kind": "recover"}') == ("acme-1", "recover")


def test_a_message_that_is_not_an_object_or_of_an_unknown_kind_is_refused_by_name():
    with pytest.raises(ValueError, match=r"^message is not a JSON object$"):
        parse_message('["acme-1"]')
    with pytest.raises(ValueError, match=r"^unknown kind 'rotate'$"):
        parse_message('{"connection_id": "acme-1", "kind": "rotate"}')
    with pytest.raises(InvalidConnectionId):
        parse_message('{"kind": "refresh"}')


# ---------------------------------------------------------------- process_batch
def test_refresh_messages_are_scheduled_refreshes_and_recover_messages_recoveries():
    refresher = Refresher(**{"acme-2": (RefreshOutcome.KEPT_ASIDE, None)})
    report = run([message("m-1", "acme-1"), message("m-2", "acme-2", "recover")], refresher)
    assert refresher.calls == [("refresh", "acme-1", Mode.SCHEDULED), ("recover", "acme-2", None)]
    assert report.outcomes == {"refreshed": 1, "kept_aside": 1}
    assert report.failed_ids == []


def test_outcomes_are_counted_per_message():
    report = run([message(f"m-{n}", f"acme-{n}") for n in range(3)], Refresher())
    assert report.outcomes == {"refreshed": 3}
    assert report.metrics() == {"RefreshRefreshed": 3}


def test_a_message_starts_when_exactly_the_reserve_is_left():
    refresher = Refresher()
    report = run([message("m-1", "acme-1")], refresher, remaining=30.0, reserve=30)
    assert refresher.calls == [("refresh", "acme-1", Mode.SCHEDULED)]
    assert report.deferred == 0 and report.failed_ids == [] and report.outcomes == {"refreshed": 1}


def test_after_a_client_auth_failure_no_more_refreshes_are_started_but_recoveries_go_on():
    refresher = Refresher(**{"acme-1": (RefreshOutcome.CLIENT_AUTH_FAILED, None)})
    records = [message("m-0", "acme-0"), message("m-1", "acme-1"), message("m-2", "acme-2"),
               message("m-3", "acme-3", "recover"), message("m-4", "acme-4")]
    report = run(records, refresher)
    assert refresher.calls == [("refresh", "acme-0", Mode.SCHEDULED), ("refresh", "acme-1", Mode.SCHEDULED),
                               ("recover", "acme-3", None)]
    assert report.outcomes == {"refreshed": 2, "client_auth_failed": 1, "skipped_client_auth": 2}
    assert report.failed_ids == []  # skipped refreshes complete: the next schedule run finds them again
    assert report.metrics()["RefreshSkippedClientAuth"] == 2


def test_only_a_lost_answer_with_a_retry_time_is_queued_again_for_its_probe():
    refresher = Refresher(**{"acme-1": (RefreshOutcome.UNKNOWN_OUTCOME, 1_090),
                             "acme-2": (RefreshOutcome.UNKNOWN_OUTCOME, None),
                             "acme-3": (RefreshOutcome.BUSY, 1_200),
                             "acme-4": (RefreshOutcome.UNKNOWN_OUTCOME, 1_300)})
    report = run([message(f"m-{n}", f"acme-{n}") for n in range(1, 5)], refresher)
    assert report.settle_checks == [("acme-1", 1_090), ("acme-4", 1_300)]
    assert report.outcomes == {"unknown_outcome": 3, "busy": 1}
    assert report.failed_ids == []


# ---------------------------------------------------------------- BatchReport
def test_metrics_add_up_outcomes_that_name_the_same_metric_and_count_deferrals():
    report = BatchReport(outcomes=Counter({"unknown_outcome": 2, "UNKNOWN_OUTCOME": 3, "refreshed": 1}), deferred=4)
    assert report.metrics() == {"RefreshUnknownOutcome": 5, "RefreshRefreshed": 1, "RefreshDeferred": 4}
    assert BatchReport().metrics() == {}


# ---------------------------------------------------------------- queue_settle_checks
class Sqs:
    """Records each send_message_batch; answers from ``answers`` in turn
    (an exception to raise, or the response), else every entry successful."""

    def __init__(self, *answers) -> None:
        self.answers, self.sent = list(answers), []

    def send_message_batch(self, **kwargs):
        self.sent.append(kwargs)
        answer = self.answers.pop(0) if self.answers else None
        if isinstance(answer, Exception):
            raise answer
        return answer or {"Successful": [{"Id": e["Id"]} for e in kwargs["Entries"]], "Failed": []}


QUEUE = "https://sqs.us-east-1.amazonaws.com/123456789012/refresh"


def body(connection_id: str) -> str:
    return json.dumps({"connection_id": connection_id, "kind": "refresh"})


def test_each_lost_answer_is_queued_as_a_refresh_delayed_until_its_probe_within_sqs_limits():
    sqs = Sqs()
    checks = [("acme-1", 1_090), ("acme-2", 900), ("acme-3", 5_000), ("acme-4", 1_001)]
    assert queue_settle_checks(sqs, QUEUE, checks, now=1_000.5) == 4
    assert sqs.sent == [{"QueueUrl": QUEUE, "Entries": [
        {"Id": "0", "MessageBody": body("acme-1"), "DelaySeconds": 90},  # int(89.5) + 1
        {"Id": "1", "MessageBody": body("acme-2"), "DelaySeconds": 0},  # already due
        {"Id": "2", "MessageBody": body("acme-3"), "DelaySeconds": 900},  # SQS's 15 minutes at most
        {"Id": "3", "MessageBody": body("acme-4"), "DelaySeconds": 1},
    ]}]


def test_the_delay_is_counted_from_now_when_not_given(monkeypatch):
    monkeypatch.setattr(time, "time", lambda: 2_000.25)
    sqs = Sqs()
    assert queue_settle_checks(sqs, QUEUE, [("acme-1", 2_100)]) == 1
    assert sqs.sent[0]["Entries"][0]["DelaySeconds"] == 100


def test_more_checks_than_one_sqs_batch_are_sent_in_batches_of_ten_and_counted():
    sqs = Sqs(None, {"Successful": [{"Id": "0"}], "Failed": [{"Id": "1"}]})
    checks = [(f"acme-{n}", 1_100) for n in range(12)]
    assert queue_settle_checks(sqs, QUEUE, checks, now=1_000) == 11
    assert [[e["Id"] for e in sent["Entries"]] for sent in sqs.sent] == [[str(n) for n in range(10)], ["0", "1"]]
    assert [e["MessageBody"] for sent in sqs.sent for e in sent["Entries"]] == [body(f"acme-{n}") for n in range(12)]
    assert {sent["QueueUrl"] for sent in sqs.sent} == {QUEUE}


def test_nothing_to_queue_sends_nothing():
    sqs = Sqs()
    assert queue_settle_checks(sqs, QUEUE, [], now=1_000) == 0
    assert sqs.sent == []


def test_a_batch_that_cannot_be_sent_is_skipped_and_the_next_one_still_sent(caplog):
    sqs = Sqs(RuntimeError("SQS unavailable"))
    checks = [(f"acme-{n}", 1_100) for n in range(11)]
    with caplog.at_level(logging.WARNING, logger=worker.__name__):
        assert queue_settle_checks(sqs, QUEUE, checks, now=1_000) == 1
    assert len(sqs.sent) == 2 and sqs.sent[1]["Entries"][0]["MessageBody"] == body("acme-10")
    assert [(r.levelname, r.count) for r in caplog.records] == [("WARNING", 10)]


def test_entries_sqs_refused_are_warned_about_and_a_full_success_is_not(caplog):
    with caplog.at_level(logging.WARNING, logger=worker.__name__):
        assert queue_settle_checks(Sqs(), QUEUE, [("acme-1", 1_100)], now=1_000) == 1
        assert caplog.records == []
        refused = {"Successful": [{"Id": "0"}], "Failed": [{"Id": "1"}, {"Id": "2"}]}
        assert queue_settle_checks(Sqs(refused), QUEUE, [(f"acme-{n}", 1_100) for n in range(3)], now=1_000) == 1
    assert [(r.levelname, r.count) for r in caplog.records] == [("WARNING", 2)]
