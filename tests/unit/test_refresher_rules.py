"""The Refresher's rules, against fakes of the store, the cipher, Invoiced and
the events: what is leased, committed, recorded and published, and when; and
RefreshPolicy's schedule, backoff and settings."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from invoiced_connect.cloud import events
from invoiced_connect.core.models import Connection, ConnectionStatus
from invoiced_connect.invoiced.client import (
    ClientAuthError,
    InvalidGrantError,
    InvalidTokenResponseError,
    RequestRejectedError,
    TransientError,
    UnknownOutcomeError,
)
from invoiced_connect.lifecycle.refresh import (
    Mode,
    Refresher,
    RefreshOutcome,
    RefreshPolicy,
    RefreshResult,
)
from invoiced_connect.storage.store import LeaseLost, Rescue

NOW = 1_800_000_000
CID = "acme-1"


def connection(**changes) -> Connection:
    values = dict(connection_id=CID, tenant_id="167", company_name="Acme", scopes=("read_write",),
                  issuer="https://invoiced.com", status=ConnectionStatus.ACTIVE, expires_at=NOW + 3600, version=3,
                  created_at=NOW - 86400, updated_at=NOW, active_until=NOW + 500, refresh_at=NOW + 100)
    values.update(changes)
    return Connection(**values)


def client_error(code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": code}}, "UpdateItem")


class FakeStore:
    """An in-memory row that records every call (name, positional, keywords)."""

    def __init__(self, row: Connection | None, sealed: object = "sealed-old", rescue: Rescue | None = None) -> None:
        self.row = row
        self.sealed = sealed
        self.rescue = rescue
        self.calls: list[tuple[str, tuple, dict]] = []
        self.lease_refusals: list[bool] = []  # popped per take_lease: True refuses
        self.commit_errors: list[BaseException] = []
        self.failure_lost = False
        self.reauth_lost = False
        self.noted = True
        self.rows_read: list[Connection | None] = []  # get_connection answers, before self.row

    def _record(self, name: str, *args, **kwargs) -> None:
        # Strict: every call names the connection, or the rescue, and an owner is a fresh one.
        assert args[0] == CID or isinstance(args[0], Rescue), (name, args)
        assert "owner" not in kwargs or (isinstance(kwargs["owner"], str) and len(kwargs["owner"]) == 32), kwargs
        self.calls.append((name, args, kwargs))

    def named(self, name: str) -> list[tuple[tuple, dict]]:
        return [(a, k) for n, a, k in self.calls if n == name]

    def take_lease(self, connection_id, **kwargs):
        self._record("take_lease", connection_id, **kwargs)
        if self.lease_refusals and self.lease_refusals.pop(0):
            raise LeaseLost(connection_id)
        self.row = replace(self.row, lease_owner=kwargs["owner"], lease_until=kwargs["until"])
        return self.row, self.sealed

    def get_connection(self, connection_id):
        self._record("get_connection", connection_id)
        assert len(self.calls) < 1000, "reading forever"
        row = self.rows_read.pop(0) if self.rows_read else self.row
        return None if row is None else (row, self.sealed)

    def commit_tokens(self, connection_id, **kwargs):
        self._record("commit_tokens", connection_id, **kwargs)
        if self.commit_errors:
            raise self.commit_errors.pop(0)
        self.row = replace(self.row, version=self.row.version + 1, expires_at=kwargs["expires_at"],
                           lease_owner=None, lease_until=0, outcome_unknown_at=0)
        self.sealed = kwargs["ciphertext"]
        return self.row

    def record_failure(self, connection_id, **kwargs):
        self._record("record_failure", connection_id, **kwargs)
        if self.failure_lost:
            raise LeaseLost(connection_id)
        self.row = replace(self.row, version=self.row.version + 1, failure_count=self.row.failure_count + 1,
                           next_attempt_at=kwargs["next_attempt_at"], lease_owner=None, lease_until=0)
        return self.row

    def mark_needs_reauth(self, connection_id, **kwargs):
        self._record("mark_needs_reauth", connection_id, **kwargs)
        if self.reauth_lost:
            raise LeaseLost(connection_id)
        self.row = replace(self.row, version=self.row.version + 1, status=ConnectionStatus.NEEDS_REAUTH,
                           lease_owner=None, lease_until=0)
        return self.row

    def release_lease(self, connection_id, **kwargs):
        self._record("release_lease", connection_id, **kwargs)
        if self.row is not None and self.row.lease_owner == kwargs["owner"]:
            self.row = replace(self.row, lease_owner=None, lease_until=0)
        return True

    def note_rejection(self, connection_id, **kwargs):
        self._record("note_rejection", connection_id, **kwargs)
        return self.noted

    def get_rescue(self, connection_id):
        self._record("get_rescue", connection_id)
        return self.rescue

    def put_rescue(self, rescue):
        self._record("put_rescue", rescue)
        self.rescue = rescue

    def delete_rescue(self, rescue):
        self._record("delete_rescue", rescue)
        self.rescue = None


class FakeCipher:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def decrypt_refresh(self, connection_id, sealed):
        assert connection_id == CID
        self.calls.append(("decrypt_refresh", connection_id, sealed))
        return f"refresh<{sealed}>"

    def decrypt_access_any_format(self, connection_id, sealed):
        assert connection_id == CID
        self.calls.append(("decrypt_access", connection_id, sealed))
        return f"access<{sealed}>"

    def encrypt(self, connection_id, access_token, refresh_token):
        assert connection_id == CID
        self.calls.append(("encrypt", connection_id, access_token, refresh_token))
        return f"sealed<{access_token}|{refresh_token}>"


class FakeInvoiced:
    def __init__(self, *, refresh=None, accepted=True, revoke=None) -> None:
        self.answer = refresh if refresh is not None else SimpleNamespace(
            access_token="at-new", refresh_token="rt-new", expires_at=NOW + 3600, lifetime=3600)
        self.accepted = accepted
        self.revoke_error = revoke
        self.calls: list[tuple] = []

    def refresh(self, refresh_token):
        self.calls.append(("refresh", refresh_token))
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer

    def token_accepted(self, access_token, *, api_url):
        self.calls.append(("token_accepted", access_token, api_url))
        if isinstance(self.accepted, BaseException):
            raise self.accepted
        return self.accepted

    def revoke(self, access_token):
        self.calls.append(("revoke", access_token))
        if self.revoke_error is not None:
            raise self.revoke_error


class FakeEvents:
    def __init__(self) -> None:
        self.published: list[tuple] = []

    def publish(self, name, row, **details):
        self.published.append((name, row.connection_id, row.version, details))


def refresher(store, invoiced=None, *, policy=None, rng=0.0, clock=NOW + 0.75, ticking=False):
    client = invoiced or FakeInvoiced()
    sleeps: list[float] = []
    now = [clock]

    def sleep(seconds):
        assert len(sleeps) < 1000, "waiting forever"
        sleeps.append(seconds)
        if ticking:
            now[0] += seconds

    r = Refresher(store=store, cipher=FakeCipher(), invoiced=lambda: client, events=FakeEvents(),
                  policy=policy or RefreshPolicy(), clock=lambda: now[0], sleep=sleep, rng=lambda: rng)
    r.client, r.sleeps = client, sleeps
    return r


def owner_of(store: FakeStore) -> str:
    return store.named("take_lease")[0][1]["owner"]


# ------------------------------------------------------------------ RefreshPolicy
def test_policy_defaults():
    p = RefreshPolicy()
    assert (p.window_seconds, p.keepalive_seconds, p.active_use_seconds, p.lease_seconds,
            p.rejected_token_window_seconds, p.settle_seconds) == (900, 30 * 86400, 86400, 60, 300, 90)


def test_next_refresh_at_at_the_active_use_boundary():
    p = RefreshPolicy(window_seconds=900, keepalive_seconds=1000)
    expires = NOW + 3600
    # one-hour tokens (the default lifetime): lead 900
    assert p.next_refresh_at(expires_at=expires, now=NOW, active_until=expires - 900) == expires
    assert p.next_refresh_at(expires_at=expires, now=NOW, active_until=expires - 901) == NOW + 1000
    # 90-second tokens: lead ceil(900 * 90 / 3600) = 23
    assert p.next_refresh_at(expires_at=expires, now=NOW, active_until=expires - 23, lifetime=90) == expires + 877
    assert p.next_refresh_at(expires_at=expires, now=NOW, active_until=expires - 24, lifetime=90) == NOW + 1000


def test_lead_seconds_scale_with_the_lifetime():
    p = RefreshPolicy(window_seconds=600)
    assert p.lead_seconds(3600) == 600
    assert p.lead_seconds(7200) == 600
    assert p.lead_seconds(1800) == 300
    assert p.lead_seconds(90) == 15


def test_backoff_bounds_and_jitter():
    p = RefreshPolicy()
    assert [p.backoff(n, lambda: 0.0) for n in (0, 1, 2, 3, 6, 7, 50)] == [15, 15, 30, 60, 480, 900, 900]
    assert [p.backoff(n, lambda: 1.0) for n in (0, 1, 2, 6, 7)] == [30, 30, 60, 960, 1800]
    assert p.backoff(1, lambda: 0.3) == 19  # 15 + 4.5, rounded down
    assert all(15 <= p.backoff(1) <= 30 for _ in range(50))


def test_from_settings_maps_each_setting_and_derives_lease_and_settle():
    def settings(http_timeout, settle=None):
        return SimpleNamespace(http_timeout=http_timeout, unknown_outcome_settle_seconds=settle,
                               refresh_window_seconds=601, keepalive_seconds=86401, active_use_seconds=3601,
                               rejected_token_window_seconds=301)

    p = RefreshPolicy.from_settings(settings(10))
    assert p == RefreshPolicy(601, 86401, 3601, 60, 301, 90)
    assert RefreshPolicy.from_settings(settings(5)).lease_seconds == 60
    assert RefreshPolicy.from_settings(settings(11)).lease_seconds == 64
    assert RefreshPolicy.from_settings(settings(10.9)).lease_seconds == 63
    assert RefreshPolicy.from_settings(settings(15)).settle_seconds == 90
    assert RefreshPolicy.from_settings(settings(15.7)).settle_seconds == 91
    assert RefreshPolicy.from_settings(settings(20)).settle_seconds == 100
    assert RefreshPolicy.from_settings(settings(20, settle=45)).settle_seconds == 45


def test_result_as_dict_and_metric_name():
    result = RefreshResult(CID, RefreshOutcome.UNKNOWN_OUTCOME, "active", 4, NOW)
    assert result.as_dict() == {"connection_id": CID, "outcome": "unknown_outcome", "status": "active",
                                "version": 4, "retry_at": NOW}
    assert RefreshResult(CID, RefreshOutcome.BUSY).as_dict() == {
        "connection_id": CID, "outcome": "busy", "status": None, "version": None, "retry_at": None}
    assert RefreshOutcome.UNKNOWN_OUTCOME.metric_name == "RefreshUnknownOutcome"


# ------------------------------------------------------------------ the lease's conditions
def test_a_scheduled_refresh_leases_in_one_write_if_due_and_commits():
    store = FakeStore(connection())
    r = refresher(store)
    result = r.refresh(CID)
    assert store.named("take_lease")[0] == ((CID,), {
        "owner": owner_of(store), "now": NOW, "until": NOW + 60, "rejected_since": None, "due_by": NOW + 900})
    assert len(owner_of(store)) == 32
    assert r.cipher.calls[0] == ("decrypt_refresh", CID, "sealed-old")
    assert r.client.calls == [("refresh", "refresh<sealed-old>")]
    assert r.cipher.calls[1] == ("encrypt", CID, "at-new", "rt-new")
    assert store.named("commit_tokens") == [((CID,), {
        "owner": owner_of(store), "version": 3, "ciphertext": "sealed<at-new|rt-new>", "expires_at": NOW + 3600,
        "now": NOW, "refresh_at": NOW + 1000 + 30 * 86400 - 1000, "active_until": NOW + 500, "lifetime": 3600})]
    assert result == RefreshResult(CID, RefreshOutcome.REFRESHED, "active", 4, None)
    assert r.events.published == []
    assert [n for n, _, _ in store.calls] == ["take_lease", "commit_tokens"]


def test_an_on_demand_refresh_reads_first_and_keeps_the_token_fresh_for_active_use():
    store = FakeStore(connection(expires_at=NOW + 299, token_lifetime=3600))
    r = refresher(store)
    result = r.refresh(CID, mode=Mode.ON_DEMAND)
    assert [n for n, _, _ in store.calls] == ["get_connection", "take_lease", "commit_tokens"]
    assert store.named("take_lease")[0][1] == {
        "owner": owner_of(store), "version": 3, "now": NOW, "until": NOW + 60,
        "statuses": (ConnectionStatus.ACTIVE,), "rejected_since": None}
    commit = store.named("commit_tokens")[0][1]
    assert commit["active_until"] == NOW + 86400
    assert commit["refresh_at"] == NOW + 3600  # in active use: window before expiry, plus the window
    assert result.outcome is RefreshOutcome.REFRESHED


def test_on_demand_is_not_needed_with_the_least_validity_left():
    store = FakeStore(connection(expires_at=NOW + 300))
    assert refresher(store).refresh(CID, mode=Mode.ON_DEMAND) == RefreshResult(
        CID, RefreshOutcome.ALREADY_FRESH, "active", 3, None)
    short = FakeStore(connection(expires_at=NOW + 8, token_lifetime=90))
    assert refresher(short).refresh(CID, mode=Mode.ON_DEMAND).outcome is RefreshOutcome.ALREADY_FRESH
    shorter = FakeStore(connection(expires_at=NOW + 7, token_lifetime=90))
    assert refresher(shorter).refresh(CID, mode=Mode.ON_DEMAND).outcome is RefreshOutcome.REFRESHED


def test_a_stale_version_is_the_lease_condition_and_a_newer_row_is_a_recovered_race():
    store = FakeStore(connection(version=5))
    store.lease_refusals = [True]
    result = refresher(store).refresh(CID, mode=Mode.ON_DEMAND, stale_version=4)
    assert store.named("take_lease")[0][1]["stale_version"] == 4
    assert "due_by" not in store.named("take_lease")[0][1]
    assert result == RefreshResult(CID, RefreshOutcome.RACE_RECOVERED, "active", 5, None)


def test_the_stale_version_itself_is_still_needed():
    store = FakeStore(connection(version=4))
    store.lease_refusals = [True, False]
    result = refresher(store).refresh(CID, stale_version=4)
    assert len(store.named("take_lease")) == 2
    assert result.outcome is RefreshOutcome.REFRESHED


def test_a_forced_refresh_has_no_condition():
    store = FakeStore(connection(refresh_at=None))
    result = refresher(store).refresh(CID, mode=Mode.FORCED)
    kwargs = store.named("take_lease")[0][1]
    assert set(kwargs) == {"owner", "now", "until", "rejected_since"}
    assert result.outcome is RefreshOutcome.REFRESHED


def test_scheduled_need_at_the_window_boundary():
    due = FakeStore(connection(refresh_at=NOW + 900))
    due.lease_refusals = [True, False]
    assert refresher(due).refresh(CID).outcome is RefreshOutcome.REFRESHED
    later = FakeStore(connection(refresh_at=NOW + 901))
    later.lease_refusals = [True]
    assert refresher(later).refresh(CID) == RefreshResult(CID, RefreshOutcome.ALREADY_FRESH, "active", 3, None)
    unscheduled = FakeStore(connection(refresh_at=None))
    unscheduled.lease_refusals = [True]
    assert refresher(unscheduled).refresh(CID).outcome is RefreshOutcome.ALREADY_FRESH


def test_a_lost_answer_is_needed_whatever_the_schedule():
    store = FakeStore(connection(refresh_at=None, outcome_unknown_at=NOW - 100, expires_at=NOW + 5))
    store.lease_refusals = [True, False]
    assert refresher(store).refresh(CID).outcome is RefreshOutcome.REFRESHED


def test_not_found_not_active_and_cooling_down():
    gone = FakeStore(None)
    gone.lease_refusals = [True]
    assert refresher(gone).refresh(CID) == RefreshResult(CID, RefreshOutcome.NOT_FOUND)
    revoked = FakeStore(connection(status=ConnectionStatus.NEEDS_REAUTH))
    revoked.lease_refusals = [True]
    assert refresher(revoked).refresh(CID) == RefreshResult(CID, RefreshOutcome.NOT_ACTIVE, "needs_reauth", 3)
    cooling = FakeStore(connection(next_attempt_at=NOW + 1))
    cooling.lease_refusals = [True]
    assert refresher(cooling).refresh(CID) == RefreshResult(CID, RefreshOutcome.COOLING_DOWN, "active", 3, NOW + 1)
    cooled = FakeStore(connection(next_attempt_at=NOW))
    cooled.lease_refusals = [True, False]
    assert refresher(cooled).refresh(CID).outcome is RefreshOutcome.REFRESHED


def test_busy_when_another_refresher_holds_the_lease_and_no_wait_was_asked():
    store = FakeStore(connection(lease_owner="other", lease_until=NOW + 30))
    store.lease_refusals = [True]
    assert refresher(store).refresh(CID) == RefreshResult(CID, RefreshOutcome.BUSY, "active", 3, NOW + 30)
    assert len(store.named("take_lease")) == 1


def test_a_lease_lost_after_the_read_reads_again():
    store = FakeStore(connection())
    store.lease_refusals = [True, True, False]
    assert refresher(store).refresh(CID).outcome is RefreshOutcome.REFRESHED
    assert [n for n, _, _ in store.calls] == [
        "take_lease", "get_connection", "take_lease", "get_connection", "take_lease", "commit_tokens"]


# ------------------------------------------------------------------ after a rejection
def test_after_a_rejection_the_lease_is_conditional_on_the_window():
    store = FakeStore(connection())
    refresher(store).refresh(CID, after_rejection=True)
    assert store.named("take_lease")[0][1]["rejected_since"] == NOW - 300


def test_a_second_rejection_within_the_window_does_not_rotate():
    store = FakeStore(connection(rejected_refresh_at=NOW - 299))
    store.lease_refusals = [True]
    r = refresher(store)
    result = r.refresh(CID, after_rejection=True)
    assert result == RefreshResult(CID, RefreshOutcome.TOKEN_REJECTED, "active", 3, NOW + 1)
    assert store.named("note_rejection") == [((CID,), {"now": NOW, "rotated_at": NOW - 299})]
    assert r.events.published == [(events.CONNECTION_TOKEN_REJECTED, CID, 3, {"reason": "token_rejected"})]
    assert len(store.named("take_lease")) == 1

    noted = FakeStore(connection(rejected_refresh_at=NOW - 299))
    noted.lease_refusals = [True]
    noted.noted = False
    again = refresher(noted)
    assert again.refresh(CID, after_rejection=True).outcome is RefreshOutcome.TOKEN_REJECTED
    assert again.events.published == []


def test_a_rejection_at_the_window_edge_rotates_again():
    store = FakeStore(connection(rejected_refresh_at=NOW - 300))
    store.lease_refusals = [True, False]
    assert refresher(store).refresh(CID, after_rejection=True).outcome is RefreshOutcome.REFRESHED
    assert store.named("take_lease")[1][1]["rejected_since"] == NOW - 300
    plain = FakeStore(connection(rejected_refresh_at=NOW - 10))
    plain.lease_refusals = [True, False]
    assert refresher(plain).refresh(CID).outcome is RefreshOutcome.REFRESHED
    assert plain.named("take_lease")[1][1]["rejected_since"] is None


# ------------------------------------------------------------------ failures under the lease
def test_a_dead_refresh_token_needs_reauthorization():
    store = FakeStore(connection())
    r = refresher(store, FakeInvoiced(refresh=InvalidGrantError("dead", reason="refresh_token_invalid")))
    result = r.refresh(CID)
    owner = owner_of(store)
    assert store.named("mark_needs_reauth") == [((CID,), {
        "owner": owner, "version": 3, "now": NOW, "reason": "refresh_token_invalid"})]
    assert r.events.published == [(events.CONNECTION_NEEDS_REAUTH, CID, 4, {"reason": "refresh_token_invalid"})]
    assert result == RefreshResult(CID, RefreshOutcome.NEEDS_REAUTH, "needs_reauth", 4, None)
    assert store.named("release_lease") == []


def test_a_dead_refresh_token_after_someone_else_rotated_is_a_recovered_race():
    for changed in (dict(version=4), dict(lease_owner="other")):
        store = FakeStore(connection())
        r = refresher(store, FakeInvoiced(refresh=InvalidGrantError("dead")))
        store.rows_read = [connection(**changed)]
        result = r.refresh(CID)
        assert result.outcome is RefreshOutcome.RACE_RECOVERED
        assert result.version == changed.get("version", 3)
        assert store.named("release_lease") == [((CID,), {"owner": owner_of(store)})]
        assert store.named("mark_needs_reauth") == []
        assert r.events.published == []
    gone = FakeStore(connection())
    gone.rows_read = [None]
    result = refresher(gone, FakeInvoiced(refresh=InvalidGrantError("dead"))).refresh(CID)
    assert result == RefreshResult(CID, RefreshOutcome.RACE_RECOVERED, "active", 3)


def test_a_dead_refresh_token_with_tokens_kept_aside_recovers_them():
    store = FakeStore(connection(), rescue=Rescue(CID, "sealed-kept", 3, NOW + 3000, NOW - 10, "LeaseLost", 1800))
    r = refresher(store, FakeInvoiced(refresh=InvalidGrantError("dead")))
    result = r.refresh(CID)
    assert store.named("release_lease")[0] == ((CID,), {"owner": owner_of(store)})
    assert result.outcome is RefreshOutcome.RESCUE_APPLIED
    assert store.named("mark_needs_reauth") == []
    other_base = FakeStore(connection(), rescue=Rescue(CID, "sealed-kept", 2, NOW + 3000, NOW - 10, "x"))
    assert refresher(other_base, FakeInvoiced(refresh=InvalidGrantError("d"))).refresh(
        CID).outcome is RefreshOutcome.NEEDS_REAUTH


def test_needs_reauth_lost_to_a_race():
    store = FakeStore(connection())
    store.reauth_lost = True
    r = refresher(store, FakeInvoiced(refresh=InvalidGrantError("dead")))
    assert r.refresh(CID) == RefreshResult(CID, RefreshOutcome.RACE_RECOVERED, "active", 3)
    assert r.events.published == []


def test_client_authentication_failure_releases_and_leaves_the_connection():
    store = FakeStore(connection())
    r = refresher(store, FakeInvoiced(refresh=ClientAuthError("no", reason="invalid_client")))
    assert r.refresh(CID) == RefreshResult(CID, RefreshOutcome.CLIENT_AUTH_FAILED, "active", 3)
    assert store.named("release_lease") == [((CID,), {"owner": owner_of(store)})]
    assert [n for n, _, _ in store.calls] == ["take_lease", "release_lease"]
    assert r.events.published == []


def test_a_transient_failure_counts_backs_off_and_reschedules():
    store = FakeStore(connection(failure_count=0))
    r = refresher(store, FakeInvoiced(refresh=TransientError("busy", reason="http_503")))
    result = r.refresh(CID)
    assert store.named("record_failure") == [((CID,), {
        "owner": owner_of(store), "version": 3, "now": NOW, "reason": "http_503", "next_attempt_at": NOW + 15,
        "outcome_unknown": None, "failing": False, "refresh_at": NOW + 15 + 900})]
    assert result == RefreshResult(CID, RefreshOutcome.TRANSIENT, "active", 4, NOW + 15)
    assert r.events.published == []


def test_the_third_failure_is_failing_and_published_once():
    store = FakeStore(connection(failure_count=1))
    r = refresher(store, FakeInvoiced(refresh=RequestRejectedError("no", reason="rejected")))
    r.refresh(CID)
    assert store.named("record_failure")[0][1]["failing"] is False
    assert r.events.published == []

    third = FakeStore(connection(failure_count=2))
    r = refresher(third, FakeInvoiced(refresh=TransientError("busy", reason="http_503")), rng=1.0)
    result = r.refresh(CID)
    kwargs = third.named("record_failure")[0][1]
    assert (kwargs["failing"], kwargs["next_attempt_at"]) == (True, NOW + 120)
    assert result.retry_at == NOW + 120
    assert r.events.published == [(events.CONNECTION_REFRESH_FAILING, CID, 4, {"reason": "http_503"})]

    fourth = FakeStore(connection(failure_count=3))
    r = refresher(fourth, FakeInvoiced(refresh=TransientError("busy", reason="http_503")))
    r.refresh(CID)
    assert fourth.named("record_failure")[0][1]["failing"] is True
    assert r.events.published == []


def test_a_lost_answer_flags_the_row_and_waits_for_the_settle_time():
    for error in (UnknownOutcomeError("lost", reason="ReadTimeout"), InvalidTokenResponseError("x", reason="not_jwt")):
        store = FakeStore(connection())
        r = refresher(store, FakeInvoiced(refresh=error))
        result = r.refresh(CID)
        kwargs = store.named("record_failure")[0][1]
        assert (kwargs["outcome_unknown"], kwargs["next_attempt_at"], kwargs["refresh_at"]) == (
            True, NOW + 90, NOW + 90 + 900)
        assert kwargs["reason"] == error.reason
        assert result == RefreshResult(CID, RefreshOutcome.UNKNOWN_OUTCOME, "active", 4, NOW + 90)
        assert r.events.published == [(events.CONNECTION_REFRESH_FAILING, CID, 4, {"reason": error.reason})]
    late = FakeStore(connection(failure_count=7))
    refresher(late, FakeInvoiced(refresh=UnknownOutcomeError("lost")), rng=1.0).refresh(CID)
    assert late.named("record_failure")[0][1]["next_attempt_at"] == NOW + 1800


def test_a_failure_record_lost_to_a_race():
    store = FakeStore(connection())
    store.failure_lost = True
    r = refresher(store, FakeInvoiced(refresh=UnknownOutcomeError("lost")))
    assert r.refresh(CID) == RefreshResult(CID, RefreshOutcome.RACE_RECOVERED, "active", 3)
    assert r.events.published == []


def test_anything_else_releases_the_lease_and_propagates():
    store = FakeStore(connection())
    with pytest.raises(RuntimeError):
        refresher(store, FakeInvoiced(refresh=RuntimeError("bug"))).refresh(CID)
    assert store.named("release_lease") == [((CID,), {"owner": owner_of(store)})]
    empty = FakeStore(connection(), sealed=None)
    r = refresher(empty)
    with pytest.raises(LeaseLost, match=f"^{CID} has no tokens$"):
        r.refresh(CID)
    assert r.client.calls == []
    assert len(empty.named("release_lease")) == 1


# ------------------------------------------------------------------ the probe after a lost answer
def flagged(**changes) -> Connection:
    return connection(outcome_unknown_at=NOW - 200, api_url="https://api.example/", **changes)


def test_the_probe_accepted_clears_the_flag_and_refreshes():
    store = FakeStore(flagged(expires_at=NOW + 6))
    r = refresher(store)
    result = r.refresh(CID)
    assert r.client.calls == [("token_accepted", "access<sealed-old>", "https://api.example/"),
                              ("refresh", "refresh<sealed-old>")]
    assert result.outcome is RefreshOutcome.REFRESHED


def test_a_refresh_after_a_lost_answer_publishes_recovered():
    store = FakeStore(flagged(expires_at=NOW + 6))
    r = refresher(store)
    assert r.refresh(CID).outcome is RefreshOutcome.REFRESHED
    assert r.events.published == [(events.CONNECTION_RECOVERED, CID, 4, {"reason": "outcome_unknown"})]


def test_a_refresh_after_failures_publishes_recovered_and_a_healthy_one_does_not():
    store = FakeStore(connection(failure_count=2))
    r = refresher(store)
    assert r.refresh(CID).outcome is RefreshOutcome.REFRESHED
    assert r.events.published == [(events.CONNECTION_RECOVERED, CID, 4, {"reason": "refresh_failing"})]
    healthy = refresher(FakeStore(connection()))
    assert healthy.refresh(CID).outcome is RefreshOutcome.REFRESHED
    assert healthy.events.published == []


def test_the_probe_accepted_then_a_failed_refresh_clears_the_flag():
    store = FakeStore(flagged(expires_at=NOW + 6))
    r = refresher(store, FakeInvoiced(refresh=TransientError("busy", reason="http_503")))
    result = r.refresh(CID)
    assert store.named("record_failure")[0][1]["outcome_unknown"] is False
    assert result.outcome is RefreshOutcome.TRANSIENT


def test_an_expired_access_token_cannot_tell_so_the_refresh_decides():
    store = FakeStore(flagged(expires_at=NOW + 5))
    r = refresher(store, FakeInvoiced(refresh=TransientError("busy", reason="http_503")))
    result = r.refresh(CID)
    assert [c[0] for c in r.client.calls] == ["refresh"]
    assert store.named("record_failure")[0][1]["outcome_unknown"] is None
    assert result.outcome is RefreshOutcome.UNKNOWN_OUTCOME
    assert r.events.published == []


def test_the_probe_refused_means_the_rotation_happened():
    store = FakeStore(flagged(expires_at=NOW + 600))
    r = refresher(store, FakeInvoiced(accepted=False))
    result = r.refresh(CID)
    assert [c[0] for c in r.client.calls] == ["token_accepted"]
    assert store.named("mark_needs_reauth")[0][1]["reason"] == "rotated_answer_lost"
    assert result.outcome is RefreshOutcome.NEEDS_REAUTH
    assert r.events.published == [(events.CONNECTION_NEEDS_REAUTH, CID, 4, {"reason": "rotated_answer_lost"})]


def test_the_probe_without_an_answer_keeps_the_flag_and_the_long_cooldown():
    store = FakeStore(flagged(expires_at=NOW + 600))
    r = refresher(store, FakeInvoiced(accepted=TransientError("no", reason="connect_failed")))
    result = r.refresh(CID)
    kwargs = store.named("record_failure")[0][1]
    assert (kwargs["reason"], kwargs["next_attempt_at"], kwargs["outcome_unknown"], kwargs["refresh_at"]) == (
        "probe_connect_failed", NOW + 900, None, NOW + 1800)
    assert result == RefreshResult(CID, RefreshOutcome.UNKNOWN_OUTCOME, "active", 4, NOW + 900)
    assert [c[0] for c in r.client.calls] == ["token_accepted"]
    assert r.events.published == []
    blank = TransientError("no")
    blank.reason = ""
    nameless = FakeStore(flagged(expires_at=NOW + 600))
    refresher(nameless, FakeInvoiced(accepted=blank)).refresh(CID)
    assert nameless.named("record_failure")[0][1]["reason"] == "probe_no_answer"
    capped = FakeStore(flagged(expires_at=NOW + 600, failure_count=7))
    refresher(capped, FakeInvoiced(accepted=TransientError("no")), rng=1.0).refresh(CID)
    assert capped.named("record_failure")[0][1]["next_attempt_at"] == NOW + 1800


# ------------------------------------------------------------------ writes and kept-aside tokens
def test_throttled_commits_are_retried_with_growing_jittered_sleeps():
    store = FakeStore(connection())
    store.commit_errors = [client_error("ThrottlingException"), client_error("TransactionConflictException"),
                           EndpointConnectionError(endpoint_url="https://dynamodb")]
    r = refresher(store)
    assert r.refresh(CID).outcome is RefreshOutcome.REFRESHED
    assert r.sleeps == [0.1, 0.2, 0.4]
    assert len(store.named("commit_tokens")) == 4
    slow = FakeStore(connection())
    slow.commit_errors = [client_error("ProvisionedThroughputExceededException")]
    r = refresher(slow, rng=1.0)
    r.refresh(CID)
    assert r.sleeps == [0.2]


@pytest.mark.parametrize("code", [
    "ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded",
    "InternalServerError", "ServiceUnavailable", "TransactionConflictException",
    "KMSInternalException", "DependencyTimeoutException"])
def test_each_retryable_write_error_is_retried(code):
    store = FakeStore(connection())
    store.commit_errors = [client_error(code)]
    assert refresher(store).refresh(CID).outcome is RefreshOutcome.REFRESHED
    assert store.named("put_rescue") == []


def recovering_store(error: BaseException, **row) -> FakeStore:
    store = FakeStore(connection(**row))
    store.commit_errors = [error]
    return store


def test_a_refused_commit_keeps_the_tokens_aside_and_applies_them_at_once():
    store = recovering_store(LeaseLost(CID))
    r = refresher(store)
    result = r.refresh(CID)
    first_owner = owner_of(store)
    (rescue,), _ = store.named("put_rescue")[0]
    assert rescue == Rescue(CID, "sealed<at-new|rt-new>", 3, NOW + 3600, NOW, "LeaseLost", 3600)
    assert r.events.published == [(events.CONNECTION_REFRESH_FAILING, CID, 3, {"reason": "kept_aside"})]
    assert store.named("release_lease")[0] == ((CID,), {"owner": first_owner})
    second = store.named("take_lease")[1][1]
    assert second == {"owner": second["owner"], "version": 3, "now": NOW, "until": NOW + 60,
                      "statuses": (ConnectionStatus.ACTIVE, ConnectionStatus.NEEDS_REAUTH)}
    assert second["owner"] != first_owner
    commit = store.named("commit_tokens")[1][1]
    assert (commit["owner"], commit["ciphertext"], commit["active_until"], commit["refresh_at"]) == (
        second["owner"], "sealed<at-new|rt-new>", None, NOW + 30 * 86400)
    assert store.named("delete_rescue") == [((rescue,), {})]
    assert result == RefreshResult(CID, RefreshOutcome.RESCUE_APPLIED, "active", 4, None)


def test_a_commit_that_fails_for_good_is_kept_aside_by_its_error_type():
    store = recovering_store(client_error("ConditionalCheckFailedException"))
    refresher(store).refresh(CID)
    assert store.named("put_rescue")[0][0][0].reason == "ClientError"
    assert len(store.named("commit_tokens")) == 2
    worn = FakeStore(connection())
    worn.commit_errors = [client_error("ThrottlingException")] * 4
    r = refresher(worn)
    r.refresh(CID)
    assert len(r.sleeps) == 3
    assert len(worn.named("commit_tokens")) == 5
    assert worn.named("put_rescue")[0][0][0].reason == "ClientError"


def test_kept_aside_when_the_recovery_is_postponed_or_busy():
    store = recovering_store(LeaseLost(CID))
    original = store.get_rescue
    store.get_rescue = lambda cid: (_ for _ in ()).throw(client_error("InternalServerError"))
    result = refresher(store).refresh(CID)
    assert result == RefreshResult(CID, RefreshOutcome.KEPT_ASIDE, "active", 3)
    store.get_rescue = original
    busy = recovering_store(LeaseLost(CID))
    busy.lease_refusals = [False, True]
    assert refresher(busy).refresh(CID) == RefreshResult(CID, RefreshOutcome.KEPT_ASIDE, "active", 3)


# ------------------------------------------------------------------ recover()
def kept(base_version=3) -> Rescue:
    return Rescue(CID, "sealed-kept", base_version, NOW + 1234, NOW - 10, "LeaseLost", 1800)


def test_recover_with_nothing_kept():
    assert refresher(FakeStore(connection())).recover(CID) == RefreshResult(
        CID, RefreshOutcome.ALREADY_FRESH, "active", 3)
    assert refresher(FakeStore(None)).recover(CID) == RefreshResult(CID, RefreshOutcome.NOT_FOUND)


def test_recover_applies_to_the_same_version_even_when_it_needs_reauth():
    store = FakeStore(connection(status=ConnectionStatus.NEEDS_REAUTH, active_until=NOW + 5000), rescue=kept())
    r = refresher(store)
    result = r.recover(CID)
    commit = store.named("commit_tokens")[0][1]
    assert (commit["ciphertext"], commit["expires_at"], commit["lifetime"], commit["version"]) == (
        "sealed-kept", NOW + 1234, 1800, 3)
    # active until later than expiry minus the scaled lead (450): kept fresh ahead of expiry
    assert commit["refresh_at"] == NOW + 1234 - 450 + 900
    assert commit["active_until"] is None
    assert result.outcome is RefreshOutcome.RESCUE_APPLIED
    assert store.rescue is None
    assert r.events.published == [(events.CONNECTION_RECOVERED, CID, 4, {"reason": "needs_reauth"})]


def test_recover_busy():
    leased = FakeStore(connection(lease_owner="other", lease_until=NOW + 20), rescue=kept())
    assert refresher(leased).recover(CID) == RefreshResult(CID, RefreshOutcome.BUSY, "active", 3, NOW + 20)
    assert leased.named("take_lease") == []
    refused = FakeStore(connection(), rescue=kept())
    refused.lease_refusals = [True]
    assert refresher(refused).recover(CID) == RefreshResult(CID, RefreshOutcome.BUSY, "active", 3)
    lost = FakeStore(connection(), rescue=kept())
    lost.commit_errors = [LeaseLost(CID)]
    assert refresher(lost).recover(CID) == RefreshResult(CID, RefreshOutcome.BUSY, "active", 3)
    assert lost.named("release_lease") == []
    assert lost.rescue is not None


def test_recover_releases_and_keeps_the_rescue_when_the_commit_breaks():
    store = FakeStore(connection(), rescue=kept())
    store.commit_errors = [client_error("AccessDeniedException")]
    with pytest.raises(ClientError):
        refresher(store).recover(CID)
    assert store.named("release_lease") == [((CID,), {"owner": owner_of(store)})]
    assert store.rescue is not None


def test_recover_revokes_and_forgets_tokens_of_a_connection_that_moved_on():
    for row in (connection(version=4), connection(status=ConnectionStatus.REVOKED)):
        store = FakeStore(row, rescue=kept())
        r = refresher(store)
        assert r.recover(CID) == RefreshResult(CID, RefreshOutcome.RESCUE_DISCARDED, row.status.value, row.version)
        assert r.client.calls == [("revoke", "access<sealed-kept>")]
        assert store.rescue is None
        assert store.named("commit_tokens") == []
    gone = FakeStore(None, rescue=kept())
    assert refresher(gone).recover(CID) == RefreshResult(CID, RefreshOutcome.RESCUE_DISCARDED)
    refused = FakeStore(connection(version=4), rescue=kept())
    assert refresher(refused, FakeInvoiced(revoke=RequestRejectedError("no"))).recover(
        CID).outcome is RefreshOutcome.RESCUE_DISCARDED
    assert refused.rescue is None


def test_recover_retries_later_when_the_revoke_gets_no_answer():
    store = FakeStore(connection(version=4), rescue=kept())
    result = refresher(store, FakeInvoiced(revoke=TransientError("busy")), rng=1.0).recover(CID)
    assert result == RefreshResult(CID, RefreshOutcome.TRANSIENT, retry_at=NOW + 30)
    assert store.rescue is not None


# ------------------------------------------------------------------ waiting out another refresher's lease
def test_waiting_polls_with_a_doubling_delay_up_to_the_deadline():
    row = connection(lease_owner="other", lease_until=NOW + 100)
    store = FakeStore(row)
    r = refresher(store, clock=float(NOW), ticking=True)
    assert r.wait_out_lease(row, NOW + 2.0) is True
    assert r.sleeps == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.5, 0.5, 0.25], abs=1e-5)
    assert len(store.named("get_connection")) == 7


def test_waiting_ends_when_the_row_changes_the_lease_ends_or_the_row_is_gone():
    row = connection(lease_owner="other", lease_until=NOW + 100)
    changed = FakeStore(row)
    changed.rows_read = [row, connection(version=4, lease_owner="other", lease_until=NOW + 100)]
    r = refresher(changed, clock=float(NOW), ticking=True)
    assert r.wait_out_lease(row, NOW + 10.0) is True
    assert r.sleeps == pytest.approx([0.05, 0.1])

    ending = connection(lease_owner="other", lease_until=NOW + 1)
    ended = FakeStore(ending)
    r = refresher(ended, clock=float(NOW), ticking=True)
    assert r.wait_out_lease(ending, NOW + 10.0) is True
    assert r.sleeps == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.5])  # the lease ends at NOW + 1

    gone = FakeStore(row)
    gone.rows_read = [None]
    r = refresher(gone, clock=float(NOW), ticking=True)
    assert r.wait_out_lease(row, NOW + 10.0) is True
    assert r.sleeps == pytest.approx([0.05])


def test_no_wait_once_the_deadline_has_come():
    row = connection(lease_owner="other", lease_until=NOW + 100)
    store = FakeStore(row)
    r = refresher(store, clock=float(NOW), ticking=True)
    assert r.wait_out_lease(row, float(NOW)) is False
    assert r.sleeps == []
    assert store.calls == []


def test_a_refresh_asked_to_wait_refreshes_once_the_other_lease_is_gone():
    leased = connection(lease_owner="other", lease_until=NOW + 100)
    store = FakeStore(connection())
    store.lease_refusals = [True]
    store.rows_read = [leased, leased, connection()]
    r = refresher(store, clock=float(NOW), ticking=True)
    result = r.refresh(CID, wait_seconds=1.0)
    assert r.sleeps == pytest.approx([0.05, 0.1])
    assert result.outcome is RefreshOutcome.REFRESHED
    assert [n for n, _, _ in store.calls] == [
        "take_lease", "get_connection", "get_connection", "get_connection", "get_connection", "take_lease",
        "commit_tokens"]


# ------------------------------------------------------------------ more of what is written
def test_an_on_demand_refresh_of_a_stale_version_keeps_the_token_fresh_for_active_use():
    store = FakeStore(connection())
    refresher(store).refresh(CID, mode=Mode.ON_DEMAND, stale_version=3)
    assert store.named("commit_tokens")[0][1]["active_until"] == NOW + 86400


def test_a_newer_version_is_a_recovered_race_even_when_due_on_schedule():
    store = FakeStore(connection(version=5, refresh_at=NOW))
    store.lease_refusals = [True]
    assert refresher(store).refresh(CID, stale_version=4).outcome is RefreshOutcome.RACE_RECOVERED


def test_a_forced_refresh_that_must_read_is_still_needed():
    store = FakeStore(connection(refresh_at=None))
    store.lease_refusals = [True, False]
    assert refresher(store).refresh(CID, mode=Mode.FORCED).outcome is RefreshOutcome.REFRESHED


def test_short_lived_tokens_are_committed_and_kept_aside_with_their_lifetime():
    short = SimpleNamespace(access_token="at-new", refresh_token="rt-new", expires_at=NOW + 90, lifetime=90)
    store = FakeStore(connection())
    refresher(store, FakeInvoiced(refresh=short)).refresh(CID)
    assert store.named("commit_tokens")[0][1]["lifetime"] == 90
    kept_store = FakeStore(connection())
    kept_store.commit_errors = [LeaseLost(CID)]
    refresher(kept_store, FakeInvoiced(refresh=short)).refresh(CID)
    assert kept_store.named("put_rescue")[0][0][0].lifetime == 90
    assert kept_store.named("commit_tokens")[1][1]["lifetime"] == 90


def test_a_client_error_without_a_code_is_not_retried():
    store = FakeStore(connection())
    store.commit_errors = [ClientError({}, "UpdateItem")]
    r = refresher(store)
    r.refresh(CID)
    assert r.sleeps == []
    assert store.named("put_rescue")[0][0][0].reason == "ClientError"


def test_a_failure_is_logged_with_its_count_and_delay(caplog):
    store = FakeStore(connection(failure_count=1))
    with caplog.at_level("WARNING", logger="invoiced_connect.lifecycle.refresh"):
        refresher(store, FakeInvoiced(refresh=TransientError("busy", reason="http_503"))).refresh(CID)
    (record,) = [r for r in caplog.records if r.getMessage() == "refresh failed, will retry"]
    assert (record.connection_id, record.reason, record.failures, record.retry_in) == (CID, "http_503", 2, 30)


def test_release_gives_the_lease_back_under_its_owner():
    from invoiced_connect.lifecycle.refresh import Lease

    store = FakeStore(connection())
    owner = "o" * 32  # an owner as new_owner() makes them
    refresher(store).release(Lease(connection(), None, owner))
    assert store.named("release_lease") == [((CID,), {"owner": owner})]
