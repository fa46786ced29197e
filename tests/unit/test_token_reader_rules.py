"""The reader SDK's rules (sdk/tokens.py) with recording fakes: what token is
returned, when the store, KMS and the tokens function are called and with what,
the cache's end at each margin, the 401 path, coalescing, errors and counts."""

from __future__ import annotations

import dataclasses
import io
import json
import threading
import time

import pytest

from invoiced_connect.core.models import Connection, ConnectionStatus, InvalidConnectionId
from invoiced_connect.sdk import tokens as sdk
from invoiced_connect.sdk.tokens import (
    ERRORS_BY_CODE,
    AccessToken,
    ConnectionNotFound,
    ConnectionRevoked,
    FreshTokenRequest,
    NeedsReauthorization,
    ReadCounts,
    TokenError,
    TokenReader,
    TokenRejected,
    TokenUnavailable,
    lambda_invoker,
    token_from_answer,
)
from invoiced_connect.storage.crypto import SealedTokens

NOW = 1_000_000
API = "https://api.example.test"


# ------------------------------------------------------------------ fakes
class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = float(now)

    def __call__(self) -> float:
        return self.now


class Store:
    """One row; records each read and how it was asked for."""

    def __init__(self, **changes) -> None:
        self.row: Connection | None = Connection(**{
            "connection_id": "acme-1", "tenant_id": "t-1", "company_name": None, "scopes": (), "issuer": "i",
            "status": ConnectionStatus.ACTIVE, "expires_at": NOW + 3600, "version": 1, "created_at": 0,
            "updated_at": 0, "api_url": API, **changes})
        self.sealed: SealedTokens | None = None
        self.reads: list[tuple[str, bool]] = []

    def change(self, **changes) -> None:
        self.row = dataclasses.replace(self.row, **changes)

    def get_connection(self, connection_id: str, consistent: bool = False):
        self.reads.append((connection_id, consistent))
        if self.row is None or connection_id != self.row.connection_id:
            return None
        if self.sealed is not None:
            return self.row, self.sealed
        version = f"v{self.row.version}".encode()
        return self.row, SealedTokens(access=version, refresh=b"r" + version)


class Cipher:
    def __init__(self) -> None:
        self.calls: list[tuple[str, SealedTokens]] = []

    def decrypt_access(self, connection_id: str, sealed: SealedTokens) -> str:
        self.calls.append((connection_id, sealed))
        return f"access-{sealed.access.decode()}"


class Invoke:
    """The tokens function: records each payload, answers with the next answer
    (a dict, or a callable of the payload)."""

    def __init__(self, *answers) -> None:
        self.answers = list(answers)
        self.payloads: list[dict] = []

    def __call__(self, payload: dict) -> dict:
        self.payloads.append(payload)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return answer(payload) if callable(answer) else answer


def answer(access: str = "fresh", *, expires_at: int = NOW + 3600, version: int = 2, **changes) -> dict:
    return {"connection_id": "acme-1", "access_token": access, "token_type": "Bearer", "expires_at": expires_at,
            "api_url": API, "tenant_id": "t-1", "version": version, **changes}


def make(store: Store | None = None, invoke: Invoke | None = None, clock: Clock | None = None, **kwargs):
    store = store or Store()
    cipher = Cipher()
    invoke = invoke or Invoke(answer())
    clock = clock or Clock()
    kwargs.setdefault("counts", ReadCounts())
    reader = TokenReader(store=store, cipher=cipher, invoke=invoke, clock=clock, **kwargs)
    return reader, store, cipher, invoke, clock


# ------------------------------------------------------------------ reading and caching
def test_a_stored_token_is_read_consistently_decrypted_once_and_served_from_memory():
    reader, store, cipher, invoke, clock = make()
    token = reader.get_token("acme-1")
    assert token == AccessToken("acme-1", "access-v1", NOW + 3600, API, "t-1", 1)
    assert store.reads == [("acme-1", True)]
    assert [c for c, _ in cipher.calls] == ["acme-1"]
    assert cipher.calls[0][1].access == b"v1"
    assert reader.get_token("acme-1") is token
    assert reader.get_access_token("acme-1") == "access-v1"
    assert len(store.reads) == 1 and len(cipher.calls) == 1 and invoke.payloads == []
    assert reader.calls == {"reads": 1, "decrypts": 1, "refresh_requests": 0}
    assert reader.counts.take() == (3, 1)


def test_the_api_url_comes_from_the_issuer_when_the_row_has_none():
    store = Store(api_url=None, issuer="https://nowhere.example")
    reader, *_ = make(store)
    assert reader.get_token("acme-1").api_url is None


