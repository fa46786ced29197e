"""Connections made in a running local stack without a browser.

The consent is given through the local Invoiced's own form and the code is
exchanged and stored exactly as the callback does, so what lands in the
table is a real, live connection. Used by the lifecycle tests and by
``make bench``; never deployed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

import boto3

from invoiced_connect.connect.pkce import new_verifier, random_token, s256_challenge
from invoiced_connect.core.models import Connection
from invoiced_connect.invoiced.client import InvoicedClient
from invoiced_connect.lifecycle.refresh import RefreshPolicy
from invoiced_connect.storage.crypto import TokenCipher
from invoiced_connect.storage.store import TokenStore


def invoiced_client(stack: Any, *, invoiced: Any = None, clock: Callable[[], float] = time.time) -> InvoicedClient:
    """A client of the stack's local Invoiced (or of ``invoiced``, another one)."""
    server = invoiced or stack.invoiced
    return InvoicedClient(
        base_url=server.base_url,
        api_url=server.api_url,
        client_id=stack.client_id,
        client_secret=lambda force: stack.client_secret,
        timeout=float(stack.env.get("HTTP_TIMEOUT_SECONDS", 2)),
        clock=clock,
    )


def connect(stack: Any, connection_id: str, *, active_use: bool = True, invoiced: Any = None,
            clock: Callable[[], float] = time.time) -> Connection:
    """Authorize, exchange the code and store the tokens, as the callback does
    (at the stack's local Invoiced, or at ``invoiced``, on ``clock``)."""
    server = invoiced or stack.invoiced
    client = invoiced_client(stack, invoiced=server, clock=clock)
    verifier = new_verifier()
    url = client.authorize_url(redirect_uri=stack.callback_url, scope="read_write", state=random_token(),
                               code_challenge=s256_challenge(verifier))
    location = server.consent(url)
    code = location.split("code=", 1)[1].split("&", 1)[0]
    tokens = client.exchange_code(code=unquote(code), redirect_uri=stack.callback_url, code_verifier=verifier)
    now = int(clock())
    policy = RefreshPolicy()
    active_until = now + policy.active_use_seconds if active_use else 0
    return store(stack).save_connection(
        connection_id=connection_id,
        tokens=tokens,
        ciphertext=TokenCipher(stack.kms_key_arn).encrypt(connection_id, tokens.access_token, tokens.refresh_token),
        company_name=None,
        issuer=server.base_url,
        api_url=server.api_url,
        now=now,
        refresh_at=policy.next_refresh_at(expires_at=tokens.expires_at, now=now, active_until=active_until,
                                          lifetime=tokens.lifetime),
        active_until=active_until,
    )


def store(stack: Any) -> TokenStore:
    return TokenStore(stack.table_name)


def row(stack: Any, connection_id: str) -> Connection:
    """The stored connection (``LookupError`` if there is none)."""
    found = store(stack).get_connection(connection_id)
    if found is None:
        raise LookupError(f"no connection {connection_id!r}")
    return found[0]


def stored_tokens(stack: Any, connection_id: str) -> tuple[str, str]:
    """``(access_token, refresh_token)`` as stored (``LookupError`` if there are none)."""
    found = store(stack).get_connection(connection_id)
    if found is None or found[1] is None:
        raise LookupError(f"no tokens stored for {connection_id!r}")
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
