"""Helpers for the token lifecycle tests: connections made for real (the
local Invoiced's consent and code exchange), and refreshers and token
readers wired to the running local stack with injectable parts."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from invoiced_connect.app_api.service import TokenVendor, answer
from invoiced_connect.cloud.events import EventPublisher
from invoiced_connect.core.models import Connection
from invoiced_connect.invoiced.client import InvoicedClient
from invoiced_connect.lifecycle.refresh import Refresher, RefreshPolicy
from invoiced_connect.sdk.tokens import TokenReader
from invoiced_connect.storage.crypto import TokenCipher
from invoiced_connect.storage.store import TokenStore
from local.seed import connect, expire, invoiced_client, make_due, row, store, stored_tokens

__all__ = ["connect", "expire", "invoiced_client", "make_due", "row", "store", "stored_tokens"]


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


def direct_invoker(stack, calls: list | None = None):
    """The tokens function's logic, called in-process (the Lambda path is tested elsewhere)."""

    def invoke(payload: dict) -> dict:
        if calls is not None:
            calls.append(payload)
        vendor = TokenVendor(store=store(stack), cipher=TokenCipher(stack.kms_key_arn),
                             refresher=lambda: refresher(stack))
        return answer(lambda: vendor.get_token(payload, remaining_seconds=60))

    return invoke


def reader(stack, *, calls=None, clock=time.time, coalesce=True, kms=None) -> TokenReader:
    return TokenReader(store=store(stack), cipher=kms or TokenCipher(stack.kms_key_arn),
                       invoke=direct_invoker(stack, calls), clock=clock, coalesce=coalesce)


class RecordingEvents(EventPublisher):
    """Publishes for real and remembers (detail_type, connection_id, reason)."""

    def __init__(self, bus_name: str | None) -> None:
        super().__init__(bus_name)
        self.seen: list[tuple[str, str, str | None]] = []

    def publish(self, detail_type: str, connection: Connection, *, reason: str | None = None,
                extra: dict[str, str | None] | None = None) -> bool:
        self.seen.append((detail_type, connection.connection_id, reason))
        return super().publish(detail_type, connection, reason=reason, extra=extra)

    def types_for(self, connection_id: str) -> list[str]:
        return [kind for kind, cid, _ in self.seen if cid == connection_id]
