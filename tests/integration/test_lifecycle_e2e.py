"""The lifecycle through the real handlers, the way AWS runs them: the
schedule fires the scheduler, the worker receives SQS batches, readers reach
the connections function through Lambda's Invoke API, events land on the
bus, and the CLI works against the running stack. Nothing logs a token."""

from __future__ import annotations

import json
import threading
import uuid

import boto3
import pytest
from invoiced_connect_tools import cli

from invoiced_connect import runtime
from invoiced_connect.core.models import ConnectionStatus
from tests.support.browser import callback, start_flow
from tests.support.lifecycle import expire, invoiced_client, make_due, row, stored_tokens


@pytest.fixture
def cid(invoiced) -> str:
    return f"e2e-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def reader():
    runtime.reset()
    yield runtime.current().reader
    runtime.reset()


def connect_in_browser(stack, connection_id: str) -> None:
    flow = start_flow(stack, connection_id)
    assert callback(stack.invoiced.consent(flow.authorize_url), flow.cookie).status_code == 200


def events_for(stack, connection_id: str) -> list[str]:
    return [event["detail-type"] for event in stack.published_events()
            if event["detail"].get("connection_id") == connection_id]


def printed_json(capsys):
    """The command's own output: its last line (the in-process functions log to stdout too)."""
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def secrets_of(stack, connection_id: str) -> list[str]:
    return [*stored_tokens(stack, connection_id), stack.client_secret]


def test_connect_and_reconnect_publish_lifecycle_events_without_secrets(stack, cid):
    connect_in_browser(stack, cid)
    connect_in_browser(stack, cid)
    assert events_for(stack, cid) == ["Connection Created", "Connection Reconnected"]
    event = [e for e in stack.published_events() if e["detail"].get("connection_id") == cid][-1]
    assert event["source"] == "invoiced-connect"
    assert set(event["detail"]) == {"connection_id", "tenant_id", "company_name", "status", "version", "reason",
                                    "occurred_at"}
    assert event["detail"]["version"] == 2 and event["detail"]["company_name"] == "Acme Corporation"
    text = json.dumps(stack.published_events())
    assert not any(secret in text for secret in secrets_of(stack, cid))


def test_the_schedule_queues_due_connections_and_the_worker_refreshes_them(stack, cid, capsys):
    ids = [f"{cid}-{n}" for n in range(3)]
    for connection_id in ids:
        connect_in_browser(stack, connection_id)
    for connection_id in ids[:2]:
        make_due(stack, connection_id)
    old = {connection_id: stored_tokens(stack, connection_id) for connection_id in ids}
    before = stack.invoiced.token_request_count("refresh_token")

    result = stack.fire_schedule("SchedulerFunction")["SchedulerFunction"]
    assert stack.wait_for_queues(timeout=60)

    assert result["due"] >= 2 and result["queued"] == result["due"]
    assert [row(stack, c).version for c in ids] == [2, 2, 1]  # the third was not due
    # Other tests' connections share this table (some cooling down): at most one request each.
    assert 2 <= stack.invoiced.token_request_count("refresh_token") - before <= result["due"]
    for connection_id in ids[:2]:
        access, refresh_token = stored_tokens(stack, connection_id)
        assert stack.invoiced.is_refresh_token_valid(refresh_token)
        assert not stack.invoiced.is_refresh_token_valid(old[connection_id][1])
    logs = capsys.readouterr()
    for connection_id in ids:
        for secret in [*old[connection_id], *secrets_of(stack, connection_id)]:
            assert secret not in logs.out + logs.err


def test_a_dead_refresh_token_found_by_the_worker_means_needs_reauth_and_an_event(stack, cid):
    connect_in_browser(stack, cid)
    invoiced_client(stack).revoke(stored_tokens(stack, cid)[0])
    make_due(stack, cid)
    stack.fire_schedule("SchedulerFunction")
    assert stack.wait_for_queues(timeout=60)
    assert row(stack, cid).status is ConnectionStatus.NEEDS_REAUTH
    assert events_for(stack, cid)[-1] == "Connection Needs Reauthorization"
    # The customer reconnects: the connection is healthy again, and the app hears of it.
    connect_in_browser(stack, cid)
    assert row(stack, cid).status is ConnectionStatus.ACTIVE
    assert events_for(stack, cid)[-2:] == ["Connection Reconnected", "Connection Recovered"]
    recovered = [e for e in stack.published_events() if e["detail"].get("connection_id") == cid][-1]
    assert (recovered["detail"]["reason"], recovered["detail"]["status"]) == ("needs_reauth", "active")


