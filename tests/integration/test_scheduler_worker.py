"""The scheduler reads only what is due (a Query per shard, never a Scan) and
the worker handles each message on its own."""

from __future__ import annotations

import json
import time
import uuid

import boto3
import pytest

from invoiced_connect.core.models import TokenSet
from invoiced_connect.lifecycle.refresh import RefreshOutcome
from invoiced_connect.lifecycle.scheduler import Scheduler
from invoiced_connect.lifecycle.worker import process_batch, queue_settle_checks
from invoiced_connect.storage.crypto import SealedTokens
from invoiced_connect.storage.store import DUE_SHARDS, Rescue, TokenStore
from tests.support.lifecycle import connect, invoiced_client, make_due, refresher, row, stored_tokens


class RecordingClient:
    """A boto3 client that remembers which operations were called."""

    def __init__(self, client) -> None:
        self._client = client
        self.operations: list[str] = []

    def __getattr__(self, name: str):
        attribute = getattr(self._client, name)
        if callable(attribute):
            self.operations.append(name)
        return attribute


@pytest.fixture
def empty_table(stack) -> str:
    """A new table shaped like the stack's (so counts are exact)."""
    db = boto3.client("dynamodb")
    shape = db.describe_table(TableName=stack.table_name)["Table"]
    name = f"sched-{uuid.uuid4().hex[:8]}"
    db.create_table(
        TableName=name,
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=shape["AttributeDefinitions"],
        KeySchema=shape["KeySchema"],
        GlobalSecondaryIndexes=[
            {key: index[key] for key in ("IndexName", "KeySchema", "Projection")}
            for index in shape["GlobalSecondaryIndexes"]
        ],
    )
    yield name
    db.delete_table(TableName=name)


@pytest.fixture
def queue_url() -> str:
    sqs = boto3.client("sqs")
    url = sqs.create_queue(QueueName=f"due-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    yield url
    sqs.delete_queue(QueueUrl=url)


def plant(store: TokenStore, connection_id: str, refresh_at: int) -> None:
    now = int(time.time())
    store.save_connection(
        connection_id=connection_id,
        tokens=TokenSet("access", "refresh", now + 3600, "1"),
        ciphertext=SealedTokens(access=b"not-used", refresh=b"by-the-scheduler"),
        company_name=None,
        issuer="https://invoiced.test",
        now=now,
        refresh_at=refresh_at,
    )


def drain(queue_url: str) -> list[dict]:
    sqs = boto3.client("sqs")
    bodies = []
    while True:
        messages = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10).get("Messages", [])
        if not messages:
            return bodies
        for message in messages:
            bodies.append(json.loads(message["Body"]))
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])


def test_the_scheduler_reads_only_what_is_due_with_queries(empty_table, queue_url):
    store = TokenStore(empty_table)
    now = int(time.time())
    window = 900
    for number in range(60):  # not due: an hour and a keep-alive month away
        plant(store, f"later-{number}", now + 3600 if number % 2 else now + 30 * 86400)
    due_ids = {f"due-{number}" for number in range(25)}
    for number, connection_id in enumerate(sorted(due_ids)):
        plant(store, connection_id, now + (number % 3) * 300 - 600)  # overdue, due now, inside the window
    store.put_rescue(Rescue("kept-1", SealedTokens(access=b"a", refresh=b"r"), 1, now + 3600, now, "test"))
    client = RecordingClient(boto3.client("dynamodb"))
    scheduler = Scheduler(store=TokenStore(empty_table, client_factory=lambda: client), queue_url=queue_url,
                          window_seconds=window)

    report = scheduler.run()

    assert report.due == 26 and report.queued == 26 and report.failed == 0
    assert report.items_read == 26  # grows with what is due, not with the 86-item table
    assert report.shards == DUE_SHARDS
    assert set(client.operations) == {"query"}  # never a Scan, never the table itself
    bodies = drain(queue_url)
    assert {body["connection_id"] for body in bodies if body["kind"] == "refresh"} == due_ids
    assert [body for body in bodies if body["kind"] == "recover"] == [{"connection_id": "kept-1", "kind": "recover"}]