def test_the_row_is_read_again_after_recheck_seconds_without_decrypting_the_same_version():
    reader, store, cipher, _, clock = make()
    reader.get_token("acme-1")
    clock.now = NOW + 59.9
    reader.get_token("acme-1")
    assert len(store.reads) == 1
    clock.now = NOW + 60
    assert reader.get_token("acme-1").access_token == "access-v1"
    assert len(store.reads) == 2 and len(cipher.calls) == 1
    store.change(version=2)
    clock.now = NOW + 120
    assert reader.get_token("acme-1").access_token == "access-v2"
    assert len(cipher.calls) == 2 and cipher.calls[1][1].access == b"v2"
    assert reader.counts.take() == (4, 3)


def test_recheck_seconds_is_a_setting():
    reader, store, _, _, clock = make(recheck_seconds=10)
    reader.get_token("acme-1")
    clock.now = NOW + 9
    reader.get_token("acme-1")
    clock.now = NOW + 10
    reader.get_token("acme-1")
    assert len(store.reads) == 2


def test_the_cache_ends_the_default_margin_before_expiry():
    reader, store, _, invoke, clock = make(recheck_seconds=10**9)
    reader.get_token("acme-1")
    clock.now = NOW + 3299
    reader.get_token("acme-1")
    assert len(store.reads) == 1
    clock.now = NOW + 3300  # 300 s left: read again, and still good enough
    assert reader.get_token("acme-1").access_token == "access-v1"
    assert len(store.reads) == 2 and invoke.payloads == []


def test_the_cache_ends_before_the_scheduler_may_rotate_the_token():
    # refresh_at - window (900) - rotation margin (600)
    reader, store, _, _, clock = make(Store(refresh_at=NOW + 2000), recheck_seconds=10**9)
    reader.get_token("acme-1")
    clock.now = NOW + 499
    reader.get_token("acme-1")
    assert len(store.reads) == 1
    clock.now = NOW + 500
    reader.get_token("acme-1")
    assert len(store.reads) == 2


def test_the_refresh_window_is_a_setting():
    reader, store, _, _, clock = make(Store(refresh_at=NOW + 2000), recheck_seconds=10**9, window_seconds=100)
    reader.get_token("acme-1")
    clock.now = NOW + 1299
    reader.get_token("acme-1")
    assert len(store.reads) == 1
    clock.now = NOW + 1300
    reader.get_token("acme-1")
    assert len(store.reads) == 2


def test_a_later_refresh_time_leaves_the_expiry_margin_in_force():
    reader, store, _, _, clock = make(Store(refresh_at=NOW + 10_000), recheck_seconds=10**9)
    reader.get_token("acme-1")
    clock.now = NOW + 3299
    reader.get_token("acme-1")
    assert len(store.reads) == 1
    clock.now = NOW + 3300
    reader.get_token("acme-1")
    assert len(store.reads) == 2


def test_margins_scale_with_a_short_lifetime():
    # 90 s token: 8 s default margin, 15 s rotation margin, at most 45 s asked.
    store = Store(expires_at=NOW + 90, token_lifetime=90, refresh_at=NOW + 90)
    reader, _, _, invoke, clock = make(store, recheck_seconds=10**9, window_seconds=20)
    reader.get_token("acme-1")
    clock.now = NOW + 54  # until = min(90 - 8, 90 - 20 - 15) = 55
    reader.get_token("acme-1")
    assert len(store.reads) == 1
    clock.now = NOW + 55
    reader.get_token("acme-1")
    assert len(store.reads) == 2 and invoke.payloads == []
    # A request beyond what a 90 s token can give is capped at 45 s.
    clock.now = NOW + 45
    reader.forget()
    assert reader.get_token("acme-1", min_validity_seconds=1800).access_token == "access-v1"
    assert invoke.payloads == []


def test_a_short_lived_row_with_too_little_left_is_replaced():
    store = Store(expires_at=NOW + 90, token_lifetime=90)
    reader, _, _, invoke, clock = make(store)
    clock.now = NOW + 82  # 8 s left: exactly the margin
    assert reader.get_token("acme-1").access_token == "access-v1"
    reader.forget()
    clock.now = NOW + 83
    assert reader.get_token("acme-1").access_token == "fresh"
    assert invoke.payloads == [{"connection_id": "acme-1"}]


def test_a_cached_token_is_served_only_with_the_time_left_asked_for():
    reader, store, _, invoke, clock = make(recheck_seconds=10**9)
    reader.get_token("acme-1")
    clock.now = NOW + 1800
    assert reader.get_token("acme-1", min_validity_seconds=1800).access_token == "access-v1"
    assert len(store.reads) == 1
    clock.now = NOW + 1801
    assert reader.get_token("acme-1", min_validity_seconds=1800).access_token == "fresh"
    assert len(store.reads) == 2
    assert invoke.payloads == [{"connection_id": "acme-1", "min_validity_seconds": 1800}]


def test_min_validity_zero_still_needs_a_second_left_on_the_stored_token():
    reader, store, _, invoke, clock = make(Store(expires_at=NOW + 1))
    assert reader.get_token("acme-1", min_validity_seconds=0).access_token == "access-v1"
    reader.forget()
    store.change(expires_at=NOW)
    assert reader.get_token("acme-1", min_validity_seconds=0).access_token == "fresh"
    assert invoke.payloads == [{"connection_id": "acme-1", "min_validity_seconds": 0}]


