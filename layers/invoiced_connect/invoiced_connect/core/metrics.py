"""The metrics: every name the code emits, and the rules that derive one, in one place.

Every metric is a CloudWatch EMF count in the namespace of
``POWERTOOLS_METRICS_NAMESPACE`` (the stack: ``InvoicedConnect``) with the
``service`` dimension of ``POWERTOOLS_SERVICE_NAME``:

==========================  ==========================================================
``ConnectStarted``          ``/connect`` sent the browser to Invoiced
``ConnectFailed``           a connect attempt ended without a connection; its own
                            extra dimension ``reason`` (:data:`CONNECT_FAILURE_REASONS`)
``Connected``               ``/callback`` stored a new connection
``Reconnected``             ``/callback`` re-authorized an existing connection
``Refresh<Outcome>``        one per refresh outcome (``RefreshRefreshed``,
                            ``RefreshNeedsReauth``: a connection now needing
                            re-authorization, ...), and the worker's own
                            ``RefreshMalformed``, ``RefreshError``,
                            ``RefreshSkippedClientAuth`` and ``RefreshDeferred``
``ConnectionsDue``          the scheduler found these due (``ConnectionsQueued``: queued)
``RefreshFailed``           outcomes that left the connection without a new token
                            (:data:`REFRESH_FAILED_OUTCOMES`)
``RefreshPermanentFailure`` failures no retry fixes (:data:`REFRESH_PERMANENT_OUTCOMES`)
``TokenReads``              access tokens asked of the SDK's reader
``TokenCacheMisses``        of those, the ones not answered from its memory cache
==========================  ==========================================================

The app API's functions also count ``<Kind>Requests`` and ``<Kind>Errors``
(``LinkRequests``, ``TokenErrors``, ...), :data:`TOKENS_REJECTED` and
:data:`APP_API_INTERNAL_ERRORS`; the connections function
``Disconnect<Outcome>`` and :data:`BAD_REQUESTS`. Emitting them is
:mod:`invoiced_connect.entry.observability`'s job; the alarms in
template.yaml use these names (a test checks they agree).
"""

from __future__ import annotations

from collections.abc import Mapping

CONNECT_STARTED = "ConnectStarted"
CONNECT_FAILED = "ConnectFailed"
CONNECTED = "Connected"
RECONNECTED = "Reconnected"
REFRESH_FAILED = "RefreshFailed"
REFRESH_PERMANENT_FAILURE = "RefreshPermanentFailure"
REPLACED_GRANT_REVOKED = "ReplacedGrantRevoked"
REPLACED_GRANT_REVOKE_FAILED = "ReplacedGrantRevokeFailed"
TOKEN_READS = "TokenReads"  # noqa: S105 - a metric name
TOKEN_CACHE_MISSES = "TokenCacheMisses"  # noqa: S105 - a metric name
#: The extra dimension of ``ConnectFailed`` (and of no other metric).
REASON_DIMENSION = "reason"

#: The values of ``ConnectFailed``'s ``reason`` dimension. The logs carry the
#: finer reason (``bad_link``, ``no_cookie``, ``issuer``, ...).
CONNECT_FAILURE_REASONS = frozenset({
    "link_invalid",        # /connect: no link, or malformed, tampered, foreign-key or expired
    "return_url_refused",  # /connect: the link's return URL is no longer allowlisted
    "link_used",           # the link already completed a connection
    "bad_request",         # a parameter repeated or too long; no state or no code on /callback
    "not_configured",      # a setting or secret is missing or invalid
    "state_rejected",      # /callback: replayed, expired, foreign or cookie-less state
    "denied",              # the customer declined on Invoiced
    "authorize_error",     # Invoiced redirected back with another error
    "code_rejected",       # Invoiced refused the code (expired or already used)
    "client_auth_failed",  # Invoiced refused the client id or secret
    "exchange_failed",     # the code exchange failed otherwise (unreachable, bad answer)
    "store_failed",        # the tokens could not be encrypted or stored
    "company_mismatch",    # a reconnect chose another Invoiced company than the connection's
    "unexpected",          # anything else (a plain 500 page)
})

#: Refresh outcomes after which the connection has no new token (``RefreshFailed``).
#: Not counted: ``rescue_discarded`` (kept-aside tokens revoked because a
#: reconnect or disconnect had moved the connection on: nothing is lost) and the
#: worker's own ``error`` (an unexpected exception; the message is redelivered,
#: so counting it would count one failure up to five times; see ``RefreshError``
#: and the dead-letter alarm).
REFRESH_FAILED_OUTCOMES = frozenset({"transient", "unknown_outcome", "needs_reauth", "client_auth_failed",
                                     "kept_aside"})
#: Of those, the ones that no retry fixes (``RefreshPermanentFailure``): the
#: customer must reconnect, or the operator must fix the client credentials.
REFRESH_PERMANENT_OUTCOMES = frozenset({"needs_reauth", "client_auth_failed"})


def outcome_metric_name(outcome: str, prefix: str = "Refresh") -> str:
    """``prefix`` + the outcome in CamelCase: ``unknown_outcome`` -> ``RefreshUnknownOutcome``."""
    return prefix + "".join(part.capitalize() for part in outcome.split("_"))


def refresh_aggregates(outcomes: Mapping[str, int]) -> dict[str, int]:
    """``RefreshFailed`` and ``RefreshPermanentFailure`` for these outcome counts (zeros included)."""
    return {
        REFRESH_FAILED: sum(count for outcome, count in outcomes.items() if outcome in REFRESH_FAILED_OUTCOMES),
        REFRESH_PERMANENT_FAILURE: sum(
            count for outcome, count in outcomes.items() if outcome in REFRESH_PERMANENT_OUTCOMES),
    }


#: Invoiced rejected a stored token again after it was replaced for that reason.
TOKENS_REJECTED = "TokensRejected"
#: An app API request failed unexpectedly (the caller got ``internal_error``).
APP_API_INTERNAL_ERRORS = "AppApiInternalErrors"
#: The scheduler: connections found due, and those queued for the worker.
CONNECTIONS_DUE = "ConnectionsDue"
CONNECTIONS_QUEUED = "ConnectionsQueued"
#: The worker: messages not started for lack of time (redelivered).
REFRESH_DEFERRED = "RefreshDeferred"
#: The connections function: requests refused as malformed.
BAD_REQUESTS = "BadRequests"
