"""Tokens that live less than an hour: the margins scale with the lifetime.

With a fixed 5-minute minimum validity, a 90-second token can never be
served: every reader miss would ask for a rotation and then refuse the new
token too. Here a local Invoiced grants 90-second tokens and a simulated
clock runs through six lifetimes: every read is served a live token, and a
connection is rotated about once per lifetime, however many readers ask."""

from __future__ import annotations

import math
import time
import uuid

import pytest

from invoiced_connect.app_api.service import TokenVendor, answer
from invoiced_connect.core.lifetimes import min_validity, scaled
from invoiced_connect.lifecycle.refresh import Mode, RefreshPolicy
from invoiced_connect.sdk.tokens import TokenReader
from invoiced_connect.storage.crypto import TokenCipher
from invoiced_connect.storage.store import TokenStore
from local.invoiced import LocalInvoiced
from tests.support.lifecycle import connect, invoiced_client, refresher, row

LIFETIME = 90
READERS = 4
CONNECTIONS = 3
STEP_SECONDS = 3
LIFETIMES = 6


class Clock:
    """Simulated time, shared by Invoiced, the refreshers and the readers."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def short_lived_invoiced(stack):
    """A local Invoiced of its own that issues LIFETIME-second access tokens, and the clock it runs on."""
    clock = Clock()
    server = LocalInvoiced(client_id=stack.client_id, client_secret=stack.client_secret,
                           redirect_uris=[stack.callback_url], access_token_ttl=LIFETIME, clock=clock)
    with server:
        yield server, clock


def test_the_margins_of_a_90_second_token_are_a_share_of_the_one_hour_ones():
    assert (min_validity(LIFETIME), scaled(900, LIFETIME)) == (8, 23)
    assert min_validity(3600) == min_validity(7200) == 300
    policy = RefreshPolicy()
    # The scheduler rotates a 90-second token 23 s before expiry (its share of the window) ...
    assert policy.next_refresh_at(expires_at=1090, now=1000, active_until=5000,
                                  lifetime=LIFETIME) - policy.window_seconds == 1090 - 23
    # ... and a one-hour token 15 minutes before, as before.
    assert policy.next_refresh_at(expires_at=4600, now=1000, active_until=9000) == 4600


def test_ninety_second_tokens_serve_every_reader_with_about_one_rotation_per_lifetime(stack, short_lived_invoiced):
    server, clock = short_lived_invoiced
    client = invoiced_client(stack, invoiced=server, clock=clock)

    def vendor_invoke(payload: dict) -> dict:  # the tokens function, in process, on the simulated clock
        vendor = TokenVendor(store=TokenStore(stack.table_name), cipher=TokenCipher(stack.kms_key_arn),
                             refresher=lambda: refresher(stack, client=client, clock=clock), clock=clock)
        return answer(lambda: vendor.get_token(payload, remaining_seconds=60))

    ids = [f"short-{uuid.uuid4().hex[:8]}-{n}" for n in range(CONNECTIONS)]
    for connection_id in ids:
        connect(stack, connection_id, invoiced=server, clock=clock)
    readers = [TokenReader(store=TokenStore(stack.table_name), cipher=TokenCipher(stack.kms_key_arn),
                           invoke=vendor_invoke, clock=clock, coalesce=False) for _ in range(READERS)]
    scheduler = refresher(stack, client=client, clock=clock)
    start, served = clock.now, 0
    while clock.now < start + LIFETIMES * LIFETIME:
        for connection_id in ids:
            for reader in readers:
                token = reader.get_token(connection_id)
                assert token.expires_at - clock.now >= min_validity(LIFETIME)
                assert server.is_access_token_valid(token.access_token), (connection_id, clock.now - start)
                served += 1
            if int(clock.now - start) % 30 == 0:  # the scheduler's run, every 30 s
                scheduler.refresh(connection_id, mode=Mode.SCHEDULED)
        clock.now += STEP_SECONDS

    assert served == len(ids) * READERS * (LIFETIMES * LIFETIME // STEP_SECONDS)
    rotations = [row(stack, connection_id).version - 1 for connection_id in ids]
    # A token is replaced only in its last 23 s (the largest margin), so at most
    # one rotation per (lifetime - 23 s), and every token request was committed.
    most = math.ceil(LIFETIMES * LIFETIME / (LIFETIME - scaled(900, LIFETIME)))
    assert all(LIFETIMES - 1 <= count <= most for count in rotations), rotations
    assert server.token_request_count("refresh_token") == sum(rotations)


def test_a_larger_validity_than_a_short_token_can_give_is_capped_not_a_refresh_storm(stack, short_lived_invoiced):
    server, clock = short_lived_invoiced
    client = invoiced_client(stack, invoiced=server, clock=clock)
    vendor = TokenVendor(store=TokenStore(stack.table_name), cipher=TokenCipher(stack.kms_key_arn),
                         refresher=lambda: refresher(stack, client=client, clock=clock), clock=clock)
    connection_id = f"short-{uuid.uuid4().hex[:8]}"
    connect(stack, connection_id, invoiced=server, clock=clock)
    clock.now += 50  # 40 s left: less than the cap (45 s), so one rotation
    for _ in range(5):
        body = answer(lambda: vendor.get_token({"connection_id": connection_id, "min_validity_seconds": 1800},
                                               remaining_seconds=60))
        assert "error" not in body, body
        assert body["expires_at"] - clock.now >= scaled(1800, LIFETIME) == 45
    assert row(stack, connection_id).version == 2  # one rotation for five asks