def test_min_validity_seconds_is_checked():
    reader, store, *_ = make()
    for bad in (True, False, -1, 1801, 1.5, "60"):
        with pytest.raises(ValueError) as caught:
            reader.get_token("acme-1", min_validity_seconds=bad)
        assert str(caught.value) == "min_validity_seconds must be an integer from 0 to 1800"
    assert store.reads == []
    assert reader.get_token("acme-1", min_validity_seconds=0).version == 1
    assert reader.get_token("acme-1", min_validity_seconds=1800).version == 1
    with pytest.raises(InvalidConnectionId):
        reader.get_token("bad id")
    with pytest.raises(InvalidConnectionId):
        reader.token_rejected("bad id", "x")
    with pytest.raises(InvalidConnectionId):
        reader.replace_rejected("bad id", 1)


def test_an_expiring_row_is_replaced_through_the_tokens_function_and_the_answer_cached():
    store = Store(expires_at=NOW + 299, version=4)
    reader, _, cipher, invoke, clock = make(store, Invoke(answer(expires_at=NOW + 3600, version=5)))
    token = reader.get_token("acme-1")
    assert token == AccessToken("acme-1", "fresh", NOW + 3600, API, "t-1", 5)
    assert invoke.payloads == [{"connection_id": "acme-1"}]
    assert cipher.calls == []
    assert reader.calls == {"reads": 1, "decrypts": 0, "refresh_requests": 1}
    assert reader.get_token("acme-1") is token  # cached: no read, no request
    assert len(store.reads) == 1 and len(invoke.payloads) == 1
    clock.now = NOW + 59
    assert reader.get_token("acme-1") is token
    clock.now = NOW + 60
    store.change(expires_at=NOW + 3600, version=5)
    assert reader.get_token("acme-1").access_token == "fresh"  # same version: not decrypted
    assert cipher.calls == []


def test_a_fresh_token_is_cached_until_its_own_margin():
    # The tokens function's token counts as living what it has left: 1800 s -> 150 s margin.
    reader, store, _, invoke, clock = make(Store(expires_at=NOW), Invoke(answer(expires_at=NOW + 1800)),
                                           recheck_seconds=10**9)
    reader.get_token("acme-1")
    clock.now = NOW + 1649
    reader.get_token("acme-1")
    assert len(store.reads) == 1
    clock.now = NOW + 1650
    reader.get_token("acme-1")
    assert len(store.reads) == 2


def test_a_fresh_token_must_have_time_left():
    reader, *_ = make(Store(expires_at=NOW), Invoke(answer(expires_at=NOW + 1)))
    assert reader.get_token("acme-1").access_token == "fresh"  # 1 s lifetime: 1 s margin
    reader, *_ = make(Store(expires_at=NOW), Invoke(answer(expires_at=NOW)))
    with pytest.raises(TokenUnavailable) as caught:
        reader.get_token("acme-1")
    assert str(caught.value) == "the access token has expired and was not refreshed"
    assert caught.value.connection_id == "acme-1" and caught.value.retry_at is None


def test_a_fresh_token_is_checked_against_what_was_asked_not_the_default():
    # Half a second left on a 1 s token: enough for 0 s asked, not for the default (1 s).
    clock = Clock(NOW + 0.5)
    reader, *_ = make(Store(expires_at=NOW), Invoke(answer(expires_at=NOW + 1)), clock=clock)
    assert reader.get_token("acme-1", min_validity_seconds=0).access_token == "fresh"
    reader.forget()
    with pytest.raises(TokenUnavailable):
        reader.get_token("acme-1")


def test_the_reader_counts_its_reads_decrypts_and_requests():
    reader, store, _, _, clock = make(Store(expires_at=NOW + 100))
    for version in (1, 2, 3):
        store.change(version=version)
        reader.forget()
        reader.get_token("acme-1")
    assert reader.calls == {"reads": 3, "decrypts": 0, "refresh_requests": 3}
    store.change(expires_at=NOW + 3600)
    for version in (4, 5):
        store.change(version=version)
        reader.forget()
        reader.get_token("acme-1")
    assert reader.calls == {"reads": 5, "decrypts": 2, "refresh_requests": 3}


def test_a_fresh_token_with_less_than_asked_is_refused():
    # 100 s left: lifetime 100, at most ceil(1800 * 100 / 3600) = 50 can be asked.
    reader, *_ = make(Store(expires_at=NOW), Invoke(answer(expires_at=NOW + 100)))
    assert reader.get_token("acme-1", min_validity_seconds=50).access_token == "fresh"
    clock = Clock(NOW + 0.5)  # int(clock) counts the lifetime
    reader, *_ = make(Store(expires_at=NOW), Invoke(answer(expires_at=NOW + 100)), clock=clock)
    assert reader.get_token("acme-1", min_validity_seconds=50).access_token == "fresh"


