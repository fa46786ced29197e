"""The app's side: the app API functions through the Lambda Invoke API, the
connection's own Invoiced environment, no rotation storm after 401s, readers
that never decrypt a refresh token, and rows from before the split."""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

import boto3
import pytest
import requests
from requests.adapters import BaseAdapter

from invoiced_connect import InvoicedApi, runtime
from invoiced_connect.app_api.service import TokenVendor
from invoiced_connect.app_api.service import answer as typed_answer
from invoiced_connect.core.models import Attention, ConnectionStatus, TokenSet
from invoiced_connect.sdk import tokens as token_sdk
from invoiced_connect.sdk.api import ApiAuthError, ApiEnvironmentError
from invoiced_connect.sdk.tokens import TokenReader, TokenRejected, lambda_invoker
from invoiced_connect.storage.crypto import SealedTokens, TokenCipher, encryption_context
from invoiced_connect.storage.store import Rescue, TokenStore
from local.contracts import validator_for
from tests.support.lifecycle import connect, expire, invoiced_client, make_due, refresher, row, stored_tokens


@pytest.fixture
def cid(invoiced) -> str:
    return f"app-{uuid.uuid4().hex[:10]}"


def invoke(stack, function: str, payload: Any) -> dict[str, Any]:
    response = stack.client("lambda").invoke(FunctionName=f"{stack.stack_name}-{function}",
                                             Payload=json.dumps(payload).encode())
    assert "FunctionError" not in response, response
    return json.loads(response["Payload"].read())


def check(contract: str, answer: dict[str, Any]) -> dict[str, Any]:
    """The answer fits the contract (or the error contract, if it is an error)."""
    validator_for("error" if "error" in answer else contract).validate(answer)
    return answer


def sdk_reader(stack, cipher: TokenCipher | None = None) -> TokenReader:
    """A reader as a consumer Lambda has it: the table, the key, the tokens function; nothing shared."""
    return TokenReader(store=TokenStore(stack.table_name), cipher=cipher or TokenCipher(stack.kms_key_arn),
                       invoke=lambda_invoker(stack.env["TOKENS_FUNCTION_NAME"]), coalesce=False)


# ------------------------------------------------------------------ the three functions
def test_the_links_function_makes_a_link_that_opens_the_flow(stack, cid):
    answer = check("links.answer", invoke(stack, "links", {"connection_id": cid, "ttl_seconds": 600}))
    assert answer["url"].startswith(stack.connect_url + "?link=")
    assert time.time() + 590 <= answer["expires_at"] <= time.time() + 610
    opened = requests.get(answer["url"], allow_redirects=False, timeout=10)
    assert opened.status_code == 302 and opened.headers["Location"].startswith(stack.invoiced.base_url)


@pytest.mark.parametrize(("request_body", "code"), [
    ({"connection_id": "../x"}, "bad_request"),
    ({"connection_id": "a", "ttl_seconds": 59}, "bad_request"),
    ({"connection_id": "a", "ttl_seconds": "600"}, "bad_request"),
    ({"connection_id": "a", "return_to": "https://evil.example/"}, "return_url_refused"),
    ({"connection_id": "a", "surprise": 1}, "bad_request"),
    ({"connection_id": "a", "api_version": 2}, "unsupported_version"),
    ([], "bad_request"),
])
def test_the_links_function_refuses_bad_input_with_a_typed_error(stack, request_body, code):
    assert check("links.answer", invoke(stack, "links", request_body))["error"] == code


def test_the_tokens_function_answers_a_valid_token_with_the_connections_api(stack, cid):
    connect(stack, cid)
    answer = check("tokens.answer", invoke(stack, "tokens", {"connection_id": cid}))
    assert answer["api_url"] == stack.invoiced.api_url and answer["tenant_id"] == row(stack, cid).tenant_id
    assert stack.invoiced.is_access_token_valid(answer["access_token"])
    company = requests.get(f"{answer['api_url']}/companies/current", timeout=10,
                           headers={"Authorization": f"Bearer {answer['access_token']}"})
    assert company.status_code == 200 and company.json()["id"] == int(row(stack, cid).tenant_id)
    assert "refresh_token" not in answer


