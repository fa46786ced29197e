"""Refreshing under Invoiced's strict rotation: every outcome ends in its
documented state, and no refresh token Invoiced issued is ever lost.

Runs against the session's local stack (moto + the local Invoiced, which
revokes the old pair at once on every refresh)."""

from __future__ import annotations

import threading
import time
import uuid

import boto3
import pytest
from botocore.exceptions import ClientError

from invoiced_connect.cloud import events as lifecycle
from invoiced_connect.core.models import ConnectionStatus
from invoiced_connect.lifecycle.refresh import (
    ROTATED_ANSWER_LOST,
    UNKNOWN_OUTCOME_COOLDOWN_SECONDS,
    Mode,
    RefreshOutcome,
    RefreshPolicy,
)
from invoiced_connect.storage.crypto import TokenCipher
from invoiced_connect.storage.store import DUE_SHARDS, LeaseLost, Rescue, TokenStore
from tests.support.lifecycle import (
    CountingClient,
    connect,
    expire,
    invoiced_client,
    make_due,
    refresher,
    row,
    store,
    stored_tokens,
)


@pytest.fixture
def cid(invoiced) -> str:
    return f"rf-{uuid.uuid4().hex[:10]}"


def assert_live(stack, connection_id: str) -> None:
    """The stored pair is the one Invoiced accepts."""
    access, refresh_token = stored_tokens(stack, connection_id)
    assert stack.invoiced.is_refresh_token_valid(refresh_token)
    assert stack.invoiced.is_access_token_valid(access)


def refresh_calls(stack) -> int:
    return stack.invoiced.token_request_count("refresh_token")


# ------------------------------------------------------------------ the happy paths
def test_a_connection_not_due_is_left_alone(stack, cid):
    connect(stack, cid)
    before = refresh_calls(stack)
    result = refresher(stack).refresh(cid, mode=Mode.SCHEDULED)
    assert result.outcome is RefreshOutcome.ALREADY_FRESH
    assert refresh_calls(stack) == before
    assert row(stack, cid).version == 1


def test_a_due_connection_is_rotated_and_committed_with_the_next_version(stack, cid):
    connect(stack, cid)
    old_access, old_refresh = stored_tokens(stack, cid)
    make_due(stack, cid)
    result = refresher(stack).refresh(cid, mode=Mode.SCHEDULED)
    assert result.outcome is RefreshOutcome.REFRESHED and result.version == 2
    current = row(stack, cid)
    assert current.status is ConnectionStatus.ACTIVE and current.lease_owner is None
    assert current.refresh_at == current.expires_at  # still in active use: kept fresh ahead of expiry
    assert_live(stack, cid)
    assert not stack.invoiced.is_refresh_token_valid(old_refresh)
    assert not stack.invoiced.is_access_token_valid(old_access)


def test_an_idle_connection_is_scheduled_only_for_keep_alive(stack, cid):
    connect(stack, cid, active_use=False)
    current = row(stack, cid)
    keepalive = RefreshPolicy().keepalive_seconds
    assert current.refresh_at is not None and current.refresh_at >= current.refreshed_at + keepalive
    make_due(stack, cid)  # the keep-alive day has come
    assert refresher(stack).refresh(cid).outcome is RefreshOutcome.REFRESHED
    assert row(stack, cid).refresh_at >= int(time.time()) + keepalive - 5
    assert_live(stack, cid)