def test_a_pre_split_row_is_never_opened_by_a_reader():
    store = Store(version=3)
    store.sealed = SealedTokens(pair=b"both")
    reader, _, cipher, invoke, _ = make(store)
    assert reader.get_token("acme-1").access_token == "fresh"
    assert invoke.payloads == [{"connection_id": "acme-1"}]
    assert cipher.calls == []
    with pytest.raises(TokenUnavailable) as caught:
        reader.read_stored("acme-1")
    assert str(caught.value) == "the stored tokens are in the pre-split format"
    assert caught.value.retry_at is None and caught.value.connection_id == "acme-1"


def test_a_flagged_row_is_unavailable_until_it_may_be_settled_then_asked_of_the_tokens_function():
    store = Store(outcome_unknown_at=NOW - 10, next_attempt_at=NOW + 80, version=7)
    reader, _, cipher, invoke, clock = make(store)
    with pytest.raises(TokenUnavailable) as caught:
        reader.get_token("acme-1")
    assert caught.value.retry_at == NOW + 80 and caught.value.connection_id == "acme-1"
    assert str(caught.value) == ("connection 'acme-1' is being checked after a lost answer from Invoiced; "
                                 "its stored token may be dead")
    assert invoke.payloads == [] and cipher.calls == []
    clock.now = NOW + 79
    with pytest.raises(TokenUnavailable):
        reader.get_token("acme-1")
    clock.now = NOW + 80
    assert reader.get_token("acme-1").access_token == "fresh"
    assert invoke.payloads == [{"connection_id": "acme-1"}]
    assert cipher.calls == []


def test_read_stored_returns_the_stored_token_whatever_its_validity():
    reader, store, cipher, invoke, clock = make(Store(expires_at=NOW - 5))
    assert reader.read_stored("acme-1") == AccessToken("acme-1", "access-v1", NOW - 5, API, "t-1", 1)
    assert invoke.payloads == [] and len(cipher.calls) == 1
    store.change(outcome_unknown_at=NOW - 100, next_attempt_at=NOW + 30)
    with pytest.raises(TokenUnavailable) as caught:
        reader.read_stored("acme-1")
    assert caught.value.retry_at == NOW + 30
    for next_attempt_at in (NOW - 5, NOW):
        store.change(next_attempt_at=next_attempt_at)
        with pytest.raises(TokenUnavailable) as caught:
            reader.read_stored("acme-1")
        assert str(caught.value) == "the stored token may be dead (a lost answer is being settled)"
        assert caught.value.retry_at == NOW + 1 and caught.value.connection_id == "acme-1"
    clock.now = NOW + 0.7
    store.change(next_attempt_at=0)
    with pytest.raises(TokenUnavailable) as caught:
        reader.read_stored("acme-1")
    assert caught.value.retry_at == NOW + 1


@pytest.mark.parametrize(("status", "sealed", "error", "message"), [
    (ConnectionStatus.NEEDS_REAUTH, True, NeedsReauthorization, "connection 'acme-1' needs to be reconnected"),
    (ConnectionStatus.REVOKED, True, ConnectionRevoked, "connection 'acme-1' was disconnected"),
    (ConnectionStatus.ACTIVE, False, ConnectionRevoked, "connection 'acme-1' was disconnected"),
])
def test_a_rows_status_is_its_error(status, sealed, error, message):
    store = Store(status=status)
    if not sealed:
        store.get_connection = lambda connection_id, consistent=False: (store.row, None)
    reader, _, cipher, invoke, _ = make(store)
    for call in (lambda: reader.get_token("acme-1"), lambda: reader.read_stored("acme-1"),
                 lambda: reader.token_rejected("acme-1", "x"), lambda: reader.replace_rejected("acme-1", 1)):
        with pytest.raises(error) as caught:
            call()
        assert type(caught.value) is error
        assert str(caught.value) == message and caught.value.connection_id == "acme-1"
    assert invoke.payloads == [] and cipher.calls == []


def test_an_unknown_connection_is_not_found():
    reader, store, *_ = make()
    with pytest.raises(ConnectionNotFound) as caught:
        reader.get_token("acme-2")
    assert str(caught.value) == "no connection 'acme-2'" and caught.value.connection_id == "acme-2"
    assert store.reads == [("acme-2", True)]


def test_forget_drops_one_connection_or_all():
    store = Store()
    reader, _, cipher, _, _ = make(store)
    reader.get_token("acme-1")
    reader.forget("other")
    reader.get_token("acme-1")
    assert len(store.reads) == 1
    reader.forget("acme-1")
    reader.get_token("acme-1")
    assert len(store.reads) == 2
    reader.forget()
    reader.get_token("acme-1")
    assert len(store.reads) == 3
    assert len(cipher.calls) == 3  # forgotten: decrypted again