def test_the_tokens_function_refreshes_an_expiring_token_and_honours_min_validity(stack, cid):
    connect(stack, cid)
    old_access, _ = stored_tokens(stack, cid)
    expire(stack, cid)
    answer = check("tokens.answer", invoke(stack, "tokens", {"connection_id": cid}))
    assert answer["access_token"] != old_access and answer["version"] == 2
    assert answer["expires_at"] > time.time() + 3000
    # Asking for more than the stored token has left: a rotation, not a stale token
    # (a vendor with an empty cache, as a cold tokens function has).
    boto3.client("dynamodb").update_item(
        TableName=stack.table_name, Key={"pk": {"S": "conn#" + cid}}, UpdateExpression="SET expires_at = :at",
        ExpressionAttributeValues={":at": {"N": str(int(time.time()) + 1200)}})
    vendor = TokenVendor(store=TokenStore(stack.table_name), cipher=TokenCipher(stack.kms_key_arn),
                         refresher=lambda: refresher(stack))
    longer = check("tokens.answer", typed_answer(lambda: vendor.get_token({"connection_id": cid, "min_validity_seconds": 1800})))
    assert longer["version"] == 3 and longer["expires_at"] > time.time() + 1800
    enough = check("tokens.answer", typed_answer(lambda: vendor.get_token({"connection_id": cid, "min_validity_seconds": 60})))
    assert enough["version"] == 3  # from the cache


@pytest.mark.parametrize(("request_body", "code"), [
    ({"connection_id": "nobody-here"}, "not_found"),
    ({"connection_id": "a", "min_validity_seconds": 1801}, "bad_request"),
    ({"connection_id": "a", "min_validity_seconds": True}, "bad_request"),
    ({"connection_id": "a", "min_validity_seconds": 5, "rejected_version": 1}, "bad_request"),
    ({}, "bad_request"),
    ("connection", "bad_request"),
])
def test_the_tokens_function_refuses_bad_input_with_a_typed_error(stack, request_body, code):
    assert check("tokens.answer", invoke(stack, "tokens", request_body))["error"] == code


def test_the_tokens_function_says_needs_reauth_and_revoked(stack, cid):
    connect(stack, cid)
    invoiced_client(stack).revoke(stored_tokens(stack, cid)[0])
    expire(stack, cid)
    assert check("tokens.answer", invoke(stack, "tokens", {"connection_id": cid}))["error"] == "needs_reauth"
    other = cid + "-b"
    connect(stack, other)
    invoke(stack, "connections", {"action": "disconnect", "connection_id": other})
    assert check("tokens.answer", invoke(stack, "tokens", {"connection_id": other}))["error"] == "revoked"


def test_the_connection_state_function_shows_a_connection_and_never_a_token(stack, cid):
    connect(stack, cid)
    access, refresh = stored_tokens(stack, cid)
    answer = check("connection-state.answer", invoke(stack, "connection-state", {"action": "get", "connection_id": cid}))
    state = answer["connection"]
    assert state["status"] == "active" and state["attention"] is None and state["version"] == 1
    assert state["api_url"] == stack.invoiced.api_url and state["issuer"] == stack.invoiced.base_url
    assert access not in json.dumps(answer) and refresh not in json.dumps(answer)
    missing = invoke(stack, "connection-state", {"action": "get", "connection_id": cid + "-none"})
    assert check("connection-state.answer", missing)["error"] == "not_found"
    assert check("connection-state.answer", invoke(stack, "connection-state", {"action": "drop"}))["error"] == "bad_request"


def test_the_store_reads_state_without_asking_for_a_ciphertext(stack, cid):
    connect(stack, cid)
    asked: list[dict[str, Any]] = []
    client = boto3.client("dynamodb")
    client.meta.events.register("provide-client-params.dynamodb.GetItem", lambda params, **_: asked.append(params))
    state = TokenStore(stack.table_name, client_factory=lambda: client).get_connection_state(cid)
    assert state is not None and state.connection_id == cid
    (params,) = asked
    requested = set(params["ExpressionAttributeNames"].values())
    assert not requested & {"access_ciphertext", "refresh_ciphertext", "token_ciphertext", "lease_owner"}


