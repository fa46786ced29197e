"""The connections function: a locked refresh or a disconnect, on request.

Invoked synchronously (by operators: the CLI, ``invoiced_connect.disconnect``), never routed. It
answers with an outcome, a status and a version, never a token, so whoever
may invoke it still needs the table and key to read one.

    {"action": "refresh", "connection_id": "acme-7", "stale_version": 3, "wait_seconds": 20}
    {"action": "refresh", "connection_id": "acme-7", "force": true}
    {"action": "disconnect", "connection_id": "acme-7"}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from invoiced_connect import runtime
from invoiced_connect.core.metrics import BAD_REQUESTS, refresh_aggregates
from invoiced_connect.core.models import InvalidConnectionId, validate_connection_id
from invoiced_connect.lifecycle.disconnect import Disconnector, DisconnectOutcome
from invoiced_connect.lifecycle.refresh import Mode, Refresher, RefreshOutcome

ACTIONS = ("refresh", "disconnect")
_DISCONNECT_OUTCOMES = frozenset(outcome.value for outcome in DisconnectOutcome)
#: Leave this much of the invocation for the refresh itself and the answer.
ACTION_RESERVE_SECONDS = 30.0


class InvalidConnectionsRequest(ValueError):
    pass


def _parse(event: Any) -> tuple[str, str, int | None, bool, float | None]:
    if not isinstance(event, Mapping):
        raise InvalidConnectionsRequest("the request must be a JSON object")
    action = event.get("action")
    if action not in ACTIONS:
        raise InvalidConnectionsRequest(f"action must be one of {', '.join(ACTIONS)}")
    try:
        connection_id = validate_connection_id(event.get("connection_id"))
    except InvalidConnectionId as exc:
        raise InvalidConnectionsRequest(str(exc)) from None
    stale = event.get("stale_version")
    if stale is not None and (isinstance(stale, bool) or not isinstance(stale, int) or stale < 0):
        raise InvalidConnectionsRequest("stale_version must be a non-negative integer")
    force = event.get("force", False)
    if not isinstance(force, bool):
        raise InvalidConnectionsRequest("force must be true or false")
    wait = event.get("wait_seconds")
    if wait is not None and (isinstance(wait, bool) or not isinstance(wait, int | float) or not 0 <= wait <= 300):
        raise InvalidConnectionsRequest("wait_seconds must be a number from 0 to 300")
    return action, connection_id, stale, force, wait


def handle(event: Any, remaining_seconds: float, refresher: Refresher | None = None) -> dict[str, Any]:
    """Carry out one request; bad input gets ``{"error": "bad_request", ...}``."""
    try:
        action, connection_id, stale, force, asked_wait = _parse(event)
    except InvalidConnectionsRequest as exc:
        return {"error": "bad_request", "message": str(exc)}
    disconnector = Disconnector(refresher) if refresher else runtime.current().disconnector
    refresher = refresher or runtime.current().refresher
    # Wait for another refresher's lease as long as asked, within this invocation.
    wait = max(0.0, remaining_seconds - ACTION_RESERVE_SECONDS)
    if asked_wait is not None:
        wait = min(wait, float(asked_wait))
    if action == "disconnect":
        return disconnector.disconnect(connection_id, wait_seconds=wait).as_dict()
    mode = Mode.FORCED if force else Mode.ON_DEMAND
    return refresher.refresh(connection_id, mode=mode, stale_version=stale, wait_seconds=wait).as_dict()


def requested_action(event: Any) -> str | None:
    """The request's action if it is a known one (safe to log), else ``None``."""
    action = event.get("action") if isinstance(event, Mapping) else None
    return action if action in ACTIONS else None


def metric_name(answer: Mapping[str, Any], action: str | None = None) -> str | None:
    """The metric counting this answer's outcome: ``RefreshRefreshed``, ``DisconnectDisconnected``, ...

    ``action``: the request's; without it, an outcome both kinds of request
    have (``busy``, ``not_found``) is taken for a disconnect's.
    """
    if "error" in answer:
        return BAD_REQUESTS
    outcome = answer.get("outcome")
    if outcome in _DISCONNECT_OUTCOMES and action != "refresh":
        return DisconnectOutcome(outcome).metric_name
    try:
        return RefreshOutcome(outcome).metric_name
    except ValueError:
        return None


def metric_counts(answer: Mapping[str, Any], action: str | None) -> dict[str, int]:
    """The metrics for this answer to an ``action`` request: its :func:`metric_name`,
    and for a refresh also ``RefreshFailed`` and ``RefreshPermanentFailure`` (0 or 1)."""
    name = metric_name(answer, action)
    if name is None:
        return {}
    counts = {name: 1}
    if action == "refresh" and "error" not in answer:
        counts.update(refresh_aggregates({str(answer.get("outcome")): 1}))
    return counts