# ------------------------------------------------------------------ after a 401
def test_a_rejected_token_already_replaced_is_answered_with_the_stored_one():
    reader, store, cipher, invoke, _ = make()
    reader.get_token("acme-1")
    store.change(version=2)
    token = reader.token_rejected("acme-1", "access-v1")
    assert token.access_token == "access-v2" and token.version == 2
    assert invoke.payloads == [] and len(store.reads) == 2
    assert reader.get_token("acme-1") is token  # cached
    assert reader.counts.take() == (3, 2)


def test_a_rejected_token_is_replaced_once_for_its_version():
    reader, store, cipher, invoke, _ = make(invoke=Invoke(answer("fresh", version=2)))
    reader.get_token("acme-1")
    token = reader.token_rejected("acme-1", "access-v1")
    assert token.access_token == "fresh" and token.version == 2
    assert invoke.payloads == [{"connection_id": "acme-1", "rejected_version": 1}]
    assert len(cipher.calls) == 2  # the rejected token's cache entry was dropped: decrypted again to compare
    assert reader.get_token("acme-1") is token
    assert reader.calls["refresh_requests"] == 1


def test_a_token_not_in_memory_is_compared_with_the_stored_one():
    reader, store, cipher, invoke, _ = make()
    token = reader.token_rejected("acme-1", "something-else")
    assert token.access_token == "access-v1" and invoke.payloads == []
    assert reader.counts.take() == (1, 1)


def test_a_cached_token_other_than_the_rejected_one_stays_cached():
    reader, store, cipher, invoke, _ = make()
    reader.get_token("acme-1")
    reader.token_rejected("acme-1", "something-else")
    assert len(cipher.calls) == 1  # the cached entry was kept and its token reused


def test_the_rejected_token_is_never_served_from_memory_again():
    reader, store, cipher, invoke, _ = make(invoke=Invoke({"error": "unavailable", "message": "try later"}))
    reader.get_token("acme-1")
    with pytest.raises(TokenUnavailable) as caught:
        reader.token_rejected("acme-1", "access-v1")
    assert str(caught.value) == "try later"
    reads = len(store.reads)
    reader.get_token("acme-1")
    assert len(store.reads) == reads + 1  # not from memory


def test_a_replacement_equal_to_the_rejected_token_is_unavailable():
    reader, *_ = make(invoke=Invoke(answer("access-v1", version=1)))
    with pytest.raises(TokenUnavailable) as caught:
        reader.token_rejected("acme-1", "access-v1")
    assert str(caught.value) == "Invoiced rejected the token and it could not be replaced"
    assert caught.value.connection_id == "acme-1"


def test_a_refused_replacement_is_not_asked_again_for_that_version_until_retry_at():
    refused = {"error": "token_rejected", "message": "rejected again", "retry_at": NOW + 300}
    reader, store, _, invoke, clock = make(invoke=Invoke(refused, answer("fresh", version=2)))
    with pytest.raises(TokenRejected) as caught:
        reader.token_rejected("acme-1", "access-v1")
    assert str(caught.value) == "rejected again" and caught.value.retry_at == NOW + 300
    clock.now = NOW + 299
    with pytest.raises(TokenRejected) as caught:
        reader.token_rejected("acme-1", "access-v1")
    assert str(caught.value) == ("Invoiced rejected the token again; it was already replaced once for that reason")
    assert caught.value.retry_at == NOW + 300 and caught.value.connection_id == "acme-1"
    assert len(invoke.payloads) == 1
    clock.now = NOW + 300
    assert reader.token_rejected("acme-1", "access-v1").access_token == "fresh"
    assert len(invoke.payloads) == 2


def test_a_refusal_without_retry_at_holds_for_a_minute_and_only_for_its_version():
    refused = {"error": "token_rejected"}
    reader, store, _, invoke, clock = make(invoke=Invoke(refused, refused, answer("fresh", version=3)))
    clock.now = NOW + 0.5
    with pytest.raises(TokenRejected) as caught:
        reader.token_rejected("acme-1", "access-v1")
    assert str(caught.value) == "token_rejected" and caught.value.retry_at is None
    clock.now = NOW + 59.9
    with pytest.raises(TokenRejected) as caught:
        reader.token_rejected("acme-1", "access-v1")
    assert caught.value.retry_at == NOW + 60
    assert len(invoke.payloads) == 1
    clock.now = NOW + 60
    with pytest.raises(TokenRejected):
        reader.token_rejected("acme-1", "access-v1")
    assert len(invoke.payloads) == 2
    # Another version (stored meanwhile, and rejected too) is asked for at once.
    store.change(version=2)
    clock.now = NOW + 61
    assert reader.token_rejected("acme-1", "access-v2").access_token == "fresh"
    assert invoke.payloads[-1] == {"connection_id": "acme-1", "rejected_version": 2}


