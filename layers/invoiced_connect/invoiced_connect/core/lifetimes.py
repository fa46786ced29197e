"""How long before expiry things happen, for a token of a given lifetime.

Invoiced grants one-hour access tokens, and every margin of the lifecycle
was chosen for them: readers never take a token with less than 5 minutes
left, may ask for at most 30, the scheduler rotates within 15 minutes of
expiry and the reader's cache ends 10 minutes before that. A token that
lives less than an hour gets the same margins scaled by its lifetime
(a 90-second token: 8 s, 45 s, 23 s, 15 s), so a reader can always be
served by a fresh token, and N readers still cause at most one rotation per
lifetime. Longer tokens keep the one-hour values.

The lifetime of a stored token is what Invoiced granted (``expires_in``,
recorded on the row as ``token_lifetime``; one hour on rows from before it
was). A token from the tokens function counts as living at least what it
has left.
"""

from __future__ import annotations

import math

#: The lifetime every margin below was chosen for (Invoiced's access tokens).
REFERENCE_LIFETIME_SECONDS = 3600
#: How long before a connection's refresh time the scheduler queues it (REFRESH_WINDOW_MINUTES).
DEFAULT_REFRESH_WINDOW_SECONDS = 15 * 60
#: Never hand out a token with less than this left, by default.
MIN_VALIDITY_SECONDS = 300
#: The most a caller may ask to be left on a token (half a lifetime).
MAX_MIN_VALIDITY_SECONDS = 1800
#: The reader's cache ends this long before the scheduler may rotate the token
#: (its window before ``refresh_at``, plus the schedule's interval and queueing).
ROTATION_MARGIN_SECONDS = 600


def scaled(seconds: int, lifetime: int) -> int:
    """``seconds`` (a margin for one-hour tokens) for a token of ``lifetime`` seconds."""
    if lifetime >= REFERENCE_LIFETIME_SECONDS:
        return seconds
    return math.ceil(seconds * max(1, lifetime) / REFERENCE_LIFETIME_SECONDS)


def lifetime_of(expires_at: int, issued_at: int) -> int:
    """The lifetime of a token that expires at ``expires_at``, counted from
    ``issued_at`` (one hour if that says nothing)."""
    if issued_at <= 0 or expires_at <= issued_at:
        return REFERENCE_LIFETIME_SECONDS
    return expires_at - issued_at


def min_validity(lifetime: int) -> int:
    """The default least time left on a token handed out."""
    return scaled(MIN_VALIDITY_SECONDS, lifetime)


def max_min_validity(lifetime: int) -> int:
    """The most time left a caller can be promised (a larger request is capped to it)."""
    return scaled(MAX_MIN_VALIDITY_SECONDS, lifetime)


def rotation_margin(lifetime: int) -> int:
    return scaled(ROTATION_MARGIN_SECONDS, lifetime)