@pytest.mark.parametrize(("faults", "status"), [
    ({"commit_then_drop_next": 1}, ConnectionStatus.NEEDS_REAUTH),
    ({"timeout_next": 1, "timeout_seconds": 3}, ConnectionStatus.ACTIVE),
], ids=["rotated", "not rotated"])
def test_a_lost_answer_in_the_worker_is_settled_by_its_probe_without_another_schedule(stack, cid, faults, status):
    connect_in_browser(stack, cid)
    make_due(stack, cid)
    assert stack.wait_for_queues(timeout=60)  # nothing else in flight takes the fault
    stack.invoiced.faults.set(**faults)
    # Queued once, as the scheduler would, for this connection alone (a schedule run
    # would also queue other tests' due rows); the worker queues the lost answer again itself.
    stack.client("sqs").send_message(QueueUrl=stack.resources.ref("RefreshQueue"),
                                     MessageBody=json.dumps({"connection_id": cid, "kind": "refresh"}))
    assert stack.wait_for_queues(timeout=60)
    current = row(stack, cid)
    assert current.status is status and current.outcome_unknown_at == 0
    if status is ConnectionStatus.ACTIVE:
        # One rotation committed: the lost one never happened, the one after the probe did.
        assert current.version == 2 and stack.invoiced.is_access_token_valid(stored_tokens(stack, cid)[0])
        assert events_for(stack, cid)[-2:] == ["Connection Refresh Failing", "Connection Recovered"]
        recovered = [e for e in stack.published_events() if e["detail"].get("connection_id") == cid][-1]
        assert recovered["detail"]["reason"] == "outcome_unknown"
    else:
        # Settled by the probe, not by a refresh with the dead refresh token (whose
        # reason would be Invoiced's); the count of token requests is global to the
        # shared stack (the scheduler also refreshes other tests' rows), so it is not used.
        assert current.status_reason == "rotated_answer_lost" and current.version == 1
        assert events_for(stack, cid)[-1] == "Connection Needs Reauthorization"


def test_a_reader_gets_a_refreshed_token_through_the_invoke_api(stack, cid, reader, capsys):
    connect_in_browser(stack, cid)
    old_access, _ = stored_tokens(stack, cid)
    assert reader.get_access_token(cid) == old_access
    expire(stack, cid)
    reader.forget(cid)
    invoked = stack.lambda_api.counts.get(("TokensFunction", "RequestResponse"), 0)
    token = reader.get_access_token(cid)
    assert token != old_access and stack.invoiced.is_access_token_valid(token)
    assert stack.lambda_api.counts[("TokensFunction", "RequestResponse")] == invoked + 1
    logs = capsys.readouterr()
    assert token not in logs.out + logs.err and old_access not in logs.out + logs.err


def test_the_example_consumer_lists_every_invoice_of_the_connection(stack, cid, capsys):
    connect_in_browser(stack, cid)
    lam = stack.client("lambda")
    answer = json.loads(lam.invoke(FunctionName=stack.env["CONNECTIONS_FUNCTION_NAME"].replace(
        "-connections", "-list-invoices"), Payload=json.dumps({"connection_id": cid}))["Payload"].read())
    assert answer["connection_id"] == cid and answer["count"] == 250
    assert len({invoice["id"] for invoice in answer["invoices"]}) == 250
    missing = json.loads(lam.invoke(FunctionName=stack.env["CONNECTIONS_FUNCTION_NAME"].replace(
        "-connections", "-list-invoices"), Payload=json.dumps({"connection_id": cid + "-nobody"}))["Payload"].read())
    assert missing["error"] == "not_found"
    logs = capsys.readouterr()
    assert not any(secret in logs.out + logs.err for secret in secrets_of(stack, cid))