def test_a_flagged_row_after_a_401_asks_for_a_replacement_once_due():
    store = Store(outcome_unknown_at=NOW - 100, next_attempt_at=NOW)
    reader, _, cipher, invoke, _ = make(store)
    assert reader.token_rejected("acme-1", "access-v1").access_token == "fresh"
    assert invoke.payloads == [{"connection_id": "acme-1", "rejected_version": 1}]
    assert cipher.calls == []


def test_replace_rejected_returns_a_newer_stored_token_or_asks_for_one():
    reader, store, cipher, invoke, _ = make(Store(version=3))
    assert reader.replace_rejected("acme-1", 2).access_token == "access-v3"
    assert invoke.payloads == []
    assert reader.replace_rejected("acme-1", 3).access_token == "fresh"
    assert invoke.payloads == [{"connection_id": "acme-1", "rejected_version": 3}]
    store.sealed = SealedTokens(pair=b"both")
    assert reader.replace_rejected("acme-1", 2).access_token == "fresh"  # newer, but only a refresher may open it
    assert len(invoke.payloads) == 2


def test_in_process_fresh_gets_the_request_itself():
    requests = []

    def fresh(request):
        requests.append(request)
        return AccessToken("acme-1", "in-process", NOW + 3600, API, "t-1", 9)

    reader = TokenReader(store=Store(expires_at=NOW), cipher=Cipher(), fresh=fresh, clock=Clock())
    assert reader.get_token("acme-1", min_validity_seconds=60).access_token == "in-process"
    assert requests == [FreshTokenRequest("acme-1", 60, stale_version=1)]
    assert reader.token_rejected("acme-1", "access-v1").access_token == "in-process"
    assert requests[-1] == FreshTokenRequest("acme-1", None, stale_version=1, rejected=True)


def test_a_reader_takes_either_invoke_or_fresh():
    for kwargs in ({}, {"invoke": Invoke(answer()), "fresh": lambda request: None}):
        with pytest.raises(ValueError) as caught:
            TokenReader(store=Store(), cipher=Cipher(), **kwargs)
        assert str(caught.value) == "give a reader either invoke (the tokens function) or fresh"


def test_the_defaults_are_the_documented_ones():
    assert sdk.RECHECK_SECONDS == 60
    store = Store(refresh_at=NOW + 3000)
    reader = TokenReader(store=store, cipher=Cipher(), invoke=Invoke(answer()))
    assert reader.clock is time.time
    assert reader.window_seconds == 900 and reader.recheck_seconds == 60 and reader.coalesce is True
    counts = ReadCounts()
    assert TokenReader(store=store, cipher=Cipher(), invoke=Invoke(answer()), counts=counts).counts is counts


# ------------------------------------------------------------------ payloads and answers
def test_fresh_token_requests_as_payloads():
    assert FreshTokenRequest("acme-1").as_payload() == {"connection_id": "acme-1"}
    assert FreshTokenRequest("acme-1", 0).as_payload() == {"connection_id": "acme-1", "min_validity_seconds": 0}
    assert FreshTokenRequest("acme-1", 60, stale_version=4).as_payload() == {
        "connection_id": "acme-1", "min_validity_seconds": 60}
    assert FreshTokenRequest("acme-1", 60, stale_version=4, rejected=True).as_payload() == {
        "connection_id": "acme-1", "rejected_version": 4}
    request = FreshTokenRequest("acme-1")
    assert (request.min_validity_seconds, request.stale_version, request.rejected) == (None, None, False)


def test_an_access_token_as_an_answer_and_its_repr():
    token = AccessToken("acme-1", "secret-token", NOW, API, "t-1", 3)
    assert token.as_answer() == {"connection_id": "acme-1", "access_token": "secret-token", "token_type": "Bearer",
                                 "expires_at": NOW, "api_url": API, "tenant_id": "t-1", "version": 3}
    assert "secret-token" not in repr(token)
    assert token_from_answer("acme-1", token.as_answer()) == token


def test_a_token_from_an_answer():
    token = token_from_answer("acme-9", {"access_token": 12, "expires_at": "500", "tenant_id": 7, "version": "2"})
    assert token == AccessToken("acme-9", "12", 500, None, "7", 2)
    for incomplete in ({"expires_at": 1, "tenant_id": "t", "version": 1},
                       {"access_token": "a", "expires_at": None, "tenant_id": "t", "version": 1},
                       {"access_token": "a", "expires_at": "soon", "tenant_id": "t", "version": 1},
                       {"access_token": "a", "expires_at": 1, "version": 1},
                       {"access_token": "a", "expires_at": 1, "tenant_id": "t"}):
        with pytest.raises(TokenUnavailable) as caught:
            token_from_answer("acme-9", incomplete)
        assert str(caught.value) == "the tokens function's answer is incomplete"
        assert caught.value.connection_id == "acme-9" and caught.value.__cause__ is None
        assert caught.value.__suppress_context__
    for nothing in (None, [], "x"):
        with pytest.raises(TokenUnavailable) as caught:
            token_from_answer("acme-9", nothing)
        assert str(caught.value) == "the tokens function gave no answer" and caught.value.connection_id == "acme-9"


