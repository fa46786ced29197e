"""The example consumer's logic: parse the event, list the connection's invoices
through :class:`invoiced_connect.InvoicedApi`, map errors to answers.

``functions/list_invoices`` is a thin Lambda around :func:`handle_list_invoices`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from invoiced_connect.core.models import InvalidConnectionId, validate_connection_id
from invoiced_connect.facade import InvoicedApi
from invoiced_connect.invoiced.client import ApiError, TransientError
from invoiced_connect.sdk.api import ApiAuthError, TokenSource, positive_int
from invoiced_connect.sdk.tokens import ConnectionNotFound, ConnectionRevoked, NeedsReauthorization, TokenUnavailable

#: The invoice fields the example consumer (functions/list_invoices) returns.
INVOICE_SUMMARY_FIELDS = ("id", "number", "customer", "status", "currency", "total", "balance", "due_date")
#: Invoiced's invoice statuses (for validating the example's ``status`` input).
INVOICE_STATUSES = frozenset({"draft", "not_sent", "sent", "viewed", "past_due", "pending", "paid", "voided"})
MAX_EVENT_PAGES = 1000

# The token SDK's errors and what the example consumer answers for them,
# checked in this order (so a subclass listed first wins).
_TOKEN_ERRORS: tuple[tuple[type[Exception], str, str], ...] = (
    (ConnectionNotFound, "not_found", "no connection with this id"),
    (ConnectionRevoked, "revoked", "the connection was revoked; send the customer a new connect link"),
    (NeedsReauthorization, "needs_reauth", "the customer must reconnect; send them a new connect link"),
    (TokenUnavailable, "unavailable", "no access token is available right now; try again later"),
)


class InvalidListRequest(ValueError):
    """The example consumer's event is malformed."""


def invoice_summary(invoice: Mapping[str, Any]) -> dict[str, Any]:
    """The few fields of an invoice the example consumer returns."""
    return {name: invoice.get(name) for name in INVOICE_SUMMARY_FIELDS}


def _parse_list_event(event: object) -> tuple[str, str | None, int | None]:
    if not isinstance(event, Mapping):
        raise InvalidListRequest("the event must be a JSON object")
    try:
        connection_id = validate_connection_id(event.get("connection_id"))  # type: ignore[arg-type]
    except InvalidConnectionId as exc:
        raise InvalidListRequest(str(exc)) from None
    status = event.get("status")
    if status is not None and status not in INVOICE_STATUSES:
        raise InvalidListRequest(f"status must be one of {', '.join(sorted(INVOICE_STATUSES))}")
    max_pages = event.get("max_pages")
    if max_pages is not None:
        try:
            max_pages = positive_int("max_pages", max_pages, maximum=MAX_EVENT_PAGES)
        except ValueError as exc:
            raise InvalidListRequest(str(exc)) from None
    return connection_id, status, max_pages


def _error_kind(exc: Exception) -> tuple[str, str] | None:
    for error_class, kind, message in _TOKEN_ERRORS:
        if isinstance(exc, error_class):
            return kind, message
    if isinstance(exc, ApiAuthError):
        return "unauthorized", "Invoiced rejected the connection's access token even after a refresh"
    if isinstance(exc, TransientError):
        return "unavailable", "Invoiced is unavailable or busy right now; try again later"
    if isinstance(exc, ApiError):
        return "api_error", f"Invoiced refused the request (status {exc.status})"
    return None


def handle_list_invoices(
    event: object, *, tokens: TokenSource | None = None, api_url: str | None = None
) -> dict[str, Any]:
    """The example consumer: ``{"connection_id", "status"?, "max_pages"?}`` -> the connection's invoices.

    Returns ``{"connection_id", "count", "invoices": [summary, ...]}``, or
    ``{"error": kind, "message": ...}`` with kind ``bad_request``,
    ``not_found``, ``needs_reauth``, ``revoked``, ``unavailable``,
    ``unauthorized`` or ``api_error``. Anything else raises.
    """
    try:
        connection_id, status, max_pages = _parse_list_event(event)
    except InvalidListRequest as exc:
        return {"error": "bad_request", "message": str(exc)}
    try:
        with InvoicedApi(connection_id, tokens=tokens, api_url=api_url) as api:
            invoices = [
                invoice_summary(invoice)
                for invoice in api.list_invoices(status=status, max_pages=max_pages)
                # The filter is Invoiced's job; checking again keeps the answer right regardless.
                if status is None or invoice.get("status") == status
            ]
    except Exception as exc:
        kind = _error_kind(exc)
        if kind is None:
            raise
        return {"error": kind[0], "message": kind[1]}
    return {"connection_id": connection_id, "count": len(invoices), "invoices": invoices}
