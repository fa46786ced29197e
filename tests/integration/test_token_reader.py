"""The reader SDK: cached tokens, typed errors, and one locked refresh for
many readers (with in-process coalescing switched off, too)."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from invoiced_connect.core.lifetimes import MIN_VALIDITY_SECONDS, REFERENCE_LIFETIME_SECONDS, ROTATION_MARGIN_SECONDS
from invoiced_connect.core.models import ConnectionStatus, InvalidConnectionId
from invoiced_connect.entry import connections as operations
from invoiced_connect.lifecycle.disconnect import Disconnector
from invoiced_connect.lifecycle.refresh import Mode
from invoiced_connect.sdk.tokens import (
    RECHECK_SECONDS,
    ConnectionNotFound,
    ConnectionRevoked,
    NeedsReauthorization,
    ReadCounts,
    TokenReader,
    TokenUnavailable,
)
from invoiced_connect.storage.crypto import TokenCipher
from tests.support.lifecycle import (
    connect,
    direct_invoker,
    expire,
    invoiced_client,
    make_due,
    reader,
    refresher,
    row,
    store,
    stored_tokens,
)


class CountingKms:
    def __init__(self, stack) -> None:
        self.cipher = TokenCipher(stack.kms_key_arn)
        self.decrypts = 0

    def decrypt_access(self, connection_id: str, sealed):
        self.decrypts += 1
        return self.cipher.decrypt_access(connection_id, sealed)


@pytest.fixture
def cid(invoiced) -> str:
    return f"rd-{uuid.uuid4().hex[:10]}"


def test_a_token_is_read_once_then_served_from_memory(stack, cid):
    connect(stack, cid)
    kms = CountingKms(stack)
    calls: list = []
    tokens = reader(stack, calls=calls, kms=kms)
    first = tokens.get_access_token(cid)
    assert first == stored_tokens(stack, cid)[0]
    assert stack.invoiced.is_access_token_valid(first)
    for _ in range(50):
        assert tokens.get_access_token(cid) == first
    assert tokens.calls["reads"] == 1 and kms.decrypts == 1 and calls == []


def test_the_cache_ends_before_the_scheduler_may_rotate_and_an_unchanged_version_is_not_decrypted_again(stack, cid):
    connect(stack, cid)
    current = row(stack, cid)
    kms = CountingKms(stack)
    offset = [0]
    tokens = reader(stack, kms=kms, clock=lambda: time.time() + offset[0])
    token = tokens.get_access_token(cid)
    # The scheduler may rotate from refresh_at - window on: the cache must be gone by then.
    offset[0] = current.refresh_at - 900 - time.time()
    assert tokens.get_access_token(cid) == token
    assert tokens.calls["reads"] == 2 and kms.decrypts == 1  # re-read the row, same version: no KMS call


@pytest.mark.parametrize("active_use", [False, True], ids=["expiry-margin", "rotation-margin"])
def test_a_cached_token_near_its_margin_is_read_again_and_one_well_inside_is_served_from_memory(
        stack, cid, active_use):
    """The cache's own end, through the SDK, for a one-hour token (what
    Invoiced grants, and what the margins were chosen for): idle, it
    ends MIN_VALIDITY_SECONDS before expiry; kept fresh by the scheduler, it
    ends ROTATION_MARGIN_SECONDS before the scheduler's window opens. The
    caller asks for no validity at all, so only the cache's margin decides,
    and each pair of reads is closer than a recheck, which would re-read anyway."""
    connect(stack, cid, active_use=active_use)
    current = row(stack, cid)
    assert abs(current.expires_at - current.refreshed_at - REFERENCE_LIFETIME_SECONDS) <= 5
    offset = [0.0]
    counts, kms, calls = ReadCounts(), CountingKms(stack), []
    tokens = TokenReader(store=store(stack), cipher=kms, invoke=direct_invoker(stack, calls),
                         clock=lambda: time.time() + offset[0], counts=counts)
    if active_use:
        assert current.refresh_at is not None and current.refresh_at <= current.expires_at
        margin_at = current.refresh_at - tokens.window_seconds - ROTATION_MARGIN_SECONDS
    else:
        assert current.refresh_at is not None and current.refresh_at > current.expires_at  # keep-alive only
        margin_at = current.expires_at - MIN_VALIDITY_SECONDS
    step = RECHECK_SECONDS / 3

    def read_at(moment: float):
        offset[0] = moment - time.time()
        return tokens.get_token(cid, min_validity_seconds=0)

    token = read_at(margin_at - 20 * 60)  # comfortably inside: 20 minutes before the margin
    assert read_at(margin_at - 20 * 60 + 2 * step) == token
    assert counts.take() == (2, 1), "a token well inside the margin is served from memory"

    assert read_at(margin_at - step) == token  # read again: longer than a recheck since the last read
    assert read_at(margin_at + step) == token  # past the margin, sooner than a recheck
    assert counts.take() == (2, 2), "a token past the cache's margin must not be served from memory"
    assert tokens.calls["reads"] == 3 and kms.decrypts == 1 and calls == []  # same version: no KMS, no refresh


def test_an_expiring_token_is_refreshed_through_the_locked_path(stack, cid):
    connect(stack, cid)
    old_access, _ = stored_tokens(stack, cid)
    expire(stack, cid)
    calls: list = []
    token = reader(stack, calls=calls).get_access_token(cid)
    assert token != old_access and stack.invoiced.is_access_token_valid(token)
    assert calls == [{"connection_id": cid}]  # the default validity: the tokens function knows the lifetime
    assert row(stack, cid).version == 2
    assert row(stack, cid).active_until > time.time() + 23 * 3600  # a reader asked: in active use again


@pytest.mark.parametrize("coalesce", [True, False])
def test_many_readers_and_refreshers_at_once_cause_one_token_request(stack, cid, coalesce):
    connect(stack, cid)
    expire(stack, cid)
    make_due(stack, cid)
    before = stack.invoiced.token_request_count("refresh_token")
    shared_reader = reader(stack, coalesce=coalesce)
    barrier = threading.Barrier(12)
    tokens: list[str] = []
    outcomes: list[str] = []

    def read() -> None:
        barrier.wait()
        tokens.append(shared_reader.get_access_token(cid))

    def read_fresh_process() -> None:  # another Lambda: its own reader, nothing shared
        barrier.wait()
        tokens.append(reader(stack).get_access_token(cid))

    def scheduled() -> None:
        barrier.wait()
        outcomes.append(refresher(stack).refresh(cid, mode=Mode.SCHEDULED, wait_seconds=15).outcome.value)

    threads = [threading.Thread(target=target) for target in [read] * 4 + [read_fresh_process] * 4 + [scheduled] * 4]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert stack.invoiced.token_request_count("refresh_token") - before == 1
    assert len(tokens) == 8 and len(set(tokens)) == 1  # every reader got the new token
    assert stack.invoiced.is_access_token_valid(tokens[0])
    assert row(stack, cid).status is ConnectionStatus.ACTIVE and row(stack, cid).version == 2


def test_after_a_401_a_newer_stored_token_is_used_without_a_refresh(stack, cid):
    connect(stack, cid)
    calls: list = []
    tokens = reader(stack, calls=calls)
    stale = tokens.get_access_token(cid)
    make_due(stack, cid)
    refresher(stack).refresh(cid)  # the scheduler rotated: `stale` now gets 401
    assert not stack.invoiced.is_access_token_valid(stale)
    fresh = tokens.token_rejected(cid, stale).access_token
    assert fresh != stale and stack.invoiced.is_access_token_valid(fresh)
    assert calls == []
    assert tokens.get_access_token(cid) == fresh  # and the cache now holds it


def test_after_a_401_with_no_newer_token_one_locked_refresh_is_asked_for(stack, cid):
    connect(stack, cid)
    calls: list = []
    tokens = reader(stack, calls=calls)
    token = tokens.get_access_token(cid)
    fresh = tokens.token_rejected(cid, token).access_token
    assert fresh != token and stack.invoiced.is_access_token_valid(fresh)
    assert calls == [{"connection_id": cid, "rejected_version": 1}]


def test_typed_errors_for_unknown_reauth_and_revoked_connections(stack, cid):
    tokens = reader(stack)
    with pytest.raises(ConnectionNotFound):
        tokens.get_access_token(cid)
    with pytest.raises(InvalidConnectionId):
        tokens.get_access_token("../etc/passwd")
    connect(stack, cid)
    access, _ = stored_tokens(stack, cid)
    invoiced_client(stack).revoke(access)
    expire(stack, cid)
    with pytest.raises(NeedsReauthorization):
        tokens.get_access_token(cid)  # the refresh finds the refresh token dead
    with pytest.raises(NeedsReauthorization):
        reader(stack).get_access_token(cid)  # and a fresh reader sees the status at once
    other = cid + "-b"
    connect(stack, other)
    assert Disconnector(refresher(stack)).disconnect(other).outcome == "disconnected"
    with pytest.raises(ConnectionRevoked):
        tokens.get_access_token(other)


def test_a_refresh_that_cannot_happen_now_is_token_unavailable_with_a_retry_time(stack, cid):
    connect(stack, cid)
    expire(stack, cid)
    stack.invoiced.faults.set(server_error_next=1)
    with pytest.raises(TokenUnavailable) as caught:
        reader(stack).get_access_token(cid)
    assert caught.value.retry_at and caught.value.retry_at > time.time()
    assert cid in str(caught.value) or caught.value.connection_id == cid
    assert row(stack, cid).status is ConnectionStatus.ACTIVE


def test_disconnect_revokes_at_invoiced_and_erases_the_tokens(stack, cid):
    connect(stack, cid)
    access, refresh_token = stored_tokens(stack, cid)
    def disconnect() -> dict:
        return operations.handle({"action": "disconnect", "connection_id": cid}, remaining_seconds=60,
                                 refresher=refresher(stack))

    answer = disconnect()
    assert answer["outcome"] == "disconnected" and answer["status"] == "revoked"
    assert not stack.invoiced.is_access_token_valid(access)
    assert not stack.invoiced.is_refresh_token_valid(refresh_token)
    found = store(stack).get_connection(cid)
    assert found is not None and found[1] is None  # the row stays, the tokens are gone
    assert found[0].status is ConnectionStatus.REVOKED and found[0].version == 2
    assert disconnect()["outcome"] == "already_revoked"


def test_disconnect_with_an_expiring_token_rotates_first_then_revokes_the_live_pair(stack, cid):
    connect(stack, cid)
    expire(stack, cid)
    before = stack.invoiced.token_request_count("refresh_token")
    answer = Disconnector(refresher(stack)).disconnect(cid)
    assert answer.outcome == "disconnected"
    assert stack.invoiced.token_request_count("refresh_token") - before == 1
    assert row(stack, cid).version == 3  # rotated (2), then revoked (3)


def test_disconnect_while_invoiced_is_down_changes_nothing(stack, cid):
    connect(stack, cid)
    unreachable = invoiced_client(stack)
    unreachable.base_url = "http://127.0.0.1:9"  # nothing listens there: the revoke cannot be sent
    answer = Disconnector(refresher(stack, client=unreachable)).disconnect(cid)
    assert answer.outcome == "unavailable"
    current = row(stack, cid)
    assert current.status is ConnectionStatus.ACTIVE and current.lease_owner is None
    assert stack.invoiced.is_refresh_token_valid(stored_tokens(stack, cid)[1])


def test_disconnecting_a_connection_that_needs_reauth_needs_no_invoiced(stack, cid):
    connect(stack, cid)
    invoiced_client(stack).revoke(stored_tokens(stack, cid)[0])
    make_due(stack, cid)
    refresher(stack).refresh(cid)
    assert row(stack, cid).status is ConnectionStatus.NEEDS_REAUTH
    answer = Disconnector(refresher(stack)).disconnect(cid)
    assert answer.outcome == "disconnected" and answer.status == "revoked"