def test_an_error_answer_is_raised_as_its_class():
    expected = {"not_found": ConnectionNotFound, "needs_reauth": NeedsReauthorization, "revoked": ConnectionRevoked,
                "unavailable": TokenUnavailable, "token_rejected": TokenRejected}
    assert expected == ERRORS_BY_CODE
    for code, cls in expected.items():
        assert cls.code == code and issubclass(cls, TokenError)
        with pytest.raises(TokenError) as caught:
            token_from_answer("acme-1", {"error": code, "message": f"about {code}", "retry_at": NOW})
        assert type(caught.value) is cls
        assert (str(caught.value), caught.value.retry_at, caught.value.connection_id) == (f"about {code}", NOW,
                                                                                          "acme-1")
    assert TokenError.code == "unavailable"
    with pytest.raises(TokenError) as caught:
        token_from_answer("acme-1", {"error": "teapot", "message": "", "retry_at": "later"})
    assert type(caught.value) is TokenUnavailable
    assert (str(caught.value), caught.value.retry_at) == ("teapot", None)
    with pytest.raises(TokenError) as caught:
        token_from_answer("acme-1", {"error": 404, "access_token": "a", "expires_at": 1, "tenant_id": "t",
                                     "version": 1})
    assert type(caught.value) is TokenUnavailable and str(caught.value) == "404" and caught.value.retry_at is None


def test_a_token_error_carries_no_more_than_it_was_given():
    error = TokenError("acme-1", "why")
    assert (error.args, error.connection_id, error.retry_at) == (("why",), "acme-1", None)


# ------------------------------------------------------------------ lambda_invoker
class Response:
    def __init__(self, body: bytes) -> None:
        self.stream = io.BytesIO(body)

    def read(self) -> bytes:
        return self.stream.read()


class LambdaClient:
    def __init__(self, *responses) -> None:
        self.responses = list(responses)
        self.calls: list[dict] = []

    def invoke(self, **kwargs):
        self.calls.append(kwargs)
        return self.responses.pop(0)


def test_lambda_invoker_sends_the_payload_as_json_and_returns_the_answer():
    client = LambdaClient({"Payload": Response(b'{"access_token": "a"}'), "StatusCode": 200})
    made = []
    invoke = lambda_invoker("tokens-fn", lambda: made.append(1) or client)
    assert made == []  # no client until the first call
    assert invoke({"connection_id": "acme-1", "min_validity_seconds": 60}) == {"access_token": "a"}
    assert client.calls == [{"FunctionName": "tokens-fn",
                             "Payload": b'{"connection_id": "acme-1", "min_validity_seconds": 60}'}]
    assert made == [1]


@pytest.mark.parametrize(("response", "connection_id"), [
    ({"Payload": b'{"errorMessage": "boom"}', "FunctionError": "Unhandled"}, "acme-1"),
    ({"Payload": b""}, "acme-1"),
    ({"Payload": b"[1]"}, "acme-1"),
    ({"Payload": b'"x"'}, None),
])
def test_lambda_invoker_maps_a_failed_function_to_unavailable(response, connection_id):
    response = {**response, "Payload": Response(response["Payload"])}
    invoke = lambda_invoker("tokens-fn", lambda: LambdaClient(response))
    payload = {} if connection_id is None else {"connection_id": connection_id}
    with pytest.raises(TokenUnavailable) as caught:
        invoke(payload)
    assert str(caught.value) == "the function tokens-fn failed"
    assert caught.value.connection_id == (connection_id or "")


def test_lambda_invoker_makes_a_lazy_lambda_client_by_default(monkeypatch):
    from invoiced_connect.cloud import aws

    client = LambdaClient({"Payload": Response(b"{}")})
    services = []
    monkeypatch.setattr(aws, "lazy_client", lambda service: services.append(service) or (lambda: client))
    invoke = lambda_invoker("fn")
    assert services == ["lambda"]
    assert invoke({"connection_id": "acme-1"}) == {}
    assert client.calls[0]["FunctionName"] == "fn"


def test_a_reader_over_lambda_invoker():
    body = json.dumps(answer("via-lambda")).encode()
    client = LambdaClient({"Payload": Response(body)})
    reader = TokenReader(store=Store(expires_at=NOW), cipher=Cipher(), invoke=lambda_invoker("fn", lambda: client),
                         clock=Clock())
    assert reader.get_access_token("acme-1") == "via-lambda"
    assert json.loads(client.calls[0]["Payload"]) == {"connection_id": "acme-1"}


# ------------------------------------------------------------------ counts
def test_read_counts():
    counts = ReadCounts()
    assert counts.take() == (0, 0)
    counts.read(miss=False)
    counts.read(miss=True)
    counts.read(miss=True)
    assert counts.take() == (3, 2)
    assert counts.take() == (0, 0)
    counts.read(miss=False)
    assert counts.take() == (1, 0)