def test_connections_needing_attention_are_listed_from_the_index_page_by_page(stack, invoiced):
    tag = uuid.uuid4().hex[:6]
    dead, failing, healthy = f"att-dead-{tag}", f"att-failing-{tag}", f"att-ok-{tag}"
    for connection_id in (dead, failing, healthy):
        connect(stack, connection_id)
    invoiced_client(stack).revoke(stored_tokens(stack, dead)[0])
    make_due(stack, dead)
    refresher(stack).refresh(dead)
    store = TokenStore(stack.table_name)
    for _ in range(3):  # the third failure in a row lists it
        invoiced.faults.set(server_error_next=1)
        boto3.client("dynamodb").update_item(
            TableName=stack.table_name, Key={"pk": {"S": "conn#" + failing}},
            UpdateExpression="SET next_attempt_at = :zero", ExpressionAttributeValues={":zero": {"N": "0"}})
        make_due(stack, failing)
        refresher(stack).refresh(failing)
    assert row(stack, failing).attention is Attention.FAILING and row(stack, dead).attention is Attention.NEEDS_REAUTH

    kept = f"att-kept-{tag}"
    connect(stack, kept)
    store.put_rescue(Rescue(kept, SealedTokens(access=b"a", refresh=b"r"), row(stack, kept).version,
                            int(time.time()) + 3600, int(time.time()), "test"))
    seen: dict[str, str] = {}
    calls: list[str] = []
    # The functions' own client (they run in this process): what the listing asks DynamoDB.
    runtime.current().client("dynamodb").meta.events.register("before-call.dynamodb.*",
                                                lambda model, **_: calls.append(model.name))
    next_token = None
    pages = 0
    while True:  # one entry a page: the token carries the listing across the index's partitions
        request = {"action": "list_attention", "limit": 1, **({"next_token": next_token} if next_token else {})}
        answer = check("connection-state.answer", invoke(stack, "connection-state", request))
        pages += 1
        seen.update({entry["connection_id"]: entry["attention"] for entry in answer["connections"]})
        next_token = answer["next_token"]
        if next_token is None:
            break
        assert pages < 500
    assert seen[dead] == "needs_reauth" and seen[failing] == "failing" and seen[kept] == "kept_aside"
    assert healthy not in seen
    assert calls and set(calls) == {"Query"}  # the attention-index, never a Scan
    state = invoke(stack, "connection-state", {"action": "get", "connection_id": failing})["connection"]
    assert state["attention"] == "failing" and state["failure_count"] == 3 and state["reason"]

    make_due(stack, failing)
    boto3.client("dynamodb").update_item(
        TableName=stack.table_name, Key={"pk": {"S": "conn#" + failing}},
        UpdateExpression="SET next_attempt_at = :zero", ExpressionAttributeValues={":zero": {"N": "0"}})
    assert refresher(stack).refresh(failing).outcome.value == "refreshed"  # healthy again: off the list
    assert store.get_connection_state(failing).attention is None
    bad = invoke(stack, "connection-state", {"action": "list_attention", "next_token": "not-one-of-ours"})
    assert check("connection-state.answer", bad)["error"] == "bad_request"


# ------------------------------------------------------------------ the connection's own environment
def consumer_environment(stack, monkeypatch, **extra: str) -> None:
    """A consumer Lambda configured as the README says: the outputs, nothing else."""
    for name in list(__import__("os").environ):
        if name.startswith("INVOICED_") or name in ("CONNECTIONS_FUNCTION_NAME", "PUBLIC_BASE_URL"):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TABLE_NAME", stack.table_name)
    monkeypatch.setenv("KMS_KEY_ID", stack.kms_key_arn)
    monkeypatch.setenv("TOKENS_FUNCTION_NAME", stack.env["TOKENS_FUNCTION_NAME"])
    for name, value in extra.items():
        monkeypatch.setenv(name, value)
    from invoiced_connect import runtime

    runtime.reset()


@pytest.fixture
def restore_settings():
    from invoiced_connect import runtime

    yield
    runtime.reset()


def test_a_reader_configured_with_only_the_outputs_reaches_its_connections_api(stack, cid, monkeypatch,
                                                                               restore_settings):
    connect(stack, cid)
    consumer_environment(stack, monkeypatch)
    with InvoicedApi(cid) as api:
        company = api.get("/companies/current")
    assert company["id"] == int(row(stack, cid).tenant_id)
    assert api.api_url == stack.invoiced.api_url


