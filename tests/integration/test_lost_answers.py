"""After a lost refresh answer, nobody is handed a token known to be dead.

Invoiced rotates on every refresh and revokes the stored pair at that moment;
when the answer is lost, the stored access token may already be dead. Until
the refresher has settled it (the probe, see test_refresh.py), readers get
``TokenUnavailable`` with ``retry_at``; after the probe, a fresh token or
``NeedsReauthorization``: through the Python SDK, cold and warm, and through
the tokens function (the any-language API)."""

from __future__ import annotations

import json
import time
import uuid

import boto3
import pytest

from invoiced_connect.app_api.service import TokenVendor, answer
from invoiced_connect.core.models import ConnectionStatus
from invoiced_connect.lifecycle.refresh import RefreshOutcome
from invoiced_connect.sdk.tokens import (
    RECHECK_SECONDS,
    NeedsReauthorization,
    TokenReader,
    TokenUnavailable,
    lambda_invoker,
)
from invoiced_connect.storage.crypto import TokenCipher
from invoiced_connect.storage.store import TokenStore
from local.contracts import validator_for
from tests.support.lifecycle import connect, make_due, refresher, row

#: A fault after which Invoiced has rotated (the answer is lost), and one
#: after which it has not (the client gave up before Invoiced acted).
ROTATED = {"commit_then_drop_next": 1}
NOT_ROTATED = {"timeout_next": 1, "timeout_seconds": 3}


@pytest.fixture
def cid(invoiced) -> str:
    return f"lost-{uuid.uuid4().hex[:10]}"


def in_process_reader(stack, *, clock=time.time, calls: list | None = None) -> TokenReader:
    """A consumer's reader whose tokens function runs in this process (with real time)."""

    def invoke(payload: dict) -> dict:
        if calls is not None:
            calls.append(payload)
        vendor = TokenVendor(store=TokenStore(stack.table_name), cipher=TokenCipher(stack.kms_key_arn),
                             refresher=lambda: refresher(stack))
        return answer(lambda: vendor.get_token(payload, remaining_seconds=60))

    return TokenReader(store=TokenStore(stack.table_name), cipher=TokenCipher(stack.kms_key_arn), invoke=invoke,
                       clock=clock, coalesce=False)


def lose_an_answer(stack, cid: str, faults: dict) -> None:
    make_due(stack, cid)
    stack.invoiced.faults.set(**faults)
    assert refresher(stack).refresh(cid).outcome is RefreshOutcome.UNKNOWN_OUTCOME
    stack.invoiced.faults.reset()


def settle_time_passed(stack, cid: str) -> None:
    """As if the settle time were over: the flagged row may be probed now."""
    past = str(int(time.time()) - 1)
    boto3.client("dynamodb").update_item(
        TableName=stack.table_name, Key={"pk": {"S": "conn#" + cid}},
        UpdateExpression="SET next_attempt_at = :past, refresh_at = :past",
        ExpressionAttributeValues={":past": {"N": past}})


def invoke_tokens(stack, payload: dict) -> dict:
    response = stack.client("lambda").invoke(FunctionName=f"{stack.stack_name}-tokens",
                                             Payload=json.dumps(payload).encode())
    assert "FunctionError" not in response, response
    body = json.loads(response["Payload"].read())
    validator_for("error" if "error" in body else "tokens.answer").validate(body)
    return body


# ------------------------------------------------------------------ the Python SDK
def test_a_cold_reader_gets_token_unavailable_until_the_loss_can_be_settled(stack, cid):
    connect(stack, cid)
    lose_an_answer(stack, cid, ROTATED)
    calls: list = []
    with pytest.raises(TokenUnavailable) as caught:
        in_process_reader(stack, calls=calls).get_access_token(cid)
    assert caught.value.retry_at == row(stack, cid).next_attempt_at > time.time()
    assert calls == []  # known without asking the tokens function
    with pytest.raises(TokenUnavailable):  # nor after a 401: no rotation is asked for
        in_process_reader(stack, calls=calls).token_rejected(cid, "whatever-the-caller-had")
    assert calls == []


