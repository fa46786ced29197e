"""A Hypothesis state machine over the whole lifecycle, against the local
stack: connect, refresh (with and without faults), race, read, revoke at
Invoiced, disconnect. After every step:

* a connection once made is never deleted, and its version never goes down;
* an active connection's stored refresh token is the one Invoiced accepts,
  unless the connection is flagged (a lost answer) or was revoked behind our back;
* a disconnected connection holds no tokens;
* no lease and no kept-aside tokens are left behind.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from invoiced_connect.core.models import ConnectionStatus
from invoiced_connect.lifecycle.disconnect import Disconnector
from invoiced_connect.lifecycle.refresh import Mode, RefreshOutcome
from invoiced_connect.sdk.tokens import ConnectionNotFound, ConnectionRevoked, NeedsReauthorization, TokenUnavailable
from tests.support.lifecycle import connect, invoiced_client, make_due, reader, refresher, store, stored_tokens

FAULTS = [None, "server_error_next", "rate_limit_next", "html_next", "truncate_next", "commit_then_drop_next"]
SLOTS = ("a", "b", "c")


class Lifecycle(RuleBasedStateMachine):
    stack = None  # set by the test

    def __init__(self) -> None:
        super().__init__()
        self.prefix = f"sm-{uuid.uuid4().hex[:8]}"
        self.versions: dict[str, int] = {}
        self.behind_our_back: set[str] = set()  # revoked at Invoiced, not yet noticed
        self.stack.invoiced.faults.reset()

    def cid(self, slot: str) -> str:
        return f"{self.prefix}-{slot}"

    def _row(self, slot: str):
        return store(self.stack).get_connection(self.cid(slot))

    def _past_cooldown(self, slot: str):
        """A clock just past the row's cooldown: time passes between steps."""
        found = self._row(slot)
        wait = max(0, found[0].next_attempt_at - time.time() + 1) if found else 0
        return lambda: time.time() + wait

    # ---------------------------------------------------------------- rules
    @rule(slot=st.sampled_from(SLOTS))
    def connect_or_reconnect(self, slot: str) -> None:
        connect(self.stack, self.cid(slot))
        self.behind_our_back.discard(slot)

    @rule(slot=st.sampled_from(SLOTS), fault=st.sampled_from(FAULTS))
    def refresh(self, slot: str, fault: str | None) -> None:
        if fault:
            self.stack.invoiced.faults.set(**{fault: 1})
        result = refresher(self.stack, clock=self._past_cooldown(slot)).refresh(self.cid(slot), mode=Mode.FORCED)
        self.stack.invoiced.faults.reset()
        if result.outcome is RefreshOutcome.NEEDS_REAUTH:
            self.behind_our_back.discard(slot)

    @rule(slot=st.sampled_from(SLOTS))
    def race(self, slot: str) -> None:
        if self._row(slot) is None:
            return
        make_due(self.stack, self.cid(slot))
        clock = self._past_cooldown(slot)
        before = self.stack.invoiced.token_request_count("refresh_token")
        barrier = threading.Barrier(4)

        def run() -> None:
            barrier.wait()
            refresher(self.stack, clock=clock).refresh(self.cid(slot), mode=Mode.SCHEDULED, wait_seconds=10)

        threads = [threading.Thread(target=run) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert self.stack.invoiced.token_request_count("refresh_token") - before <= 1

    @rule(slot=st.sampled_from(SLOTS))
    def read(self, slot: str) -> None:
        found = self._row(slot)
        try:
            token = reader(self.stack).get_access_token(self.cid(slot))
        except ConnectionNotFound:
            assert found is None
        except NeedsReauthorization:
            assert found is not None
        except ConnectionRevoked:
            assert found is not None and found[0].status is ConnectionStatus.REVOKED
        except TokenUnavailable:
            assert found is not None and (found[0].next_attempt_at or slot in self.behind_our_back)
        else:
            if slot not in self.behind_our_back and not self._row(slot)[0].outcome_unknown_at:
                assert self.stack.invoiced.is_access_token_valid(token)

    @rule(slot=st.sampled_from(SLOTS))
    def revoke_at_invoiced(self, slot: str) -> None:
        found = self._row(slot)
        if found is None or found[0].status is not ConnectionStatus.ACTIVE:
            return
        invoiced_client(self.stack).revoke(stored_tokens(self.stack, self.cid(slot))[0])
        self.behind_our_back.add(slot)

    @rule(slot=st.sampled_from(SLOTS))
    def disconnect(self, slot: str) -> None:
        result = Disconnector(refresher(self.stack, clock=self._past_cooldown(slot))).disconnect(self.cid(slot))
        assert result.outcome in ("disconnected", "already_revoked", "not_found", "unavailable")
        if result.outcome == "disconnected":
            self.behind_our_back.discard(slot)

    # ---------------------------------------------------------------- invariants
    @invariant()
    def nothing_lost(self) -> None:
        for slot in SLOTS:
            cid = self.cid(slot)
            found = store(self.stack).get_connection(cid)
            if cid in self.versions:
                assert found is not None, "a connection was deleted"
                assert found[0].version >= self.versions[cid], "the version went down"
            if found is None:
                continue
            row, blob = found
            self.versions[cid] = row.version
            assert row.lease_owner is None, "a lease was left behind"
            assert store(self.stack).get_rescue(cid) is None, "tokens were left aside"
            if row.status is ConnectionStatus.REVOKED:
                assert blob is None
            elif row.status is ConnectionStatus.ACTIVE and not row.outcome_unknown_at \
                    and slot not in self.behind_our_back:
                _, refresh_token = stored_tokens(self.stack, cid)
                assert self.stack.invoiced.is_refresh_token_valid(refresh_token), (
                    "an active connection holds a refresh token Invoiced does not accept")


@pytest.mark.slow
def test_lifecycle_invariants_hold(stack, invoiced):
    Lifecycle.stack = stack
    run_state_machine_as_test(
        Lifecycle,
        settings=settings(max_examples=12, stateful_step_count=12, deadline=None,
                          suppress_health_check=list(HealthCheck)),
    )