# ------------------------------------------------------------------ concurrency
@pytest.mark.parametrize("mode", [Mode.SCHEDULED, Mode.ON_DEMAND])
def test_simultaneous_refreshers_make_exactly_one_token_request(stack, cid, mode):
    connect(stack, cid)
    make_due(stack, cid)
    expire(stack, cid)
    version = row(stack, cid).version
    before = refresh_calls(stack)
    barrier = threading.Barrier(8)
    results = []

    def run() -> None:
        barrier.wait()
        # Separate refreshers: nothing shared in process but the HTTP client.
        stale = version if mode is Mode.ON_DEMAND else None
        results.append(refresher(stack).refresh(cid, mode=mode, stale_version=stale, wait_seconds=15))

    threads = [threading.Thread(target=run) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert refresh_calls(stack) - before == 1
    outcomes = sorted(result.outcome.value for result in results)
    assert outcomes.count("refreshed") == 1, outcomes
    assert set(outcomes) <= {"refreshed", "already_fresh", "race_recovered"}
    assert row(stack, cid).version == version + 1
    assert_live(stack, cid)


def test_a_busy_lease_is_reported_not_waited_for_by_the_scheduler(stack, cid):
    connect(stack, cid)
    make_due(stack, cid)
    current = row(stack, cid)
    now = int(time.time())
    store(stack).take_lease(cid, owner="someone-else", version=current.version, now=now, until=now + 60)
    before = refresh_calls(stack)
    result = refresher(stack).refresh(cid, mode=Mode.SCHEDULED)
    assert result.outcome is RefreshOutcome.BUSY
    assert refresh_calls(stack) == before
    store(stack).release_lease(cid, owner="someone-else")


def test_an_expired_lease_is_taken_over(stack, cid):
    connect(stack, cid)
    make_due(stack, cid)
    current = row(stack, cid)
    now = int(time.time())
    store(stack).take_lease(cid, owner="crashed-worker", version=current.version, now=now - 120, until=now - 1)
    assert refresher(stack).refresh(cid).outcome is RefreshOutcome.REFRESHED
    assert_live(stack, cid)


def test_a_refresh_that_lost_the_race_is_success_not_failure(stack, cid):
    """Between our lease and our call, the pair is rotated elsewhere (as by a
    reconnect): Invoiced says the refresh token is invalid; we re-read and
    find the newer version, and nothing is marked dead."""
    connect(stack, cid)
    make_due(stack, cid)

    _, stale_refresh = stored_tokens(stack, cid)

    def rotate_elsewhere() -> None:
        # Another refresher (say, one whose lease we think expired) rotates
        # this very refresh token and commits a newer version.
        rotated = invoiced_client(stack).refresh(stale_refresh)
        store(stack).save_connection(
            connection_id=cid, tokens=rotated, company_name=None, issuer=stack.invoiced.base_url,
            ciphertext=TokenCipher(stack.kms_key_arn).encrypt(cid, rotated.access_token, rotated.refresh_token),
            now=int(time.time()),
        )

    client = CountingClient(invoiced_client(stack), before=rotate_elsewhere)
    events = refresher(stack).events
    result = refresher(stack, client=client, events=events).refresh(cid)
    assert result.outcome is RefreshOutcome.RACE_RECOVERED
    current = row(stack, cid)
    assert current.status is ConnectionStatus.ACTIVE and current.lease_owner is None
    # The result is the row as re-read, the winner's version, not the one leased.
    assert current.version == 2
    assert (result.version, result.status) == (current.version, current.status.value)
    assert_live(stack, cid)
    assert lifecycle.CONNECTION_NEEDS_REAUTH not in events.types_for(cid)


def test_a_commit_is_refused_once_the_version_moved_even_with_the_lease_still_held(stack, cid):
    """The commit is conditioned on the version read, not only on the lease:
    a write that raises the version but leaves the lease in place (none of
    today's writers does; a future one might) still refuses it."""
    connect(stack, cid)
    leased = row(stack, cid)
    now = int(time.time())
    store(stack).take_lease(cid, owner="our-refresher", version=leased.version, now=now, until=now + 60)
    tokens_before = stored_tokens(stack, cid)
    boto3.client("dynamodb").update_item(
        TableName=stack.table_name,
        Key={"pk": {"S": f"conn#{cid}"}},
        UpdateExpression="ADD version :one",
        ExpressionAttributeValues={":one": {"N": "1"}},
    )
    moved = row(stack, cid)
    assert moved.version == leased.version + 1 and moved.lease_owner == "our-refresher"

    blob = TokenCipher(stack.kms_key_arn).encrypt(cid, "access-from-a-stale-read", "refresh-from-a-stale-read")
    with pytest.raises(LeaseLost):
        store(stack).commit_tokens(cid, owner="our-refresher", version=leased.version, ciphertext=blob,
                                   expires_at=now + 3600, now=now, refresh_at=now + 3600)
    after = row(stack, cid)
    assert (after.version, after.lease_owner) == (moved.version, "our-refresher")
    assert stored_tokens(stack, cid) == tokens_before


# ------------------------------------------------------------------ faults
@pytest.mark.parametrize("fault", ["server_error_next", "rate_limit_next", "html_next"])
def test_transient_failures_back_off_and_keep_the_connection(stack, cid, fault):
    connect(stack, cid)
    make_due(stack, cid)
    stack.invoiced.faults.set(**{fault: 1})
    events = refresher(stack).events
    result = refresher(stack, events=events).refresh(cid)
    assert result.outcome is RefreshOutcome.TRANSIENT
    current = row(stack, cid)
    assert current.status is ConnectionStatus.ACTIVE and current.version == 1 and current.lease_owner is None
    assert current.failure_count == 1 and current.last_error
    now = int(time.time())
    base = 30  # first backoff: 15-30 s with jitter
    assert now + base // 2 - 2 <= current.next_attempt_at <= now + base + 2
    # The scheduler reads the due-index a window ahead: it comes back then, not before.
    assert current.refresh_at - RefreshPolicy().window_seconds == current.next_attempt_at
    due = [key.connection_id for shard in range(DUE_SHARDS)
           for page, _ in store(stack).due(shard, now + RefreshPolicy().window_seconds) for key in page]
    assert cid not in due
    assert_live(stack, cid)  # nothing was spent at Invoiced
    # During the cooldown nobody calls Invoiced, not even on demand.
    before = refresh_calls(stack)
    again = refresher(stack).refresh(cid, mode=Mode.ON_DEMAND, stale_version=1)
    assert again.outcome is RefreshOutcome.COOLING_DOWN and again.retry_at == current.next_attempt_at
    assert refresh_calls(stack) == before
    assert events.types_for(cid) == []  # one blip is not "failing"


def test_repeated_failures_grow_the_backoff_publish_failing_once_and_recover(stack, cid):
    connect(stack, cid)
    events = refresher(stack).events
    clock_offset = [0]
    r = refresher(stack, events=events, clock=lambda: time.time() + clock_offset[0])
    delays = []
    for _ in range(4):
        make_due(stack, cid, at=int(time.time()) + clock_offset[0])
        stack.invoiced.faults.set(server_error_next=1)
        result = r.refresh(cid)
        assert result.outcome is RefreshOutcome.TRANSIENT
        delays.append(result.retry_at - int(time.time() + clock_offset[0]))
        clock_offset[0] += delays[-1] + 1  # jump past the cooldown
    assert delays[3] > delays[0] and all(15 <= d <= 1800 for d in delays), delays
    assert events.types_for(cid) == [lifecycle.CONNECTION_REFRESH_FAILING]
    assert row(stack, cid).failure_count == 4
    assert r.refresh(cid, mode=Mode.FORCED).outcome is RefreshOutcome.REFRESHED
    recovered = row(stack, cid)
    assert recovered.failure_count == 0 and recovered.next_attempt_at == 0 and recovered.last_error is None
    assert_live(stack, cid)


#: The faults after which Invoiced has rotated but the answer is lost: the
#: connection dropped, the answer held past the client's timeout, a cut body.
ROTATED_BUT_LOST = {
    "commit then drop": {"commit_then_drop_next": 1},
    "timeout after processing": {"commit_then_hold_next": 1, "timeout_seconds": 3},
    "truncated body": {"truncate_next": 1},
}


def lose_an_answer(stack, cid: str, faults: dict, events=None):
    """Connect, make due, and refresh once under ``faults``: the answer is lost."""
    connect(stack, cid)
    make_due(stack, cid)
    stack.invoiced.faults.set(**faults)
    result = refresher(stack, events=events).refresh(cid)
    assert result.outcome is RefreshOutcome.UNKNOWN_OUTCOME
    return result


def after_settling(stack, extra: float = 0.0, **kwargs):
    """A refresher whose clock is past the settle time of a loss that just happened."""
    return refresher(stack, clock=lambda: time.time() + RefreshPolicy().settle_seconds + 1 + extra, **kwargs)


@pytest.mark.parametrize("faults", ROTATED_BUT_LOST.values(), ids=ROTATED_BUT_LOST.keys())
def test_a_lost_answer_is_settled_by_a_probe_in_seconds_and_a_dead_pair_is_needs_reauth(stack, cid, faults):
    events = refresher(stack).events
    result = lose_an_answer(stack, cid, faults, events)
    current = row(stack, cid)
    settle = RefreshPolicy().settle_seconds
    assert current.outcome_unknown_at > 0 and current.status is ConnectionStatus.ACTIVE
    assert settle < UNKNOWN_OUTCOME_COOLDOWN_SECONDS
    assert time.time() + settle - 5 <= current.next_attempt_at == result.retry_at <= time.time() + settle + 5
    assert events.types_for(cid) == [lifecycle.CONNECTION_REFRESH_FAILING]
    # Until nothing can be in flight, nobody tries again.
    before = refresh_calls(stack)
    make_due(stack, cid)
    for mode, stale in ((Mode.SCHEDULED, None), (Mode.ON_DEMAND, 1), (Mode.FORCED, None)):
        assert refresher(stack).refresh(cid, mode=mode, stale_version=stale).outcome is RefreshOutcome.COOLING_DOWN
    # Then the old access token answers: Invoiced revoked it when it rotated.
    settled = after_settling(stack, events=events).refresh(cid)
    assert settled.outcome is RefreshOutcome.NEEDS_REAUTH
    assert refresh_calls(stack) == before  # settled without spending a token request
    current = row(stack, cid)
    assert current.status is ConnectionStatus.NEEDS_REAUTH and current.status_reason == ROTATED_ANSWER_LOST
    assert events.types_for(cid) == [lifecycle.CONNECTION_REFRESH_FAILING, lifecycle.CONNECTION_NEEDS_REAUTH]


def test_a_timeout_before_invoiced_acted_is_settled_alive_and_refreshed_at_once(stack, cid):
    lose_an_answer(stack, cid, {"timeout_next": 1, "timeout_seconds": 3})
    before = refresh_calls(stack)
    assert after_settling(stack).refresh(cid).outcome is RefreshOutcome.REFRESHED
    assert refresh_calls(stack) == before + 1
    current = row(stack, cid)
    assert current.outcome_unknown_at == 0 and current.failure_count == 0 and current.attention is None
    assert current.version == 2
    assert_live(stack, cid)


def test_a_probe_found_alive_then_a_failed_refresh_clears_the_flag_and_backs_off_normally(stack, cid):
    lose_an_answer(stack, cid, {"timeout_next": 1, "timeout_seconds": 3})
    stack.invoiced.faults.set(server_error_next=1)
    result = after_settling(stack).refresh(cid)
    assert result.outcome is RefreshOutcome.TRANSIENT
    current = row(stack, cid)
    assert current.outcome_unknown_at == 0 and current.status is ConnectionStatus.ACTIVE
    assert current.failure_count == 2 and current.attention is None
    # The normal backoff (second failure: 30-60 s), not the long cooldown.
    now = time.time() + RefreshPolicy().settle_seconds + 1
    assert now + 15 <= current.next_attempt_at <= now + 61
    assert_live(stack, cid)


def test_a_probe_without_an_answer_keeps_the_flag_and_the_long_cooldown(stack, cid):
    lose_an_answer(stack, cid, {"commit_then_drop_next": 1})
    stack.invoiced.faults.set(api_gateway_error_next=1)
    before = refresh_calls(stack)
    result = after_settling(stack).refresh(cid)
    assert result.outcome is RefreshOutcome.UNKNOWN_OUTCOME
    current = row(stack, cid)
    assert current.outcome_unknown_at > 0 and current.status is ConnectionStatus.ACTIVE
    assert current.next_attempt_at >= time.time() + RefreshPolicy().settle_seconds + UNKNOWN_OUTCOME_COOLDOWN_SECONDS - 5
    assert refresh_calls(stack) == before
    # The next probe, after the cooldown, settles it.
    later = after_settling(stack, extra=UNKNOWN_OUTCOME_COOLDOWN_SECONDS + 60)
    assert later.refresh(cid).outcome is RefreshOutcome.NEEDS_REAUTH
    assert refresh_calls(stack) == before


@pytest.mark.parametrize(("faults", "outcome"), [
    ({"commit_then_drop_next": 1}, RefreshOutcome.NEEDS_REAUTH),
    ({"timeout_next": 1, "timeout_seconds": 3}, RefreshOutcome.REFRESHED),
], ids=["rotated", "not rotated"])
def test_when_the_old_access_token_expired_anyway_the_old_refresh_token_tells(stack, cid, faults, outcome):
    lose_an_answer(stack, cid, faults)
    before = refresh_calls(stack)
    expired = refresher(stack, clock=lambda: time.time() + 3700)  # past the stored token's expiry
    assert expired.refresh(cid).outcome is outcome
    assert refresh_calls(stack) == before + 1  # no probe: the refresh itself answered


def test_a_revoked_refresh_token_means_needs_reauth_with_an_event(stack, cid):
    connect(stack, cid)
    make_due(stack, cid)
    access, _ = stored_tokens(stack, cid)
    invoiced_client(stack).revoke(access)  # e.g. the customer removed the app in Invoiced
    events = refresher(stack).events
    result = refresher(stack, events=events).refresh(cid)
    assert result.outcome is RefreshOutcome.NEEDS_REAUTH
    current = row(stack, cid)
    assert current.status is ConnectionStatus.NEEDS_REAUTH and current.refresh_at is None  # left the due-index
    assert current.version == 1 and stored_tokens(stack, cid)  # kept, not deleted
    assert events.types_for(cid) == [lifecycle.CONNECTION_NEEDS_REAUTH]
    before = refresh_calls(stack)
    assert refresher(stack).refresh(cid, mode=Mode.FORCED).outcome is RefreshOutcome.NOT_ACTIVE
    assert refresh_calls(stack) == before  # no more retries


def test_invalid_client_credentials_leave_the_connection_untouched(stack, cid):
    connect(stack, cid)
    make_due(stack, cid)
    wrong = invoiced_client(stack)
    reads = []
    wrong._client_secret = lambda force: reads.append(force) or "not-the-secret"
    result = refresher(stack, client=wrong).refresh(cid)
    assert result.outcome is RefreshOutcome.CLIENT_AUTH_FAILED
    assert reads == [False, True]  # the secret was re-read once before giving up
    current = row(stack, cid)
    assert (current.status, current.version, current.failure_count, current.lease_owner) == (
        ConnectionStatus.ACTIVE, 1, 0, None)
    assert_live(stack, cid)


# ------------------------------------------------------------------ a failed commit
class ThrottledStore(TokenStore):
    """Fails the first ``n`` commits as DynamoDB does under throttling."""

    def __init__(self, table_name: str, failures: int) -> None:
        super().__init__(table_name)
        self.failures = failures

    def commit_tokens(self, *args, **kwargs):
        if self.failures > 0:
            self.failures -= 1
            raise ClientError({"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "slow down"}},
                              "UpdateItem")
        return super().commit_tokens(*args, **kwargs)


def test_a_throttled_commit_is_retried(stack, cid):
    connect(stack, cid)
    make_due(stack, cid)
    throttled = ThrottledStore(stack.table_name, failures=2)
    assert refresher(stack, store_=throttled, sleep=lambda s: None).refresh(cid).outcome is RefreshOutcome.REFRESHED
    assert throttled.failures == 0
    assert_live(stack, cid)


def test_tokens_whose_commit_keeps_failing_are_kept_aside_and_recovered(stack, cid):
    connect(stack, cid)
    make_due(stack, cid)
    throttled = ThrottledStore(stack.table_name, failures=4)  # every attempt of the first commit
    events = refresher(stack).events
    result = refresher(stack, store_=throttled, sleep=lambda s: None, events=events).refresh(cid)
    # Kept aside, alarmed, then applied at once (the row was still at the version read).
    assert result.outcome is RefreshOutcome.RESCUE_APPLIED
    assert store(stack).get_rescue(cid) is None
    assert row(stack, cid).version == 2
    assert_live(stack, cid)
    assert events.types_for(cid) == [lifecycle.CONNECTION_REFRESH_FAILING]


def test_a_write_sneaking_in_before_the_commit_never_loses_a_live_grant(stack, cid):
    """A reconnect lands while our refresh is in flight: the reconnect wins,
    our freshly rotated grant is kept aside, then revoked as orphaned."""
    connect(stack, cid)
    make_due(stack, cid)
    issued = {}

    def reconnect_now() -> None:
        connect(stack, cid)
        issued["reconnected"] = stored_tokens(stack, cid)

    client = CountingClient(invoiced_client(stack), after=reconnect_now)
    original = client._client.refresh

    def remember(refresh_token: str):
        tokens = original(refresh_token)
        issued["rotated"] = tokens
        return tokens

    client._client.refresh = remember
    result = refresher(stack, client=client).refresh(cid)
    assert result.outcome is RefreshOutcome.RESCUE_DISCARDED
    assert stored_tokens(stack, cid) == issued["reconnected"]  # the reconnect's pair is the connection
    assert_live(stack, cid)
    rotated = issued["rotated"]
    assert not stack.invoiced.is_access_token_valid(rotated.access_token)  # the orphan was revoked
    assert store(stack).get_rescue(cid) is None


def test_kept_aside_tokens_are_recovered_when_the_stored_token_is_rejected(stack, cid):
    """The recovery of last resort: the rescue row exists (its write landed,
    the recovery did not), and the next refresh finds the stored token dead."""
    connect(stack, cid)
    make_due(stack, cid)
    current = row(stack, cid)
    _, refresh_token = stored_tokens(stack, cid)
    rotated = invoiced_client(stack).refresh(refresh_token)  # what a crashed refresher received
    blob = TokenCipher(stack.kms_key_arn).encrypt(cid, rotated.access_token, rotated.refresh_token)
    store(stack).put_rescue(Rescue(cid, blob, current.version, rotated.expires_at, int(time.time()), "test"))
    result = refresher(stack).refresh(cid)
    assert result.outcome is RefreshOutcome.RESCUE_APPLIED
    assert stored_tokens(stack, cid) == (rotated.access_token, rotated.refresh_token)
    assert row(stack, cid).status is ConnectionStatus.ACTIVE
    assert store(stack).get_rescue(cid) is None


def test_a_throttled_encrypt_of_new_tokens_is_retried(stack, cid):
    connect(stack, cid)
    make_due(stack, cid)
    r = refresher(stack, sleep=lambda s: None)
    real_encrypt, failures = r.cipher.encrypt, [2]

    def flaky_encrypt(*args):
        if failures[0]:
            failures[0] -= 1
            raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "slow down"}}, "Encrypt")
        return real_encrypt(*args)

    r.cipher.encrypt = flaky_encrypt
    assert r.refresh(cid).outcome is RefreshOutcome.REFRESHED
    assert failures == [0]
    assert_live(stack, cid)
