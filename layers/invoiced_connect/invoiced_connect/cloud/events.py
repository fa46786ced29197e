"""Lifecycle events on EventBridge: what happened to a connection, never its tokens.

Every event has ``source`` :data:`SOURCE` and one of the ``detail-type``
values below; ``detail`` holds only identifiers and status::

    {"connection_id": "acme-7", "tenant_id": "167", "company_name": "Acme",
     "status": "active", "version": 3, "reason": null, "occurred_at": "2026-11-27T18:00:00Z"}

A reconnect that changed company adds ``previous_tenant_id`` and
``previous_company_name``; a refused reconnect adds ``chosen_tenant_id``
and ``chosen_company_name`` (the company picked instead).

Publishing is best effort: a failure is logged (without the detail) and
never undoes or blocks the change it reports.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from invoiced_connect.cloud import aws
from invoiced_connect.core.models import Connection

logger = logging.getLogger(__name__)

SOURCE = "invoiced-connect"
CONNECTION_CREATED = "Connection Created"
CONNECTION_RECONNECTED = "Connection Reconnected"
CONNECTION_NEEDS_REAUTH = "Connection Needs Reauthorization"
CONNECTION_REFRESH_FAILING = "Connection Refresh Failing"
CONNECTION_DISCONNECTED = "Connection Disconnected"
#: Invoiced keeps rejecting a connection's stored token after it was replaced
#: for that reason: usually a consumer sending it to the wrong API.
CONNECTION_TOKEN_REJECTED = "Connection Token Rejected"  # noqa: S105 - an event name
#: A connection that needed reauthorization, kept failing to refresh, or had a
#: refresh answer lost is healthy again (``reason``: what it recovered from).
CONNECTION_RECOVERED = "Connection Recovered"
#: A reconnect authorized another Invoiced company than the connection's and was
#: refused; the connection is as it was (``reason`` ``company_mismatch``).
CONNECTION_RECONNECT_REFUSED = "Connection Reconnect Refused"
DETAIL_TYPES = (
    CONNECTION_CREATED,
    CONNECTION_RECONNECTED,
    CONNECTION_NEEDS_REAUTH,
    CONNECTION_REFRESH_FAILING,
    CONNECTION_DISCONNECTED,
    CONNECTION_TOKEN_REJECTED,
    CONNECTION_RECOVERED,
    CONNECTION_RECONNECT_REFUSED,
)
#: Keys an event may add to its detail (see the module doc).
EXTRA_DETAIL_KEYS = frozenset({"previous_tenant_id", "previous_company_name", "chosen_tenant_id",
                               "chosen_company_name"})


def event_detail(connection: Connection, *, reason: str | None = None, now: float | None = None,
                 extra: Mapping[str, str | None] | None = None) -> dict[str, Any]:
    """The detail of an event about ``connection`` (identifiers and status only),
    with ``extra`` keys from :data:`EXTRA_DETAIL_KEYS`."""
    unknown = sorted(set(extra or ()) - EXTRA_DETAIL_KEYS)
    if unknown:
        raise ValueError(f"unknown detail keys {unknown}")
    occurred = time.gmtime(time.time() if now is None else now)
    return {
        "connection_id": connection.connection_id,
        "tenant_id": connection.tenant_id,
        "company_name": connection.company_name,
        "status": connection.status.value,
        "version": connection.version,
        "reason": reason,
        "occurred_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", occurred),
        **(extra or {}),
    }


class EventPublisher:
    """Puts lifecycle events on one bus; with no bus configured it only logs."""

    def __init__(self, bus_name: str | None, client_factory: Callable[[], Any] | None = None) -> None:
        self.bus_name = bus_name
        self._client_factory = client_factory or aws.lazy_client("events")

    def publish(self, detail_type: str, connection: Connection, *, reason: str | None = None,
                extra: Mapping[str, str | None] | None = None) -> bool:
        if detail_type not in DETAIL_TYPES:
            raise ValueError(f"unknown detail type {detail_type!r}")
        detail = event_detail(connection, reason=reason, extra=extra)
        log = {"detail_type": detail_type, "connection_id": connection.connection_id, "reason": reason}
        if not self.bus_name:
            logger.info("lifecycle event (no bus configured)", extra=log)
            return False
        from botocore.exceptions import BotoCoreError, ClientError

        entry = {
            "Source": SOURCE,
            "DetailType": detail_type,
            "Detail": json.dumps(detail),
            "EventBusName": self.bus_name,
        }
        try:
            response = self._client_factory().put_events(Entries=[entry])
        except (BotoCoreError, ClientError) as exc:
            logger.error("lifecycle event not published", extra={**log, "error_type": type(exc).__name__})
            return False
        if response.get("FailedEntryCount"):
            code = (response.get("Entries") or [{}])[0].get("ErrorCode")
            logger.error("lifecycle event not published", extra={**log, "error_code": code})
            return False
        logger.info("lifecycle event published", extra=log)
        return True