def test_failed_reads_count_as_misses():
    reader, *_ = make(Store(status=ConnectionStatus.REVOKED))
    with pytest.raises(ConnectionRevoked):
        reader.get_token("acme-1")
    with pytest.raises(ConnectionRevoked):
        reader.token_rejected("acme-1", "x")
    assert reader.counts.take() == (2, 2)


# ------------------------------------------------------------------ coalescing
def concurrent_misses(coalesce: bool) -> tuple[list, list]:
    entered = threading.Event()
    release = threading.Event()

    def slow(payload):
        entered.set()
        release.wait(5)
        return answer(f"fresh-{len(invoke.payloads)}")

    invoke = Invoke(slow)
    reader, *_ = make(Store(expires_at=NOW), invoke, coalesce=coalesce)
    results: list = []
    first = threading.Thread(target=lambda: results.append(reader.get_token("acme-1").access_token))
    first.start()
    assert entered.wait(5)
    second = threading.Thread(target=lambda: results.append(reader.get_token("acme-1").access_token))
    second.start()
    second.join(0.3)
    release.set()
    first.join(5)
    second.join(5)
    return results, invoke.payloads, reader.counts.take()


def test_concurrent_misses_for_a_connection_cause_one_token_request():
    results, payloads, counts = concurrent_misses(coalesce=True)
    assert results == ["fresh-1", "fresh-1"] and len(payloads) == 1
    assert counts == (2, 1)  # the waiting reader was answered from memory


def test_without_coalescing_each_miss_asks_for_itself():
    results, payloads, counts = concurrent_misses(coalesce=False)
    assert len(payloads) == 2 and sorted(results) == ["fresh-2", "fresh-2"]
    assert counts == (2, 2)


class AnyStore(Store):
    """The same row under any connection id."""

    def get_connection(self, connection_id: str, consistent: bool = False):
        found = super().get_connection(self.row.connection_id, consistent)
        return dataclasses.replace(found[0], connection_id=connection_id), found[1]


def blocked_load(reader_kwargs=None):
    """A reader whose load of acme-1 waits in the tokens function until released."""
    entered = threading.Event()
    release = threading.Event()

    def tokens_function(payload):
        if payload["connection_id"] == "acme-1":
            entered.set()
            release.wait(5)
        return answer(f"fresh-{payload['connection_id']}")

    store = AnyStore()
    reader, *_ = make(store, Invoke(tokens_function), **(reader_kwargs or {}))
    loading = threading.Thread(target=lambda: reader.get_token("acme-1", min_validity_seconds=1800))
    return reader, store, entered, release, loading


def in_thread(call) -> list:
    done: list = []
    thread = threading.Thread(target=lambda: done.append(call()))
    thread.start()
    thread.join(2)
    return done


def test_a_reader_answered_from_memory_does_not_wait_for_a_load_in_progress():
    reader, store, entered, release, loading = blocked_load()
    store.change(expires_at=NOW + 1000)
    reader.get_token("acme-1")  # cached: good for the default 300 s, not for the 1800 s asked next
    loading.start()
    assert entered.wait(5)
    try:
        done = in_thread(lambda: reader.get_token("acme-1").access_token)
        assert done == ["access-v1"]
    finally:
        release.set()
        loading.join(5)


def test_a_401_for_a_connection_waits_for_its_load_in_progress():
    reader, store, entered, release, loading = blocked_load()
    store.change(expires_at=NOW + 1000)
    loading.start()
    assert entered.wait(5)
    done: list = []
    rejected = threading.Thread(target=lambda: done.append(reader.token_rejected("acme-1", "old").access_token))
    rejected.start()
    rejected.join(0.3)
    assert done == []  # held by the load
    release.set()
    loading.join(5)
    rejected.join(5)
    assert done == ["access-v1"]  # then answered from the row it read after the load


def test_a_load_for_one_connection_does_not_hold_up_another():
    reader, store, entered, release, loading = blocked_load()
    store.change(expires_at=NOW + 1000)
    loading.start()
    assert entered.wait(5)
    try:
        assert in_thread(lambda: reader.get_token("acme-2").access_token) == ["access-v1"]
        assert in_thread(lambda: reader.token_rejected("acme-3", "old").access_token) == ["access-v1"]
    finally:
        release.set()
        loading.join(5)


def test_misses_for_other_connections_do_not_wait_for_each_other():
    reader, *_ = make(coalesce=True)
    assert reader._lock_for("acme-1") is reader._lock_for("acme-1")
    assert reader._lock_for("acme-1") is not reader._lock_for("acme-2")


def test_errors_pass_through_without_coalescing():
    reader, *_ = make(Store(status=ConnectionStatus.NEEDS_REAUTH), coalesce=False)
    with pytest.raises(NeedsReauthorization):
        reader.get_token("acme-1")
    with pytest.raises(NeedsReauthorization):
        reader.token_rejected("acme-1", "x")
    assert sdk._NO_LOCK.__enter__() is None
