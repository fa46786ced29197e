"""Which invoices `GET /invoices` lists, and in what order, from its query.

Follows what Invoiced's list endpoint does with each parameter:

- ``filter[FIELD]=VALUE`` is an exact match. A field that cannot be filtered
  on is a 400 ``Invalid filter parameter: FIELD``; a nested value
  (``filter[status][x]=...``) is a 400 ``Invalid value for `FIELD` filter
  parameter``; a date field (``date``, ``due_date``) whose value is not a date
  is a 400 ``Invalid value for `FIELD` filter parameter: VALUE``. Any other
  value that matches nothing (``filter[status]=bogus``) lists nothing: status
  is a plain string column, not an enum, on Invoiced.
- ``metadata[KEY]=VALUE``: exact match on the invoice's metadata.
- ``start_date`` / ``end_date``: unix timestamps bounding the invoice ``date``
  (inclusive); a value that is not a positive number is ignored.
- ``updated_after`` / ``updated_before``: unix timestamps, exclusive bounds on
  ``updated_at``; read like PHP's ``(int)`` cast, so a non-number is 0 and
  ignored.
- ``sort=FIELD DIR[,FIELD DIR...]``: a term that is not exactly a known field
  and ``asc``/``desc`` is dropped, never refused; ties are broken by ``id``
  ascending, which is also the order when nothing usable is given.

Parameters the endpoint does not know (``created_after``, say) are ignored, as
they are on Invoiced.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from werkzeug.datastructures import MultiDict


class ListQueryError(ValueError):
    """A query Invoiced answers with 400 ``invalid_request``."""


_STRING_FIELDS = ("number", "name", "currency", "status", "payment_terms")
_INTEGER_FIELDS = ("id", "customer")
_AMOUNT_FIELDS = ("total", "subtotal", "balance")
_BOOLEAN_FIELDS = ("paid", "closed", "draft")
_DATE_FIELDS = ("date", "due_date")
FILTERABLE_FIELDS = frozenset(_STRING_FIELDS + _INTEGER_FIELDS + _AMOUNT_FIELDS + _BOOLEAN_FIELDS + _DATE_FIELDS)
SORTABLE_FIELDS = FILTERABLE_FIELDS | {"created_at", "updated_at"}

_BRACKETED = re.compile(r"^(filter|metadata)\[([^\[\]]*)\](.*)$")
_PHP_INT = re.compile(r"^\s*([+-]?\d+)")
_NUMERIC = re.compile(r"^\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _php_int(raw: str | None) -> int:
    match = _PHP_INT.match(raw or "")
    return int(match.group(1)) if match else 0


def _positive_number(raw: str | None) -> float | None:
    if raw is None or not _NUMERIC.match(raw):
        return None
    value = float(raw)
    return value if value > 0 else None


def _timestamp(field: str, raw: str) -> int:
    """An ISO-8601 date or date-time (or ``@UNIX``) as a unix timestamp, UTC unless it says otherwise."""
    text = raw.strip()
    try:
        if text.startswith("@"):
            return int(text[1:])
        if _ISO_DATE.match(text):
            return int(datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC).timestamp())
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ListQueryError(f"Invalid value for `{field}` filter parameter: {raw}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp())


def _matcher(field: str, raw: str) -> Callable[[Any], bool]:
    if field in _DATE_FIELDS:
        if not raw:
            return lambda value: False
        wanted = _timestamp(field, raw)
        return lambda value: value == wanted
    if field in _BOOLEAN_FIELDS:
        flag = {"1": True, "true": True, "0": False, "false": False}.get(raw.lower())
        return lambda value: flag is not None and value is flag
    if field in _AMOUNT_FIELDS:
        amount = float(raw) if _NUMERIC.match(raw) else None
        return lambda value: amount is not None and value == amount
    if field in _INTEGER_FIELDS:
        return lambda value: raw.strip().isdigit() and value == int(raw)
    return lambda value: value == raw


def _filters(args: MultiDict[str, str]) -> list[Callable[[Mapping[str, Any]], bool]]:
    tests: list[Callable[[Mapping[str, Any]], bool]] = []
    seen: dict[tuple[str, str], str] = {}
    for key, value in args.items(multi=True):
        match = _BRACKETED.match(key)
        if match is None:
            continue
        kind, name, rest = match.groups()
        if kind == "filter" and name not in FILTERABLE_FIELDS:
            raise ListQueryError(f"Invalid filter parameter: {name}")
        if rest:  # filter[status][x]=... arrives as an array, which is not a value
            if kind == "filter":
                raise ListQueryError(f"Invalid value for `{name}` filter parameter")
            continue
        seen[(kind, name)] = value  # a repeated key: the last one counts
    for (kind, name), value in seen.items():
        if kind == "filter":
            matches = _matcher(name, value)
            tests.append(lambda invoice, name=name, matches=matches: matches(invoice.get(name)))
        else:
            tests.append(lambda invoice, name=name, value=value:
                         name in (invoice.get("metadata") or {}) and str(invoice["metadata"][name]) == value)
    return tests


def _bounds(args: MultiDict[str, str]) -> list[Callable[[Mapping[str, Any]], bool]]:
    tests: list[Callable[[Mapping[str, Any]], bool]] = []
    start, end = _positive_number(args.get("start_date")), _positive_number(args.get("end_date"))
    if start is not None:
        tests.append(lambda invoice: invoice["date"] >= int(start))
    if end is not None:
        tests.append(lambda invoice: invoice["date"] <= int(end))
    after, before = _php_int(args.get("updated_after")), _php_int(args.get("updated_before"))
    if after > 0:
        tests.append(lambda invoice: invoice["updated_at"] > after)
    if before > 0:
        tests.append(lambda invoice: invoice["updated_at"] < before)
    return tests


def sort_terms(raw: str | None) -> list[tuple[str, bool]]:
    """``(field, descending)`` pairs from ``sort``, unusable terms dropped, ``id asc`` last."""
    terms: list[tuple[str, bool]] = []
    for term in (raw or "").split(","):
        parts = term.strip().split(" ")
        if len(parts) != 2 or parts[1].lower() not in ("asc", "desc") or parts[0] not in SORTABLE_FIELDS:
            continue
        terms.append((parts[0], parts[1].lower() == "desc"))
    if ("id", False) not in terms:
        terms.append(("id", False))
    return terms


def _sort_key(value: Any) -> tuple[bool, Any]:
    return (value is not None, value if value is not None else 0)


def _sorted(invoices: Sequence[Mapping[str, Any]], terms: list[tuple[str, bool]]) -> list[Mapping[str, Any]]:
    ordered = list(invoices)
    # Stable sorts from the last key to the first; a null sorts first ascending, as in MySQL.
    for field, descending in reversed(terms):
        ordered.sort(key=lambda invoice, field=field: _sort_key(invoice.get(field)), reverse=descending)
    return ordered


def select_invoices(invoices: Sequence[Mapping[str, Any]], args: MultiDict[str, str]) -> list[Mapping[str, Any]]:
    """The invoices ``args`` asks for, in its order; raises ListQueryError for a 400."""
    tests = _filters(args) + _bounds(args)
    kept = [invoice for invoice in invoices if all(test(invoice) for test in tests)]
    return _sorted(kept, sort_terms(args.get("sort")))
