"""The outcome cookie: how a callback ended, carried to the page it redirects to.

``/callback`` finishes the flow and redirects (303) to the bare ``/callback``,
which shows the outcome from this cookie: the address bar and the history
never keep the one-time code and state. Only this origin can set a
``__Host-`` cookie, and the page escapes what it shows, so the cookie needs
no signature; it holds nothing secret.

Its value is base64url of compact, ASCII-only JSON. Each text has a budget in
bytes of its JSON string, escapes counted (a non-ASCII character is 6 or 12
bytes, ``"`` 2), and is clipped to fit with an ellipsis; so whatever the
provider or the company name says, every outcome the flow writes fits
:data:`MAX_VALUE_LENGTH` and the page always shows a message. Anything the
decoder does not recognise exactly (a forged or damaged cookie) is no outcome.
"""

from __future__ import annotations

import json

from invoiced_connect.connect.pages import OutcomePage
from invoiced_connect.core import b64url, strict_json

RESULT_COOKIE_NAME = "__Host-invoiced-connect-result"
_ATTRIBUTES = "Path=/; Secure; HttpOnly; SameSite=Lax"
CLEAR_RESULT_COOKIE = f"{RESULT_COOKIE_NAME}=; Max-Age=0; {_ATTRIBUTES}"
MAX_AGE_SECONDS = 60
#: The longest value (base64url characters) the decoder reads.
MAX_VALUE_LENGTH = 3000
#: The statuses an outcome page may have; a cookie with any other is no outcome.
#: A new outcome of the flow adds its status here (any three-digit status fits the budgets).
_SHOWN_STATUSES = frozenset({200, 400, 403, 409, 502, 503})
#: Each text's budget, in bytes of its JSON string without the quotes. With the
#: rest of the object (at most 48 bytes) the JSON stays within 2,148 bytes,
#: 2,864 in base64url: under MAX_VALUE_LENGTH, and the whole Set-Cookie under 4,096.
TITLE_BUDGET, MESSAGE_BUDGET, REFERENCE_BUDGET, COMPANY_BUDGET = 150, 1350, 150, 450
ELLIPSIS = "\u2026"
_KEYS = frozenset({"s", "t", "m", "r", "c", "ok"})


def json_size(text: str) -> int:
    """The bytes ``text`` takes as an (ASCII-only) JSON string, without its quotes."""
    return len(json.dumps(text)) - 2


def _clip(text: str | None, budget: int) -> str | None:
    """``text`` if it fits ``budget``; else its longest prefix that fits with an ellipsis."""
    if text is None or json_size(text) <= budget:
        return text
    room, kept, used = budget - json_size(ELLIPSIS), 0, 0
    # The whole text does not fit, so this stops before its end.
    while used + json_size(text[kept]) <= room:
        used += json_size(text[kept])
        kept += 1
    return text[:kept] + ELLIPSIS


def outcome_cookie(outcome: OutcomePage) -> str:
    """The ``Set-Cookie`` value that carries ``outcome`` (clipped to the budgets) for a minute."""
    payload = {
        "s": outcome.status,
        "t": _clip(outcome.title, TITLE_BUDGET),
        "m": _clip(outcome.message, MESSAGE_BUDGET),
        "r": _clip(outcome.reference, REFERENCE_BUDGET),
        "c": _clip(outcome.company, COMPANY_BUDGET),
        "ok": outcome.connected,
    }
    value = b64url.encode(json.dumps(payload, separators=(",", ":")).encode("ascii"))
    return f"{RESULT_COOKIE_NAME}={value}; Max-Age={MAX_AGE_SECONDS}; {_ATTRIBUTES}"


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError("not a boolean")
    return value


def decode_outcome(value: str) -> OutcomePage | None:
    """Read an outcome cookie: exactly what :func:`outcome_cookie` writes, or ``None``."""
    if not value or len(value) > MAX_VALUE_LENGTH:
        return None
    try:
        payload = strict_json.loads(b64url.decode(value), unique_keys=True)
        if not isinstance(payload, dict) or payload.keys() != _KEYS:
            return None
        outcome = OutcomePage(
            status=strict_json.integer(payload["s"]),
            title=strict_json.string(payload["t"]),
            message=strict_json.string(payload["m"]),
            reference=strict_json.string(payload["r"]),
            company=None if payload["c"] is None else strict_json.string(payload["c"]),
            connected=_boolean(payload["ok"]),
        )
    except ValueError:
        return None
    if outcome.connected and outcome.status != 200:
        return None  # only a 200 says connected
    return outcome if outcome.status in _SHOWN_STATUSES else None
