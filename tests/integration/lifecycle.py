"""Helpers for the token lifecycle tests: connections made for real (the
local Invoiced's consent and code exchange), and refreshers wired to the
running local stack with injectable parts."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import boto3

from invoiced_connect.crypto import TokenCipher
from invoiced_connect.events import EventPublisher
from invoiced_connect.invoiced import InvoicedClient
from invoiced_connect.models import Connection
from invoiced_connect.pkce import new_verifier, random_token, s256_challenge
from invoiced_connect.refresh import Refresher, RefreshPolicy
from invoiced_connect.store import TokenStore


def invoiced_client(stack: Any) -> InvoicedClient:
    return InvoicedClient(
        base_url=stack.invoiced.base_url,
        api_url=stack.invoiced.api_url,
        client_id=stack.client_id,
        client_secret=lambda force: stack.client_secret,
        timeout=float(stack.env.get("HTTP_TIMEOUT_SECONDS", 2)),
    )


def connect(stack: Any, connection_id: str, *, active_use: bool = True) -> Connection:
    """Authorize, exchange the code and store the tokens, as the callback does."""
    client = invoiced_client(stack)
    verifier = new_verifier()
    url = client.authorize_url(redirect_uri=stack.callback_url, scope="read_write", state=random_token(),
                               code_challenge=s256_challenge(verifier))
    location = stack.invoiced.consent(url)
    code = location.split("code=", 1)[1].split("&", 1)[0]
    from urllib.parse import unquote

    tokens = client.exchange_code(code=unquote(code), redirect_uri=stack.callback_url, code_verifier=verifier)
    now = int(time.time())
    policy = RefreshPolicy()
    active_until = now + policy.active_use_seconds if active_use else 0
    return store(stack).save_connection(
        connection_id=connection_id,
        tokens=tokens,
        ciphertext=TokenCipher(stack.kms_key_arn).encrypt(connection_id, tokens.access_token, tokens.refresh_token),
        company_name=None,
        issuer=stack.invoiced.base_url,
        now=now,
        refresh_at=policy.next_refresh_at(expires_at=tokens.expires_at, now=now, active_until=active_until),
        active_until=active_until,
    )


def store(stack: Any) -> TokenStore:
    return TokenStore(stack.table_name)


def row(stack: Any, connection_id: str) -> Connection:
    found = store(stack).get_connection(connection_id)
    assert found is not None, f"{connection_id} is gone"
    return found[0]


def stored_tokens(stack: Any, connection_id: str) -> tuple[str, str]:
    found = store(stack).get_connection(connection_id)
    assert found is not None and found[1] is not None
    return TokenCipher(stack.kms_key_arn).decrypt(connection_id, found[1])


def make_due(stack: Any, connection_id: str, at: int | None = None) -> None:
    """Move the connection's refresh_at to now (or ``at``): the scheduler will pick it."""
    boto3.client("dynamodb").update_item(
        TableName=stack.table_name,
        Key={"pk": {"S": "conn#" + connection_id}},
        UpdateExpression="SET refresh_at = :at",
        ExpressionAttributeValues={":at": {"N": str(int(time.time()) if at is None else at)}},
    )


def expire(stack: Any, connection_id: str) -> None:
    """Pretend the stored access token expires in a minute (readers must refresh)."""
    boto3.client("dynamodb").update_item(
        TableName=stack.table_name,
        Key={"pk": {"S": "conn#" + connection_id}},
        UpdateExpression="SET expires_at = :at",
        ExpressionAttributeValues={":at": {"N": str(int(time.time()) + 60)}},
    )


class CountingClient:
    """Wraps the Invoiced client: counts refreshes, can run code around them."""

    def __init__(self, client: InvoicedClient, before: Callable[[], None] | None = None,
                 after: Callable[[], None] | None = None) -> None:
        self._client = client
        self.before, self.after = before, after
        self.refreshes = 0

    def refresh(self, refresh_token: str):  # noqa: ANN201 - same as InvoicedClient.refresh
        self.refreshes += 1
        if self.before:
            self.before()
        tokens = self._client.refresh(refresh_token)
        if self.after:
            self.after()
        return tokens

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def refresher(stack: Any, *, client: Any = None, clock: Callable[[], float] = time.time,
              store_: TokenStore | None = None, policy: RefreshPolicy | None = None,
              sleep: Callable[[float], None] = time.sleep, events: EventPublisher | None = None) -> Refresher:
    chosen = client or invoiced_client(stack)
    return Refresher(
        store=store_ or store(stack),
        cipher=TokenCipher(stack.kms_key_arn),
        invoiced=lambda: chosen,
        events=events or RecordingEvents(stack.env.get("EVENT_BUS_NAME")),
        policy=policy or RefreshPolicy(),
        clock=clock,
        sleep=sleep,
    )


class RecordingEvents(EventPublisher):
    """Publishes for real and remembers (detail_type, connection_id, reason)."""

    def __init__(self, bus_name: str | None) -> None:
        super().__init__(bus_name)
        self.seen: list[tuple[str, str, str | None]] = []

    def publish(self, detail_type: str, connection: Connection, *, reason: str | None = None) -> bool:
        self.seen.append((detail_type, connection.connection_id, reason))
        return super().publish(detail_type, connection, reason=reason)

    def types_for(self, connection_id: str) -> list[str]:
        return [kind for kind, cid, _ in self.seen if cid == connection_id]