def test_a_configured_api_url_of_another_environment_fails_naming_both(stack, cid, monkeypatch, restore_settings):
    connect(stack, cid)
    consumer_environment(stack, monkeypatch, INVOICED_API_URL="https://api.invoiced.com")
    with pytest.raises(ApiEnvironmentError) as caught, InvoicedApi(cid) as api:
        api.get("/companies/current")  # nothing is sent: there is no server at the configured URL here
    assert "https://api.invoiced.com" in str(caught.value) and stack.invoiced.api_url in str(caught.value)


# ------------------------------------------------------------------ no rotation storm
class FakeApi(BaseAdapter):
    """Stands in for an Invoiced REST API host: one fixed answer to everything; records what
    reached it (URL and Authorization)."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__()
        self.status, self.body = status, body
        self.seen: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    def send(self, request, **kwargs):
        with self._lock:
            self.seen.append((request.url, request.headers.get("Authorization", "")))
        response = requests.Response()
        response.status_code = self.status
        response._content = json.dumps(self.body).encode()
        response.headers["Content-Type"] = "application/json"
        response.url = request.url
        response.request = request
        return response

    def close(self) -> None:
        return None


def reject_everything() -> FakeApi:
    """An API that answers 401 to every token (a consumer pointed at the wrong place)."""
    return FakeApi(401, {"type": "invalid_request", "message": "denied"})


def test_many_consumers_rejected_everywhere_cause_at_most_one_rotation_and_the_connection_stays(stack, cid):
    connect(stack, cid)
    before = stack.invoiced.token_request_count("refresh_token")
    api_root = stack.invoiced.api_url
    adapter = reject_everything()
    outcomes: list[str] = []
    barrier = threading.Barrier(8)

    def consumer() -> None:
        session = requests.Session()
        session.trust_env = False
        session.mount(api_root, adapter)
        api = InvoicedApi(cid, tokens=sdk_reader(stack), session=session)
        barrier.wait()
        for _ in range(3):  # each consumer keeps trying, as a misconfigured fleet would
            try:
                api.get("/companies/current")
            except (TokenRejected, ApiAuthError) as exc:
                outcomes.append(type(exc).__name__)

    threads = [threading.Thread(target=consumer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert stack.invoiced.token_request_count("refresh_token") - before <= 1
    assert len(outcomes) == 24 and "TokenRejected" in outcomes
    current = row(stack, cid)
    assert current.status is ConnectionStatus.ACTIVE
    access, refresh = stored_tokens(stack, cid)
    assert stack.invoiced.is_access_token_valid(access) and stack.invoiced.is_refresh_token_valid(refresh)
    rejected = [event for event in stack.published_events()
                if event["detail-type"] == "Connection Token Rejected" and event["detail"]["connection_id"] == cid]
    assert len(rejected) == 1


def test_after_the_window_one_more_rotation_is_allowed(stack, cid):
    connect(stack, cid)
    before = stack.invoiced.token_request_count("refresh_token")
    window = int(stack.env.get("REJECTED_TOKEN_WINDOW_SECONDS", 300))
    reader = sdk_reader(stack)
    first = reader.get_access_token(cid)
    second = reader.token_rejected(cid, first).access_token  # one rotation
    with pytest.raises(TokenRejected) as caught:
        reader.token_rejected(cid, second)
    assert caught.value.retry_at and caught.value.retry_at >= time.time() + window - 5
    # Later, the window has passed: a fresh process may rotate once more.
    boto3.client("dynamodb").update_item(
        TableName=stack.table_name, Key={"pk": {"S": "conn#" + cid}},
        UpdateExpression="SET rejected_refresh_at = :long_ago",
        ExpressionAttributeValues={":long_ago": {"N": str(int(time.time()) - window - 1)}})
    third = sdk_reader(stack).token_rejected(cid, second).access_token
    assert third not in (first, second) and stack.invoiced.is_access_token_valid(third)
    assert stack.invoiced.token_request_count("refresh_token") - before == 2


# ------------------------------------------------------------------ readers never see a refresh token
class RecordingKms:
    """A KMS client that records the encryption context of every call."""

    def __init__(self) -> None:
        self._client = boto3.client("kms")
        self.decrypts: list[dict[str, str]] = []

    def decrypt(self, **kwargs: Any) -> Any:
        self.decrypts.append(dict(kwargs["EncryptionContext"]))
        return self._client.decrypt(**kwargs)


def test_the_reader_path_never_asks_kms_for_a_refresh_token(stack, cid):
    connect(stack, cid)
    kms = RecordingKms()
    reader = sdk_reader(stack, TokenCipher(stack.kms_key_arn, client_factory=lambda: kms))
    reader.get_access_token(cid)  # cold
    reader.get_access_token(cid)  # warm
    expire(stack, cid)
    reader.forget(cid)
    fresh = reader.get_access_token(cid)  # expiring: the tokens function refreshes
    reader.token_rejected(cid, fresh)  # after a 401
    reader.forget()
    reader.get_access_token(cid)
    assert kms.decrypts and all(context == encryption_context(cid, "access") for context in kms.decrypts)


def legacy_row(stack, connection_id: str) -> tuple[str, str]:
    """Turn a connection into a row as written before the split: one ciphertext of both tokens."""
    access, refresh = stored_tokens(stack, connection_id)
    pair = json.dumps({"access_token": access, "refresh_token": refresh}).encode()
    blob = boto3.client("kms").encrypt(KeyId=stack.kms_key_arn, Plaintext=pair,
                                       EncryptionContext=encryption_context(connection_id))["CiphertextBlob"]
    boto3.client("dynamodb").update_item(
        TableName=stack.table_name, Key={"pk": {"S": "conn#" + connection_id}},
        UpdateExpression="SET token_ciphertext = :blob REMOVE access_ciphertext, refresh_ciphertext, api_url",
        ExpressionAttributeValues={":blob": {"B": blob}})
    return access, refresh


def test_a_row_from_before_the_split_still_gives_readers_a_token_and_is_rewritten(stack, cid):
    connect(stack, cid)
    legacy_access, _ = legacy_row(stack, cid)
    kms = RecordingKms()
    token = sdk_reader(stack, TokenCipher(stack.kms_key_arn, client_factory=lambda: kms)).get_access_token(cid)
    assert kms.decrypts == []  # the reader cannot open the pair: it asked the tokens function
    assert token != legacy_access and stack.invoiced.is_access_token_valid(token)
    item = boto3.client("dynamodb").get_item(TableName=stack.table_name, Key={"pk": {"S": "conn#" + cid}})["Item"]
    assert "token_ciphertext" not in item and {"access_ciphertext", "refresh_ciphertext"} <= set(item)
    access, refresh = stored_tokens(stack, cid)
    assert access == token and stack.invoiced.is_refresh_token_valid(refresh)
    assert row(stack, cid).version == 2 and row(stack, cid).status is ConnectionStatus.ACTIVE


def test_a_row_from_before_the_split_is_rewritten_by_its_next_scheduled_refresh(stack, cid):
    connect(stack, cid)
    legacy_row(stack, cid)
    make_due(stack, cid)
    assert refresher(stack).refresh(cid).outcome.value == "refreshed"
    item = boto3.client("dynamodb").get_item(TableName=stack.table_name, Key={"pk": {"S": "conn#" + cid}})["Item"]
    assert "token_ciphertext" not in item and "access_ciphertext" in item
    assert stack.invoiced.is_refresh_token_valid(stored_tokens(stack, cid)[1])
    # Its issuer is unknown to the known environments and its API URL was dropped: the state says so.
    assert invoke(stack, "connection-state", {"action": "get", "connection_id": cid})["connection"]["api_url"] is None


class CountingStore(TokenStore):
    def __init__(self, table_name: str) -> None:
        super().__init__(table_name)
        self.reads = 0

    def get_connection(self, connection_id, *, consistent=True):
        self.reads += 1
        return super().get_connection(connection_id, consistent=consistent)


def test_a_warm_tokens_function_answers_from_its_cache_with_no_aws_call(stack, cid):
    connect(stack, cid)
    store = CountingStore(stack.table_name)
    kms = RecordingKms()
    vendor = TokenVendor(store=store, cipher=TokenCipher(stack.kms_key_arn, client_factory=lambda: kms),
                         refresher=lambda: pytest.fail("a valid token needs no refresher"))
    first = vendor.get_token({"connection_id": cid})
    assert (store.reads, len(kms.decrypts)) == (1, 1)
    for _ in range(20):
        assert vendor.get_token({"connection_id": cid, "min_validity_seconds": 600}) == first
    assert (store.reads, len(kms.decrypts)) == (1, 1)


@pytest.mark.parametrize("recorded_api_url", ["https://api.sandbox.invoiced.com", None])
def test_a_sandbox_connection_read_with_only_the_outputs_goes_to_the_sandbox_api(stack, cid, monkeypatch,
                                                                                  restore_settings, recorded_api_url):
    """A connection made on a sandbox stack (issuer sandbox.invoiced.com; its API URL recorded, or
    not, as on rows from before it was), read by a consumer configured with nothing but the
    outputs: its token goes to api.sandbox.invoiced.com."""
    now = int(time.time())
    sealed = TokenCipher(stack.kms_key_arn).encrypt(cid, "sandbox-access-token", "sandbox-refresh-token")
    TokenStore(stack.table_name).save_connection(
        connection_id=cid, tokens=TokenSet("sandbox-access-token", "sandbox-refresh-token", now + 3600, "167"),
        ciphertext=sealed, company_name=None, issuer="https://sandbox.invoiced.com", now=now,
        api_url=recorded_api_url)
    consumer_environment(stack, monkeypatch)
    production, sandbox = (FakeApi(200, {"id": 167, "name": "Sandbox Co"}) for _ in range(2))
    session = requests.Session()
    session.trust_env = False
    session.mount("https://api.invoiced.com", production)
    session.mount("https://api.sandbox.invoiced.com", sandbox)
    with InvoicedApi(cid, session=session) as api:
        assert api.get("/companies/current")["name"] == "Sandbox Co"
    assert production.seen == []
    assert sandbox.seen == [("https://api.sandbox.invoiced.com/companies/current", "Bearer sandbox-access-token")]
    state = invoke(stack, "connection-state", {"action": "get", "connection_id": cid})["connection"]
    assert state["api_url"] == "https://api.sandbox.invoiced.com"


def test_a_warm_tokens_function_learns_of_a_forced_refresh_and_a_disconnect_within_a_minute(stack, cid):
    connect(stack, cid)
    offset = [0.0]
    vendor = TokenVendor(store=TokenStore(stack.table_name), cipher=TokenCipher(stack.kms_key_arn),
                         refresher=lambda: refresher(stack), clock=lambda: time.time() + offset[0])
    first = vendor.get_token({"connection_id": cid})
    operator = {"action": "refresh", "connection_id": cid, "force": True}
    assert invoke(stack, "connections", operator)["outcome"] == "refreshed"  # an operator's refresh elsewhere
    assert vendor.get_token({"connection_id": cid})["version"] == first["version"]  # still cached...
    offset[0] = token_sdk.RECHECK_SECONDS + 1
    replaced = vendor.get_token({"connection_id": cid})  # ...but for at most a minute
    assert replaced["version"] == first["version"] + 1
    assert stack.invoiced.is_access_token_valid(replaced["access_token"])
    invoke(stack, "connections", {"action": "disconnect", "connection_id": cid})
    offset[0] += token_sdk.RECHECK_SECONDS + 1
    assert typed_answer(lambda: vendor.get_token({"connection_id": cid}))["error"] == "revoked"


def test_many_callers_reporting_one_dead_token_share_one_replacement(stack, cid):
    """Many callers report the stored token rejected at once: every one gets the one new
    pair (they wait for its refresher), none is refused as a repeated rejection."""
    connect(stack, cid)
    before = stack.invoiced.token_request_count("refresh_token")
    barrier = threading.Barrier(6)
    answers: list[dict[str, Any]] = []

    def report() -> None:
        vendor = TokenVendor(store=TokenStore(stack.table_name), cipher=TokenCipher(stack.kms_key_arn),
                             refresher=lambda: refresher(stack))
        barrier.wait()
        answers.append(typed_answer(lambda: vendor.get_token({"connection_id": cid, "rejected_version": 1})))

    threads = [threading.Thread(target=report) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [answer.get("error") for answer in answers] == [None] * 6
    assert {answer["version"] for answer in answers} == {2}
    assert stack.invoiced.token_request_count("refresh_token") - before == 1


def test_a_row_from_before_the_split_can_be_disconnected(stack, cid):
    connect(stack, cid)
    access, refresh = legacy_row(stack, cid)
    answer = invoke(stack, "connections", {"action": "disconnect", "connection_id": cid})
    assert answer["outcome"] == "disconnected"
    assert not stack.invoiced.is_access_token_valid(access) and not stack.invoiced.is_refresh_token_valid(refresh)