def test_the_scheduler_stops_early_when_time_runs_short(empty_table, queue_url):
    store = TokenStore(empty_table)
    now = int(time.time())
    for number in range(30):
        plant(store, f"due-{number}", now - 10)
    report = Scheduler(store=store, queue_url=queue_url, window_seconds=900).run(remaining_seconds=lambda: 5)
    assert report.stopped_early
    assert report.queued == report.due  # what it read, it queued


# ------------------------------------------------------------------ the worker
def record(body: str, message_id: str | None = None) -> dict:
    return {"messageId": message_id or uuid.uuid4().hex, "body": body}


def refresh_message(connection_id: str) -> str:
    return json.dumps({"connection_id": connection_id, "kind": "refresh"})


def test_one_failing_connection_never_blocks_the_others(stack, invoiced):
    ok_ids = [f"wk-ok-{uuid.uuid4().hex[:6]}" for _ in range(3)]
    for connection_id in ok_ids:
        connect(stack, connection_id)
        make_due(stack, connection_id)
    broken = f"wk-broken-{uuid.uuid4().hex[:6]}"
    plant(TokenStore(stack.table_name), broken, int(time.time()) - 10)  # its ciphertext does not decrypt
    records = [record(refresh_message(ok_ids[0])), record(refresh_message(broken), "broken-msg"),
               record("{not json", "malformed-msg"), record(refresh_message("wk-nobody")),
               record(refresh_message(ok_ids[1])), record(refresh_message(ok_ids[2]))]

    report = process_batch(records, refresher(stack), lambda: 100.0, reserve_seconds=30)

    assert report.failed_ids == ["broken-msg"]  # redelivered, then dead-lettered; never blocks the rest
    assert report.outcomes["refreshed"] == 3 and report.outcomes["not_found"] == 1
    assert report.outcomes["malformed"] == 1
    assert report.response() == {"batchItemFailures": [{"itemIdentifier": "broken-msg"}]}
    for connection_id in ok_ids:
        assert row(stack, connection_id).version == 2
    assert row(stack, broken).lease_owner is None  # the lease was given back
    # Leave the shared table with nothing due that can never succeed.
    boto3.client("dynamodb").update_item(TableName=stack.table_name, Key={"pk": {"S": "conn#" + broken}},
                                         UpdateExpression="REMOVE due_shard, refresh_at")


def test_no_provider_call_starts_when_the_invocation_is_about_to_end(stack, invoiced):
    ids = [f"wk-late-{uuid.uuid4().hex[:6]}" for _ in range(3)]
    for connection_id in ids:
        connect(stack, connection_id)
        make_due(stack, connection_id)
    remaining = iter([100.0, 12.0, 11.0])
    before = stack.invoiced.token_request_count("refresh_token")
    report = process_batch([record(refresh_message(c), c) for c in ids], refresher(stack),
                           lambda: next(remaining), reserve_seconds=30)
    assert report.outcomes["refreshed"] == 1 and report.deferred == 2
    assert report.failed_ids == ids[1:]  # handed back for redelivery
    assert stack.invoiced.token_request_count("refresh_token") - before == 1
    assert report.metrics() == {"RefreshRefreshed": 1, "RefreshDeferred": 2}


def test_bad_client_credentials_stop_further_token_requests_in_the_batch(stack, invoiced):
    ids = [f"wk-auth-{uuid.uuid4().hex[:6]}" for _ in range(3)]
    for connection_id in ids:
        connect(stack, connection_id)
        make_due(stack, connection_id)
    wrong = invoiced_client(stack)
    wrong._client_secret = lambda force: "wrong-secret"
    before = stack.invoiced.token_request_count()
    report = process_batch([record(refresh_message(c)) for c in ids], refresher(stack, client=wrong),
                           lambda: 100.0, reserve_seconds=30)
    assert report.outcomes == {"client_auth_failed": 1, "skipped_client_auth": 2}
    assert report.failed_ids == []  # the scheduler finds them again; no redelivery storm
    assert stack.invoiced.token_request_count() - before == 1  # one request (the re-read secret was identical)
    for connection_id in ids:
        current = row(stack, connection_id)
        assert current.version == 1 and current.failure_count == 0
        assert stack.invoiced.is_refresh_token_valid(stored_tokens(stack, connection_id)[1])


