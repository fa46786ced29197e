"""A reconnect revokes the grant it replaces, after the new tokens are stored.

Nobody holds the replaced grant's tokens any more, and Invoiced would keep
its refresh token valid for a year. Revoking it is best effort: a failure
is logged and counted (see test_handler_metrics.py) and never blocks the
connect."""

from __future__ import annotations

import uuid

import pytest

from invoiced_connect.core.models import ConnectionStatus, TokenSet
from invoiced_connect.lifecycle.disconnect import Disconnector
from invoiced_connect.storage.crypto import TokenCipher
from invoiced_connect.storage.store import CompanyMismatch, TokenStore
from tests.support.browser import callback, start_flow
from tests.support.lifecycle import refresher, row, stored_tokens


@pytest.fixture
def cid(invoiced) -> str:
    return f"rc-{uuid.uuid4().hex[:10]}"


def connect_in_browser(stack, connection_id: str) -> None:
    started = start_flow(stack, connection_id)
    response = callback(stack.invoiced.consent(started.authorize_url), started.cookie)
    assert response.status_code == 200, response.text


def test_a_reconnect_revokes_the_replaced_grant_and_keeps_the_new_one(stack, cid):
    connect_in_browser(stack, cid)
    old_access, old_refresh = stored_tokens(stack, cid)
    connect_in_browser(stack, cid)
    new_access, new_refresh = stored_tokens(stack, cid)
    assert row(stack, cid).version == 2
    assert not stack.invoiced.is_access_token_valid(old_access)
    assert not stack.invoiced.is_refresh_token_valid(old_refresh)
    assert stack.invoiced.is_access_token_valid(new_access)
    assert stack.invoiced.is_refresh_token_valid(new_refresh)


def test_a_reconnect_whose_revoke_fails_still_connects_with_the_new_grant(stack, cid, invoiced):
    connect_in_browser(stack, cid)
    old_access, _ = stored_tokens(stack, cid)
    invoiced.faults.set(revoke_error_next=1)
    connect_in_browser(stack, cid)
    current = row(stack, cid)
    assert current.version == 2 and current.status is ConnectionStatus.ACTIVE
    new_access, new_refresh = stored_tokens(stack, cid)
    assert stack.invoiced.is_access_token_valid(new_access) and stack.invoiced.is_refresh_token_valid(new_refresh)
    assert stack.invoiced.is_access_token_valid(old_access)  # left alive: logged and counted, not retried


def save(stack, connection_id: str, now: int, tenant: str = "167", company: str | None = None, **options):
    tokens = TokenSet(access_token=f"a-{now}", refresh_token=f"r-{now}", expires_at=now + 3600, tenant_id=tenant,
                      scopes=("read_write",))
    sealed = TokenCipher(stack.kms_key_arn).encrypt(connection_id, tokens.access_token, tokens.refresh_token)
    return TokenStore(stack.table_name).save_replacing(
        connection_id=connection_id, tokens=tokens, ciphertext=sealed, company_name=company,
        issuer=stack.invoiced.base_url, api_url=stack.invoiced.api_url, now=now, active_until=now + 60, **options)


def test_a_save_returns_the_row_as_stored_and_the_live_grant_it_replaced(stack, cid):
    first = save(stack, cid, 1000, company="Acme")
    assert first.replaced is None and first.connection.version == 1
    assert first.connection == TokenStore(stack.table_name).get_connection(cid)[0]
    with pytest.raises(CompanyMismatch) as refused:
        save(stack, cid, 1500, tenant="168")
    assert refused.value.stored == first.connection
    assert TokenStore(stack.table_name).get_connection(cid)[0] == first.connection
    second = save(stack, cid, 2000, tenant="168", allow_company_change=True)
    assert second.previous == first.connection
    assert TokenCipher(stack.kms_key_arn).decrypt(cid, second.replaced) == ("a-1000", "r-1000")
    stored = TokenStore(stack.table_name).get_connection(cid)[0]
    assert second.connection == stored
    assert (stored.version, stored.created_at, stored.tenant_id, stored.company_name) == (2, 1000, "168", None)


def test_a_save_over_a_disconnected_connection_replaces_no_live_grant(stack, cid):
    connect_in_browser(stack, cid)
    Disconnector(refresher(stack)).disconnect(cid)
    assert row(stack, cid).status is ConnectionStatus.REVOKED
    saved = save(stack, cid, 3000)
    assert saved.replaced is None and saved.connection.status is ConnectionStatus.ACTIVE
    assert saved.connection == TokenStore(stack.table_name).get_connection(cid)[0]