def test_the_cli_lists_shows_refreshes_and_disconnects(stack, cid, capsys):
    connect_in_browser(stack, cid)
    secrets_before = secrets_of(stack, cid)
    assert cli.main(["connections", "list"]) == 0
    listing = capsys.readouterr().out
    assert cid in listing and "active" in listing

    assert cli.main(["connections", "show", cid, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["status"] == "active" and shown["version"] == 1 and shown["has_tokens"] is True

    assert cli.main(["refresh", cid, "--json"]) == 0
    refreshed = printed_json(capsys)
    assert refreshed["outcome"] == "refreshed" and refreshed["version"] == 2
    assert cli.main(["refresh", cid]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith(f"{cid}: refreshed (version 3), expires ")

    assert cli.main(["disconnect", cid]) == 2  # not interactive: --yes is required
    assert "--yes" in capsys.readouterr().err
    assert cli.main(["disconnect", cid, "--yes", "--json"]) == 0
    assert printed_json(capsys)["outcome"] == "disconnected"
    assert row(stack, cid).status is ConnectionStatus.REVOKED
    assert events_for(stack, cid)[-1] == "Connection Disconnected"

    assert cli.main(["connections", "show", "nobody-here"]) == 1
    assert cli.main(["disconnect", "nobody-here", "--yes"]) == 1
    assert capsys.readouterr().out.strip().splitlines()[-1] == "nobody-here: no such connection"
    assert cli.main(["refresh", "../bad id"]) == 2
    everything = capsys.readouterr()
    assert not any(secret in everything.out + everything.err for secret in secrets_before)


def test_the_cli_reads_a_stack_by_name(stack, cid, capsys, monkeypatch):
    """`--stack NAME` reads the outputs of a CloudFormation stack (here one
    made in moto with the local stack's values) and works the same."""
    connect_in_browser(stack, cid)
    cfn = boto3.client("cloudformation")
    outputs = {
        "ConnectUrl": stack.connect_url, "LinkSigningSecretArn": stack.env["LINK_SIGNING_SECRET_ARN"],
        "TokensTableName": stack.table_name, "TokenKeyArn": stack.kms_key_arn,
        "ConnectionsFunctionName": stack.env["CONNECTIONS_FUNCTION_NAME"],
    }
    body = {"Resources": {"Placeholder": {"Type": "AWS::SNS::Topic"}},
            "Outputs": {key: {"Value": value} for key, value in outputs.items()}}
    name = f"ic-{uuid.uuid4().hex[:8]}"
    cfn.create_stack(StackName=name, TemplateBody=json.dumps(body))
    for variable, value in stack.env.items():  # the command changes os.environ: put it back afterwards
        monkeypatch.setenv(variable, value)
    assert cli.main(["--stack", name, "connections", "show", cid]) == 0
    shown = capsys.readouterr().out
    assert f"connection_id        {cid}" in shown and "has_tokens           True" in shown
    monkeypatch.undo()
    runtime.reset()


def test_readers_in_many_lambdas_at_once_cause_one_token_request_through_the_invoke_api(stack, cid):
    """Eight readers, each its own process as far as the SDK knows (no shared
    cache, no in-process coalescing), find the token expiring at the same moment."""
    from invoiced_connect.sdk.tokens import TokenReader, lambda_invoker
    from invoiced_connect.storage.crypto import TokenCipher
    from invoiced_connect.storage.store import TokenStore

    connect_in_browser(stack, cid)
    expire(stack, cid)
    before = stack.invoiced.token_request_count("refresh_token")
    barrier = threading.Barrier(8)
    got: list[str] = []

    def read() -> None:
        reader = TokenReader(store=TokenStore(stack.table_name), cipher=TokenCipher(stack.kms_key_arn),
                             invoke=lambda_invoker(stack.env["TOKENS_FUNCTION_NAME"]), coalesce=False)
        barrier.wait()
        got.append(reader.get_access_token(cid))

    threads = [threading.Thread(target=read) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert stack.invoiced.token_request_count("refresh_token") - before == 1
    assert len(got) == 8 and len(set(got)) == 1 and stack.invoiced.is_access_token_valid(got[0])
    assert row(stack, cid).status is ConnectionStatus.ACTIVE and row(stack, cid).version == 2