def test_a_recover_message_applies_kept_aside_tokens(stack, invoiced):
    connection_id = f"wk-rescue-{uuid.uuid4().hex[:6]}"
    connect(stack, connection_id)
    current = row(stack, connection_id)
    rotated = invoiced_client(stack).refresh(stored_tokens(stack, connection_id)[1])
    from invoiced_connect.storage.crypto import TokenCipher

    blob = TokenCipher(stack.kms_key_arn).encrypt(connection_id, rotated.access_token, rotated.refresh_token)
    TokenStore(stack.table_name).put_rescue(Rescue(connection_id, blob, current.version, rotated.expires_at,
                                                   int(time.time()), "test"))
    body = json.dumps({"connection_id": connection_id, "kind": "recover"})
    report = process_batch([record(body)], refresher(stack), lambda: 100.0, reserve_seconds=30)
    assert report.outcomes == {RefreshOutcome.RESCUE_APPLIED.value: 1}
    assert stored_tokens(stack, connection_id) == (rotated.access_token, rotated.refresh_token)


def test_a_lost_answer_is_queued_again_delayed_until_its_probe(stack, invoiced, queue_url):
    lost, fine = (f"wk-{kind}-{uuid.uuid4().hex[:6]}" for kind in ("lost", "fine"))
    for connection_id in (lost, fine):
        connect(stack, connection_id)
        make_due(stack, connection_id)
    invoiced.faults.set(commit_then_drop_next=1)
    report = process_batch([record(refresh_message(lost)), record(refresh_message(fine))], refresher(stack),
                           lambda: 100.0, reserve_seconds=30)
    assert report.outcomes == {"unknown_outcome": 1, "refreshed": 1}
    ((connection_id, retry_at),) = report.settle_checks
    assert connection_id == lost and retry_at == row(stack, lost).next_attempt_at

    sqs = RecordingClient(boto3.client("sqs"))
    assert queue_settle_checks(sqs, queue_url, report.settle_checks, now=retry_at - 90) == 1
    assert sqs.operations == ["send_message_batch"]
    assert drain(queue_url) == []  # not before its probe is due
    attributes = boto3.client("sqs").get_queue_attributes(QueueUrl=queue_url,
                                                          AttributeNames=["ApproximateNumberOfMessagesDelayed"])
    assert attributes["Attributes"]["ApproximateNumberOfMessagesDelayed"] == "1"


def test_queueing_lost_answers_again_caps_the_delay_and_never_raises(stack):
    class Failing:
        def send_message_batch(self, **kwargs):
            raise RuntimeError("SQS is down")

    assert queue_settle_checks(Failing(), "https://sqs.invalid/q", [("a", 10**10)], now=0) == 0
    sent = []

    class Recording:
        def send_message_batch(self, **kwargs):
            sent.extend(kwargs["Entries"])
            return {"Successful": kwargs["Entries"]}

    checks = [(f"c{n}", 1000 + n) for n in range(12)] + [("far", 10**10), ("past", 0)]
    assert queue_settle_checks(Recording(), "https://sqs.invalid/q", checks, now=1000) == 14
    delays = {json.loads(entry["MessageBody"])["connection_id"]: entry["DelaySeconds"] for entry in sent}
    assert delays["c0"] == 1 and delays["c11"] == 12 and delays["far"] == 900 and delays["past"] == 0
    assert {json.loads(entry["MessageBody"])["kind"] for entry in sent} == {"refresh"}