def test_a_warm_reader_learns_of_a_loss_within_the_recheck_time(stack, cid):
    connect(stack, cid)
    offset = [0.0]
    reader = in_process_reader(stack, clock=lambda: time.time() + offset[0])
    before = reader.get_access_token(cid)
    lose_an_answer(stack, cid, ROTATED)
    assert not stack.invoiced.is_access_token_valid(before)
    # The documented bound: a cached token is served for at most RECHECK_SECONDS unchecked.
    offset[0] = RECHECK_SECONDS + 1
    with pytest.raises(TokenUnavailable) as caught:
        reader.get_access_token(cid)
    assert caught.value.retry_at == row(stack, cid).next_attempt_at


def test_a_warm_reader_told_of_a_401_learns_of_the_loss_at_once(stack, cid):
    connect(stack, cid)
    reader = in_process_reader(stack)
    before = reader.get_access_token(cid)
    lose_an_answer(stack, cid, ROTATED)
    with pytest.raises(TokenUnavailable):
        reader.token_rejected(cid, before)
    with pytest.raises(TokenUnavailable):  # and the rejected token left the cache
        reader.get_access_token(cid)


def test_once_settled_a_rotated_loss_is_needs_reauthorization_for_every_reader(stack, cid):
    connect(stack, cid)
    warm = in_process_reader(stack)
    warm.get_access_token(cid)
    lose_an_answer(stack, cid, ROTATED)
    settle_time_passed(stack, cid)
    with pytest.raises(NeedsReauthorization):
        in_process_reader(stack).get_access_token(cid)  # the tokens function probed: 401
    assert row(stack, cid).status is ConnectionStatus.NEEDS_REAUTH
    warm.forget(cid)
    with pytest.raises(NeedsReauthorization):
        warm.get_access_token(cid)


def test_once_settled_a_loss_before_invoiced_acted_gives_readers_a_fresh_working_token(stack, cid):
    connect(stack, cid)
    lose_an_answer(stack, cid, NOT_ROTATED)
    with pytest.raises(TokenUnavailable):
        in_process_reader(stack).get_access_token(cid)
    settle_time_passed(stack, cid)
    token = in_process_reader(stack).get_token(cid)
    assert stack.invoiced.is_access_token_valid(token.access_token)
    current = row(stack, cid)
    assert token.version == current.version == 2 and current.outcome_unknown_at == 0


# ------------------------------------------------------------------ the tokens function (any language)
def test_the_tokens_function_answers_unavailable_with_retry_at_then_needs_reauth(stack, cid):
    connect(stack, cid)
    lose_an_answer(stack, cid, ROTATED)
    body = invoke_tokens(stack, {"connection_id": cid})
    assert body["error"] == "unavailable" and body["retry_at"] == row(stack, cid).next_attempt_at
    assert "access_token" not in body
    version = row(stack, cid).version
    assert invoke_tokens(stack, {"connection_id": cid, "rejected_version": version})["error"] == "unavailable"
    settle_time_passed(stack, cid)
    assert invoke_tokens(stack, {"connection_id": cid})["error"] == "needs_reauth"


def test_the_tokens_function_answers_a_fresh_token_once_a_loss_before_invoiced_acted_is_settled(stack, cid):
    connect(stack, cid)
    lose_an_answer(stack, cid, NOT_ROTATED)
    assert invoke_tokens(stack, {"connection_id": cid})["error"] == "unavailable"
    settle_time_passed(stack, cid)
    body = invoke_tokens(stack, {"connection_id": cid})
    assert stack.invoiced.is_access_token_valid(body["access_token"]) and body["version"] == 2


def test_an_sdk_reader_through_the_lambda_api_gets_the_typed_error(stack, cid):
    connect(stack, cid)
    lose_an_answer(stack, cid, ROTATED)
    settle_time_passed(stack, cid)
    reader = TokenReader(store=TokenStore(stack.table_name), cipher=TokenCipher(stack.kms_key_arn),
                         invoke=lambda_invoker(stack.env["TOKENS_FUNCTION_NAME"]))
    with pytest.raises(NeedsReauthorization):
        reader.get_access_token(cid)
